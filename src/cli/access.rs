//! `postern access check`: what the policy engine decides, and which rule decided it.

use std::process::ExitCode;

use anyhow::bail;

use super::open_store;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::config::Config;
use crate::policy::{Decision, PolicyError, Request, decide};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Exit 0 when allowed, 1 when denied.
    Check(CheckArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The user asking.
    #[arg(long)]
    user: String,
    /// The target asked for.
    #[arg(long)]
    target: String,
    /// The unix login on an SSH target.
    #[arg(long, conflicts_with_all = ["database", "db_user"], required_unless_present_any = ["database", "db_user"])]
    login: Option<String>,
    /// The database on a PostgreSQL target (with --db-user).
    #[arg(long, requires = "db_user")]
    database: Option<String>,
    /// The database user on a PostgreSQL target (with --database).
    #[arg(long, requires = "database")]
    db_user: Option<String>,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Check(a) = cmd;
    let store = open_store(config).await?;
    let policy = store.load_policy().await?;
    let user = policy.users.get(&a.user).ok_or(PolicyError::NotFound {
        what: "user",
        name: a.user.clone(),
    })?;
    let target = policy.targets.get(&a.target).ok_or(PolicyError::NotFound {
        what: "target",
        name: a.target.clone(),
    })?;
    let request = match (&a.login, &a.database, &a.db_user) {
        (Some(login), _, _) => Request::Ssh { login },
        (None, Some(database), Some(db_user)) => Request::Postgres { database, db_user },
        _ => bail!(
            "give --login for an SSH target, or --database and --db-user for a PostgreSQL target"
        ),
    };
    let decision = decide(
        user,
        &policy.roles_for(user, &target.name),
        target,
        &request,
    );
    let (outcome, code) = match &decision {
        Decision::Allow(_) => (Outcome::Allow, ExitCode::SUCCESS),
        Decision::Deny(_) => (Outcome::Deny, ExitCode::from(1)),
    };
    let mut event = AuditEvent::new(
        "access.check",
        &Actor::os(),
        outcome,
        serde_json::json!({ "user": a.user, "request": request.to_string(), "decision": decision }),
    );
    event.target = Some(a.target.clone());
    store.append_audit(&event).await?;
    store.close().await;

    if a.json {
        super::output::json(&decision)?;
        return Ok(code);
    }
    match decision {
        Decision::Allow(g) => {
            println!(
                "ALLOW {} → {} on {}: allowed by {}",
                a.user, request, a.target, g.rule
            );
            let s = g.settings;
            println!(
                "  roles {}; credential_ttl {}, max_session_ttl {}, idle_timeout {}, port_forwarding {}, file_transfer {}",
                g.roles.join(","),
                s.credential_ttl,
                s.max_session_ttl,
                s.idle_timeout,
                on_off(s.port_forwarding),
                on_off(s.file_transfer)
            );
        }
        Decision::Deny(reason) => {
            println!("DENY {} → {} on {}: {}", a.user, request, a.target, reason);
        }
    }
    Ok(code)
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}
