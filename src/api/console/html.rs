//! The page frame every console page shares, and small pieces of markup.

use maud::{DOCTYPE, Markup, html};

use super::auth::Viewer;
pub use axum::Form;

/// A whole page: navigation for who is looking (none on the login page), then `body`.
pub fn page(v: Option<&Viewer>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · postern" }
                // No icon: browsers would otherwise ask for /favicon.ico on every page.
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/assets/console.css";
                link rel="stylesheet" href="/assets/asciinema-player.css";
                script src="/assets/asciinema-player.min.js" defer {}
                script src="/assets/console.js" defer {}
            }
            body {
                header {
                    nav {
                        a.brand href="/" { "postern" }
                        @if let Some(v) = v {
                            a href="/" { "Dashboard" }
                            a href="/sessions" { "Sessions" }
                            a href="/search" { "Search" }
                            a href="/requests" { "Requests" }
                            a href="/reviews" { "Reviews" }
                            @if v.audits() {
                                a href="/audit" { "Audit log" }
                            }
                            @if v.administers() {
                                a href="/users" { "Users" }
                                a href="/roles" { "Roles" }
                                a href="/targets" { "Targets" }
                                a href="/access" { "Access check" }
                            }
                            span.who {
                                (v.user.name)
                                @for r in &v.rights { " " span.badge { (r.as_str()) } }
                            }
                            form.logout method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn when(ms: i64) -> String {
    crate::audit::format_ms(ms)
}

/// A duration in seconds, short: `42s`, `5m 3s`, `2h 10m`.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

/// A query-string value, percent-encoded.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A form field, trimmed, when it says anything.
pub fn nonempty(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}
