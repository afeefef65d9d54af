//! The web console embeds asciinema-player from npm (`web/package-lock.json`). When its
//! files are not in `web/node_modules` yet, this fetches them with `npm ci`; without npm
//! the build stops and says what to run, rather than building a console with no player.

use std::path::Path;
use std::process::Command;

const PLAYER: &str = "web/node_modules/asciinema-player/dist/bundle/asciinema-player.min.js";

fn main() {
    println!("cargo:rerun-if-changed=web/package-lock.json");
    println!("cargo:rerun-if-changed=web/console.js");
    println!("cargo:rerun-if-changed=web/console.css");
    println!("cargo:rerun-if-changed={PLAYER}");
    if Path::new(PLAYER).exists() {
        return;
    }
    let ran = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix", "web"])
        .status();
    match ran {
        Ok(s) if s.success() && Path::new(PLAYER).exists() => {}
        Ok(s) => fail(&format!("`npm ci --prefix web` failed ({s})")),
        Err(e) => fail(&format!("cannot run npm ({e})")),
    }
}

fn fail(why: &str) -> ! {
    eprintln!(
        "error: the web console needs asciinema-player from npm and {why}.\n\
         Install Node.js and npm (script/bootstrap does, with Debian's packages), then run\n\
         `npm ci --prefix web` in the repository, or run `script/bootstrap`."
    );
    std::process::exit(1);
}
