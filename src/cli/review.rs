//! `postern review …`: periodic access reviews through the server of your last login.
//! Admins start campaigns; reviewers certify or revoke each grant; auditors take the
//! report.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::request::call;
use crate::audit::format_ms;
use crate::config::OnDue;
use crate::duration::Dur;
use crate::printable::cell;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Start a campaign: one item per standing role grant in scope (admin right).
    Start {
        /// A name for it, e.g. Q4.
        #[arg(long, default_value = "")]
        name: String,
        /// How long reviewers have, e.g. 14d (default: `[review] due`).
        #[arg(long)]
        due: Option<Dur>,
        /// `role=NAME` or `target-label=KEY=VALUE` (default: every grant).
        #[arg(long, default_value = "")]
        scope: String,
        /// What happens to items undecided at the due date (default: `[review] on_due`).
        #[arg(long, value_enum)]
        on_due: Option<OnDue>,
        /// Print the campaign as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Campaigns with their counts (audit right).
    List {
        /// Print the campaigns as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Review items: with --mine, the open ones you may decide.
    Items {
        /// One campaign's items.
        #[arg(long)]
        campaign: Option<i64>,
        /// Only the open items you may decide.
        #[arg(long)]
        mine: bool,
        /// Print the items as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep a grant.
    Certify {
        /// The item's number.
        item: i64,
        /// Why (kept in the report and the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Take a grant away now, with a reason.
    Revoke {
        /// The item's number.
        item: i64,
        /// Why (kept in the report and the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Every item of a campaign with its decision, reviewer, time and reason (audit right).
    Report {
        /// The campaign's number.
        campaign: i64,
        /// json or csv.
        #[arg(long, default_value = "json")]
        format: String,
    },
}

fn item_line(i: &Value) -> Vec<String> {
    let ms = |k: &str| i[k].as_i64().map(format_ms).unwrap_or_else(|| "-".into());
    vec![
        format!("#{}", i["id"].as_i64().unwrap_or(0)),
        cell(i["user"].as_str().unwrap_or("")),
        cell(i["role"].as_str().unwrap_or("")),
        ms("granted_ms"),
        ms("last_used_ms"),
        if i["stale"] == true { "stale" } else { "" }.to_string(),
        cell(i["decision"].as_str().unwrap_or("open")),
    ]
}

const ITEM_HEAD: [&str; 7] = [
    "ITEM",
    "USER",
    "ROLE",
    "GRANTED",
    "LAST USED",
    "",
    "DECISION",
];

/// The server's JSON answer, or the exit code of a refusal already printed.
async fn get(method: &str, path: &str, body: Option<Value>) -> Result<Value, ExitCode> {
    call("review", method, path, body).await
}

pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Start {
            name,
            due,
            scope,
            on_due,
            json,
        } => {
            let body = json!({
                "name": name, "scope": scope,
                "due": due.map(|d| d.to_string()),
                "on_due": on_due.map(|o| if o == OnDue::Revoke { "revoke" } else { "report" }),
            });
            let b = match get("POST", "/v1/reviews", Some(body)).await {
                Ok(b) => b,
                Err(code) => return Ok(code),
            };
            if json {
                super::output::json(&b)?;
            } else {
                let c = &b["campaign"];
                println!(
                    "review #{} `{}` started: {} items, due {} ({} then)",
                    c["id"],
                    cell(c["name"].as_str().unwrap_or("")),
                    c["counts"]["open"].as_u64().unwrap_or(0),
                    format_ms(c["due_ms"].as_i64().unwrap_or(0)),
                    c["on_due"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { json } => {
            let b = match get("GET", "/v1/reviews", None).await {
                Ok(b) => b,
                Err(code) => return Ok(code),
            };
            if json {
                super::output::json(&b)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = b["campaigns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let counts = c["counts"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!("{k} {v}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    vec![
                        format!("#{}", c["id"]),
                        cell(c["name"].as_str().unwrap_or("")),
                        cell(c["scope"].as_str().unwrap_or("")),
                        format_ms(c["due_ms"].as_i64().unwrap_or(0)),
                        if c["closed_ms"].is_null() {
                            "open"
                        } else {
                            "closed"
                        }
                        .into(),
                        counts,
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no review campaigns");
            } else {
                super::output::table(&["ID", "NAME", "SCOPE", "DUE", "STATE", "ITEMS"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Items {
            campaign,
            mine,
            json,
        } => {
            let mut path = format!("/v1/reviews/items?mine={mine}");
            if let Some(c) = campaign {
                path.push_str(&format!("&campaign={c}"));
            }
            let b = match get("GET", &path, None).await {
                Ok(b) => b,
                Err(code) => return Ok(code),
            };
            if json {
                super::output::json(&b)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = b["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(item_line)
                .collect();
            if rows.is_empty() {
                println!("no review items");
            } else {
                super::output::table(&ITEM_HEAD, &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Certify { item, reason } => decide(item, "certify", reason).await,
        Command::Revoke { item, reason } => decide(item, "revoke", reason).await,
        Command::Report { campaign, format } => {
            if format != "json" && format != "csv" {
                anyhow::bail!("--format must be json or csv, not `{}`", cell(&format));
            }
            let b = match get("GET", &format!("/v1/reviews/{campaign}/report"), None).await {
                Ok(b) => b,
                Err(code) => return Ok(code),
            };
            if format == "json" {
                super::output::json(&b)?;
            } else {
                let items: Vec<crate::store::ReviewItem> =
                    serde_json::from_value(b["items"].clone())?;
                print!("{}", crate::store::review_csv(&items));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn decide(item: i64, verb: &str, reason: String) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/reviews/items/{item}/{verb}");
    let b = match get("POST", &path, Some(json!({ "reason": reason }))).await {
        Ok(b) => b,
        Err(code) => return Ok(code),
    };
    let i = &b["item"];
    let (user, role) = (
        cell(i["user"].as_str().unwrap_or("")),
        cell(i["role"].as_str().unwrap_or("")),
    );
    if verb == "certify" {
        println!("review item #{item} certified: {user} keeps role {role}");
    } else {
        println!("review item #{item} revoked: {user} no longer holds role {role}");
    }
    Ok(ExitCode::SUCCESS)
}
