//! asciicast v2 lines: a JSON header, then `[seconds, code, data]` events.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Header {
    pub version: u8,
    pub width: u32,
    pub height: u32,
    /// Unix seconds of the start.
    pub timestamp: i64,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub env: Env,
}

#[derive(Clone, Debug, Serialize)]
pub struct Env {
    #[serde(rename = "TERM")]
    pub term: String,
}

impl Header {
    pub fn new(
        width: u32,
        height: u32,
        term: &str,
        title: String,
        command: Option<String>,
    ) -> Self {
        Header {
            version: 2,
            width: width.max(1),
            height: height.max(1),
            timestamp: crate::audit::now_ms() / 1000,
            title,
            command,
            env: Env {
                term: term.to_string(),
            },
        }
    }

    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| "{\"version\":2}".into());
        s.push('\n');
        s
    }
}

pub fn event(t: f64, code: &str, data: &str) -> String {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "\"\"".into());
    format!("[{t:.6}, \"{code}\", {data}]\n")
}
