//! `postern apply -f FILE`: policy as code, applied in one transaction, idempotently.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::open_store;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::config::Config;
use crate::policy::file;

#[derive(clap::Args)]
pub struct Args {
    /// The policy file (TOML), e.g. config/policy.toml.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Also remove users, roles and targets the file does not name.
    #[arg(long)]
    prune: bool,
    /// Show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the changes as JSON.
    #[arg(long)]
    json: bool,
    /// With --dry-run, for pipelines: exit 2 when there are changes, 0 when none, and 1
    /// on an error (as `terraform plan -detailed-exitcode`).
    #[arg(long, requires = "dry_run")]
    exit_code: bool,
}

/// `apply`, with `--exit-code` saying by its status whether anything would change.
pub async fn run_with_exit_code(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    if !args.exit_code {
        return run(config, args).await.map(|_| ExitCode::SUCCESS);
    }
    match run(config, args).await {
        Ok(0) => Ok(ExitCode::SUCCESS),
        Ok(_) => Ok(ExitCode::from(2)),
        Err(e) => {
            eprintln!("postern: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Applies (or with --dry-run shows) the file; returns how many changes there were.
async fn run(config: &Config, args: Args) -> anyhow::Result<usize> {
    let src = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read policy file {}", args.file.display()))?;
    // Parse and validate everything before touching the store: nothing is half-applied.
    let doc = file::parse(&args.file, &src)?;
    let store = open_store(config).await?;
    let actor = Actor::os();
    let changes = store
        .update_policy(&actor, args.dry_run, |current| {
            Ok(file::merge(current, &doc, args.prune))
        })
        .await?;
    if !args.dry_run && !changes.is_empty() {
        store
            .append_audit(&AuditEvent::new(
                "policy.apply",
                &actor,
                Outcome::Success,
                serde_json::json!({
                    "file": args.file.display().to_string(),
                    "prune": args.prune,
                    "changes": changes.len(),
                }),
            ))
            .await?;
    }
    if args.json {
        let out: Vec<_> = changes
            .iter()
            .map(|c| serde_json::json!({ "change": c.to_string(), "type": c.event_type(), "details": c.details() }))
            .collect();
        super::output::json(&serde_json::json!({ "dry_run": args.dry_run, "changes": out }))?;
    } else if changes.is_empty() {
        println!(
            "nothing to change: the store already matches {}",
            args.file.display()
        );
    } else {
        for c in &changes {
            println!("{c}");
        }
        let verb = if args.dry_run {
            "would apply"
        } else {
            "applied"
        };
        println!("{verb} {} change(s)", changes.len());
    }
    store.close().await;
    Ok(changes.len())
}
