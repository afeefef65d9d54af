//! `postern request …`: just-in-time access through the server of your last login. A
//! developer asks for a role for a time with a reason; reviewers approve or deny; an
//! approved request is a grant that ends on its own (or when revoked).

use std::process::ExitCode;

use serde_json::{Value, json};

use super::login::{message, refused, session};
use crate::audit::format_ms;
use crate::client::Home;
use crate::duration::Dur;
use crate::printable::cell;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Ask for a role for a time, with a reason, for reviewers to approve.
    Create {
        /// The role to ask for (`postern request roles` lists the ones you may).
        #[arg(long)]
        role: String,
        /// Only on this target (default: every target the role reaches).
        #[arg(long)]
        target: Option<String>,
        /// Why you need it; reviewers and auditors read it.
        #[arg(long)]
        reason: String,
        /// How long the access should last once approved, e.g. 1h.
        #[arg(long = "for", value_name = "DURATION")]
        ttl: Dur,
        /// Print the request as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Your requests; with --pending, the ones waiting for your decision; with --grants,
    /// running grants you may revoke.
    List {
        /// The pending requests you may decide (as a reviewer).
        #[arg(long, conflicts_with = "grants")]
        pending: bool,
        /// The running grants you may revoke.
        #[arg(long)]
        grants: bool,
        /// Print the requests as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The roles you may request, who reviews them and for how long at most.
    Roles {
        /// Print the roles as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take back one of your pending requests.
    Cancel {
        /// The request's number.
        id: i64,
    },
    /// Approve a request (reviewers of its role; not your own).
    Approve {
        /// The request's number.
        id: i64,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny a request, with a reason.
    Deny {
        /// The request's number.
        id: i64,
        /// Why (the requester and the audit log see it).
        #[arg(long)]
        reason: String,
    },
    /// End a running grant now; sessions resting on it end.
    Revoke {
        /// The request's number.
        id: i64,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub(super) async fn call(
    what: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ExitCode> {
    let home = Home::locate().map_err(|e| refused(what, &e))?;
    let (profile, _, client) = session(&home).map_err(|e| refused(what, &e))?;
    match client
        .call(method, path, Some(&profile.token), body.as_ref())
        .await
    {
        Ok(r) if r.status / 100 == 2 => Ok(r.body),
        Ok(r) => Err(refused(what, &message(&r))),
        Err(e) => Err(refused(
            what,
            &format!("cannot reach {}: {e}", profile.server),
        )),
    }
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// What a request is for, on one line: `gpu-admin on gpu-1 for 1h`.
fn what(r: &Value) -> String {
    let on = match r["target"].as_str() {
        Some(t) => format!(" on {}", cell(t)),
        None => String::new(),
    };
    format!(
        "{}{on} for {}",
        cell(str_of(r, "role")),
        Dur::from_secs(r["ttl_secs"].as_u64().unwrap_or(0))
    )
}

/// Where a request stands, for people.
fn standing(r: &Value) -> String {
    let ms = |k: &str| format_ms(r[k].as_i64().unwrap_or(0));
    match str_of(r, "state") {
        "pending" => format!(
            "pending: {} of {} approvals, until {}",
            r["approvals"].as_array().map_or(0, Vec::len),
            r["approvals_required"].as_u64().unwrap_or(1),
            ms("pending_until_ms")
        ),
        "approved" => format!("approved: granted until {}", ms("grant_until_ms")),
        s @ ("denied" | "revoked") => format!(
            "{s} by {}: {}",
            cell(str_of(r, "decided_by")),
            cell(r["decision_reason"].as_str().unwrap_or(""))
        ),
        s => s.to_string(),
    }
}

fn show_one(verb: &str, body: &Value, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        super::output::json(body)?;
        return Ok(ExitCode::SUCCESS);
    }
    let r = &body["request"];
    println!(
        "request #{} {verb}: {} ({})",
        r["id"].as_i64().unwrap_or(0),
        what(r),
        standing(r)
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let act = |id: i64, verb: &'static str, reason: Option<String>| async move {
        let body = reason.map(|r| json!({ "reason": r }));
        match call(verb, "POST", &format!("/v1/requests/{id}/{verb}"), body).await {
            Ok(b) => {
                let done = match verb {
                    "cancel" => "cancelled",
                    "approve" => "approved",
                    "deny" => "denied",
                    _ => "revoked",
                };
                show_one(done, &b, false)
            }
            Err(code) => Ok(code),
        }
    };
    match cmd {
        Command::Create {
            role,
            target,
            reason,
            ttl,
            json,
        } => {
            let body =
                json!({ "role": role, "target": target, "reason": reason, "for": ttl.to_string() });
            match call("request", "POST", "/v1/requests", Some(body)).await {
                Ok(b) => {
                    let code = show_one("filed", &b, json)?;
                    if !json {
                        println!(
                            "a reviewer decides with: postern request approve {}",
                            b["request"]["id"].as_i64().unwrap_or(0)
                        );
                    }
                    Ok(code)
                }
                Err(code) => Ok(code),
            }
        }
        Command::List {
            pending,
            grants,
            json,
        } => {
            let view = if pending {
                "pending"
            } else if grants {
                "grants"
            } else {
                "mine"
            };
            let b = match call("request", "GET", &format!("/v1/requests?view={view}"), None).await {
                Ok(b) => b,
                Err(code) => return Ok(code),
            };
            if json {
                super::output::json(&b)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = b["requests"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    vec![
                        format!("#{}", r["id"].as_i64().unwrap_or(0)),
                        cell(str_of(r, "user")),
                        what(r),
                        standing(r),
                        cell(str_of(r, "reason")),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no requests");
            } else {
                super::output::table(&["ID", "USER", "FOR", "STATE", "REASON"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Roles { json } => {
            let b = match call("request", "GET", "/v1/requests/roles", None).await {
                Ok(b) => b,
                Err(code) => return Ok(code),
            };
            if json {
                super::output::json(&b)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = b["roles"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let reviewers: Vec<String> = r["reviewers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(cell)
                        .collect();
                    vec![
                        cell(str_of(r, "role")),
                        reviewers.join(", "),
                        r["approvals_required"].as_u64().unwrap_or(1).to_string(),
                        cell(str_of(r, "max_request_ttl")),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no role is requestable by you");
            } else {
                super::output::table(&["ROLE", "REVIEWERS", "APPROVALS", "AT MOST"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id } => act(id, "cancel", None).await,
        Command::Approve { id, reason } => act(id, "approve", Some(reason)).await,
        Command::Deny { id, reason } => act(id, "deny", Some(reason)).await,
        Command::Revoke { id, reason } => act(id, "revoke", Some(reason)).await,
    }
}
