//! Files the console's pages load, compiled into the binary: asciinema-player from npm
//! (`web/package-lock.json`, fetched by `script/bootstrap` or by `build.rs`) and the
//! console's own script and style sheet from `web/`.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const PLAYER_JS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/web/node_modules/asciinema-player/dist/bundle/asciinema-player.min.js"
));
const PLAYER_CSS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/web/node_modules/asciinema-player/dist/bundle/asciinema-player.css"
));
const CONSOLE_JS: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/console.js"));
const CONSOLE_CSS: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/console.css"));

pub async fn get(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "asciinema-player.min.js" => (PLAYER_JS, "text/javascript; charset=utf-8"),
        "asciinema-player.css" => (PLAYER_CSS, "text/css; charset=utf-8"),
        "console.js" => (CONSOLE_JS, "text/javascript; charset=utf-8"),
        "console.css" => (CONSOLE_CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    r
}
