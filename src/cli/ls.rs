//! `postern ls`: the targets you may reach now, with the logins or databases on each and
//! the line to connect with, from the server of your last login.

use std::process::ExitCode;

use super::login::{left, message, refused, session};
use crate::client::Home;
use crate::credentials::ssh_cert::now_secs;
use crate::printable::cell;

pub async fn run(json: bool) -> anyhow::Result<ExitCode> {
    let home = Home::locate().map_err(anyhow::Error::msg)?;
    let (profile, url, client) = match session(&home) {
        Ok(s) => s,
        Err(e) => return Ok(refused("ls", &e)),
    };
    let reply = match client
        .call("GET", "/v1/targets", Some(&profile.token), None)
        .await
    {
        Ok(r) if r.status == 200 => r,
        Ok(r) => return Ok(refused("ls", &message(&r))),
        Err(e) => {
            return Ok(refused(
                "ls",
                &format!("cannot reach {}: {e}", profile.server),
            ));
        }
    };
    let b = &reply.body;
    if json {
        super::output::json(b)?;
        return Ok(ExitCode::SUCCESS);
    }
    let host = cell(&url.host);
    let names = |k: &str, t: &serde_json::Value| -> Vec<String> {
        t[k].as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).map(cell).collect())
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    for t in b["targets"].as_array().into_iter().flatten() {
        let name = cell(t["name"].as_str().unwrap_or(""));
        let kind = t["kind"].as_str().unwrap_or("");
        let (may, connect) = if kind == "ssh" {
            let logins = names("logins", t);
            let login = logins.iter().find(|l| *l != "*").cloned();
            let port = b["ssh_port"].as_u64().unwrap_or(22);
            (
                format!("logins {}", logins.join(", ")),
                format!(
                    "ssh -p {port} {}{name}@{host}",
                    login.map(|l| format!("{l}@")).unwrap_or_default()
                ),
            )
        } else {
            (
                format!(
                    "databases {}; as {}",
                    names("databases", t).join(", "),
                    names("db_users", t).join(", ")
                ),
                format!("postern db login {name}"),
            )
        };
        let may = match t["granted_until"].as_u64() {
            Some(until) => format!(
                "{may} (by request, {} left)",
                left(until.saturating_sub(now_secs()))
            ),
            None => may,
        };
        rows.push(vec![name, kind.to_string(), may, connect]);
    }
    if rows.is_empty() {
        println!("your roles reach no target");
    } else {
        super::output::table(&["TARGET", "KIND", "MAY USE", "CONNECT WITH"], &rows);
    }
    let expires = b["expires"].as_u64().unwrap_or(0);
    println!(
        "your login is valid for {} more",
        left(expires.saturating_sub(now_secs()))
    );
    Ok(ExitCode::SUCCESS)
}
