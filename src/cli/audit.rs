//! `postern audit search`: read the audit log, newest last.

use std::process::ExitCode;

use super::open_store;
use super::output;
use crate::audit::format_ms;
use crate::config::Config;
use crate::store::AuditFilter;

#[derive(clap::Subcommand)]
pub enum Command {
    /// List events, filtered.
    Search(SearchArgs),
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Event type, exact (`user.create`) or a prefix (`user`).
    #[arg(long = "type")]
    kind: Option<String>,
    /// The actor (`os:root`) or the name after its colon (`root`).
    #[arg(long)]
    actor: Option<String>,
    /// The target of the event (`gpu-1`, `user:alice`).
    #[arg(long)]
    target: Option<String>,
    /// Only the newest N events.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Search(a) = cmd;
    let store = open_store(config).await?;
    let events = store
        .search_audit(&AuditFilter {
            kind: a.kind,
            actor: a.actor,
            target: a.target,
            since_ms: None,
            limit: Some(a.limit),
        })
        .await?;
    store.close().await;
    if a.json {
        output::json(&events)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                format_ms(e.time_ms),
                e.kind.clone(),
                e.actor.0.clone(),
                e.target.clone().unwrap_or_else(|| "-".into()),
                e.result.as_str().into(),
                e.details.to_string(),
            ]
        })
        .collect();
    output::table(
        &["TIME", "TYPE", "ACTOR", "TARGET", "RESULT", "DETAILS"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
