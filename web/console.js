// postern console: what the server-rendered pages need from the browser, and no more.
// Loaded as a file (the Content-Security-Policy allows no inline script).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Terminal recordings: asciinema-player, fed the recording's asciicast from postern.
  for (const el of document.querySelectorAll(".player[data-cast], .player[data-live]")) {
    if (typeof AsciinemaPlayer === "undefined") {
      el.textContent = "The terminal player did not load.";
      continue;
    }
    if (el.dataset.live) {
      // A live channel: its terminal so far, then each event as it is recorded.
      AsciinemaPlayer.create({ driver: "eventsource", url: el.dataset.live, bufferTime: 0 }, el, {
        autoPlay: true,
        fit: "width",
        controls: false,
      });
      continue;
    }
    // A search result opens the recording at its time, on the recording's own clock
    // (idle time is only shortened when no start is given: it would shift that clock).
    const start = el.dataset.start ? { startAt: Number(el.dataset.start) } : { idleTimeLimit: 2 };
    AsciinemaPlayer.create(el.dataset.cast, el, {
      preload: true,
      fit: "width",
      controls: true,
      ...start,
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
    const apply = () => {
      const needle = input.value.toLowerCase();
      for (const row of table.querySelectorAll("tbody tr")) {
        row.hidden = needle !== "" && !row.textContent.toLowerCase().includes(needle);
      }
    };
    input.addEventListener("input", apply);
    apply();
  }
});

// Following the audit log: newer events are fetched every two seconds and put on top.
document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("follow");
  if (!box) return;
  const tbody = document.querySelector("table.audit tbody");
  let timer;
  const poll = async () => {
    const sep = box.dataset.url.includes("?") ? "&" : "?";
    const r = await fetch(`${box.dataset.url}${sep}after=${box.dataset.after}`, { credentials: "same-origin" });
    if (!r.ok) return;
    for (const e of await r.json()) {
      const tr = document.createElement("tr");
      for (const k of ["seq", "time", "type", "actor", "target", "result", "details"]) {
        const td = document.createElement("td");
        if (k === "details") {
          const code = document.createElement("code");
          code.textContent = e[k];
          td.appendChild(code);
        } else {
          td.textContent = String(e[k]);
        }
        tr.appendChild(td);
      }
      tbody.prepend(tr);
      box.dataset.after = String(Math.max(Number(box.dataset.after), e.seq));
    }
  };
  box.addEventListener("change", () => {
    clearInterval(timer);
    if (box.checked) timer = setInterval(() => poll().catch(() => {}), 2000);
  });
});

// The dashboard's live sessions, refreshed every second (only that part of the page).
document.addEventListener("DOMContentLoaded", () => {
  const section = document.querySelector("section.live");
  if (!section) return;
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const r = await fetch("/?part=live", { credentials: "same-origin", redirect: "error" });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.querySelector("section.live");
      if (fresh) section.replaceChildren(...fresh.childNodes);
    } catch {
      // The next round tries again.
    }
  }, 1000);
});
