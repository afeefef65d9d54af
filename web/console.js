// postern console: what the server-rendered pages need from the browser, and no more.
// Loaded as a file (the Content-Security-Policy allows no inline script).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Terminal recordings: asciinema-player, fed the recording's asciicast from postern.
  for (const el of document.querySelectorAll(".player[data-cast]")) {
    if (typeof AsciinemaPlayer === "undefined") {
      el.textContent = "The terminal player did not load.";
      continue;
    }
    AsciinemaPlayer.create(el.dataset.cast, el, {
      idleTimeLimit: 2,
      preload: true,
      fit: "width",
      controls: true,
    });
  }

  // Copy buttons next to commands.
  for (const b of document.querySelectorAll("button[data-copy]")) {
    b.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(b.dataset.copy);
        b.textContent = "Copied";
      } catch {
        b.textContent = "Select and copy";
      }
    });
  }

  // Filter boxes over tables: rows whose text does not contain the filter are hidden.
  for (const input of document.querySelectorAll("input[data-filter]")) {
    const table = input.nextElementSibling;
    input.addEventListener("input", () => {
      const needle = input.value.toLowerCase();
      for (const row of table.querySelectorAll("tbody tr")) {
        row.hidden = needle !== "" && !row.textContent.toLowerCase().includes(needle);
      }
    });
  }
});
