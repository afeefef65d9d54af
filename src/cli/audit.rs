//! `postern audit …`: search, follow, verify, export and prune the audit log.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{open_store, output};
use crate::audit::chain::{self, Signer};
use crate::audit::{Actor, AuditEvent, Outcome, format_ms, now_ms};
use crate::config::Config;
use crate::credentials::KeyStore;
use crate::duration::Dur;
use crate::store::{AuditFilter, ChainedEvent, ExportFormat};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List events, filtered; --follow keeps printing new ones.
    Search(SearchArgs),
    /// Check that no event or recording was modified, deleted, inserted or reordered.
    Verify(super::verify::VerifyArgs),
    /// Stream events as JSON lines (with signed checkpoints) or CSV.
    Export(ExportArgs),
    /// Remove events older than a date, keeping a signed anchor so the rest still verifies.
    Prune {
        /// A date (2026-01-31), a time (RFC 3339) or an age (90d).
        #[arg(long)]
        before: String,
        /// Confirm removing events younger than `[audit] min_retention` (30d).
        #[arg(long)]
        yes: bool,
    },
    /// Print the public key that verifies audit checkpoints (give it to auditors).
    Pubkey,
    /// Sign the chain head now and save it, for `audit verify --head` later: keep the
    /// file outside the data dir (an auditor's machine, a ticket, a write-once store).
    Head {
        /// Write here (created 0600) instead of standard output.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Event type, exact (`user.create`) or a prefix (`user`).
    #[arg(long = "type")]
    kind: Option<String>,
    /// The actor (`os:root`, `user:alice`) or the name after its colon (`alice`).
    #[arg(long, alias = "actor")]
    user: Option<String>,
    /// The target of the event (`gpu-1`, `user:alice`).
    #[arg(long)]
    target: Option<String>,
    /// A session id (or its prefix).
    #[arg(long)]
    session: Option<String>,
    /// From: an age (1h, 7d), a date (2026-11-25) or a time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Until (exclusive), same forms as --since.
    #[arg(long)]
    until: Option<String>,
    /// Only the newest N events.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Keep printing new events as they are written (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
    /// Print the events as JSON, with their chain hashes (JSON lines with --follow).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Jsonl,
    Csv,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// jsonl (events with signed checkpoints and a signed trailer) or csv.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// From: an age (1h, 7d), a date (2026-11-25) or a time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Until (exclusive), same forms as --since.
    #[arg(long)]
    until: Option<String>,
    /// Write here instead of standard output.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

/// `90d` (that long ago), `2026-11-25` (midnight UTC) or an RFC 3339 time → Unix ms.
pub fn parse_when(s: &str) -> anyhow::Result<i64> {
    if let Ok(d) = s.parse::<Dur>() {
        return Ok(now_ms().saturating_sub(crate::audit::secs_to_ms(d.as_secs())));
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000)?);
    }
    let date_fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(s, &date_fmt) {
        return Ok(d
            .midnight()
            .assume_utc()
            .unix_timestamp()
            .saturating_mul(1000));
    }
    bail!(
        "cannot read `{s}` as a time: write an age (1h, 7d), a date (2026-11-25) or an RFC 3339 time (2026-11-25T14:02:00Z)"
    )
}

fn when(s: &Option<String>) -> anyhow::Result<Option<i64>> {
    s.as_deref().map(parse_when).transpose()
}

fn print_events(events: &[ChainedEvent], json: bool) -> anyhow::Result<()> {
    if json {
        let v: Vec<serde_json::Value> = events
            .iter()
            .map(|c| {
                chain::export_line(
                    c.seq,
                    &c.event,
                    c.prev_hash.as_deref().unwrap_or(""),
                    c.hash.as_deref().unwrap_or(""),
                )
            })
            .collect();
        return output::json(&v);
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|c| {
            let e = &c.event;
            vec![
                format_ms(e.time_ms),
                e.kind.clone(),
                e.actor.0.clone(),
                e.target.clone().unwrap_or_else(|| "-".into()),
                e.session_id
                    .as_deref()
                    .map(|s| s.chars().take(8).collect())
                    .unwrap_or_else(|| "-".into()),
                e.result.as_str().into(),
                e.details.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "TIME", "TYPE", "ACTOR", "TARGET", "SESSION", "RESULT", "DETAILS",
        ],
        &rows,
    );
    Ok(())
}

pub async fn run(config: &Config, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Search(a) => search(config, a).await,
        Command::Verify(a) => super::verify::run(config, a).await,
        Command::Export(a) => export(config, a).await,
        Command::Prune { before, yes } => {
            let before_ms = parse_when(&before)?;
            let floor = config.audit.min_retention;
            let floor_ms =
                now_ms().saturating_sub(i64::try_from(floor.as_secs())?.saturating_mul(1000));
            if before_ms > floor_ms && !yes {
                bail!(
                    "refusing to remove events younger than {floor} (`[audit] min_retention`): --before {before} reaches {}; add --yes if that recent evidence should go",
                    format_ms(before_ms)
                );
            }
            let keys = KeyStore::load_or_create(&config.data_dir, &config.tls.hostnames)?.keys;
            let signer = Signer::new(&keys.audit_key)?;
            let store = open_store(config).await?;
            let n = store.prune_audit(before_ms, &signer).await?;
            store
                .append_audit(&AuditEvent::new(
                    "audit.prune",
                    &Actor::os(),
                    Outcome::Success,
                    serde_json::json!({ "before": format_ms(before_ms), "removed": n }),
                ))
                .await?;
            store.close().await;
            println!(
                "removed {n} event(s) older than {}; a signed anchor keeps the rest verifiable",
                format_ms(before_ms)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Head { output } => super::verify::head(config, output).await,
        Command::Pubkey => {
            let path = config.data_dir.join("keys/audit_ed25519.pub");
            print!(
                "{}",
                std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn search(config: &Config, a: SearchArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let mut filter = AuditFilter {
        kind: a.kind,
        actor: a.user,
        target: a.target,
        session: a.session,
        since_ms: when(&a.since)?,
        until_ms: when(&a.until)?,
        after_seq: None,
        // One more than asked, to know whether the answer was cut.
        limit: Some(i64::from(a.limit) + 1),
    };
    let mut events = store.search_audit(&filter).await?;
    let cut = events.len() > a.limit as usize;
    if cut {
        events.remove(0);
    }
    print_events(&events, a.json)?;
    if cut {
        eprintln!(
            "showing the newest {} matching events; older ones matched too: narrow with --since/--type/--user or raise --limit",
            a.limit
        );
    }
    if !a.follow {
        store.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = events.last().map(|e| e.seq).unwrap_or(0);
    if last == 0 {
        last = store.audit_head_seq().await?;
    }
    filter.limit = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        filter.after_seq = Some(last);
        let new = store.search_audit(&filter).await?;
        if let Some(l) = new.last() {
            last = l.seq;
            if a.json {
                for c in &new {
                    println!(
                        "{}",
                        chain::export_line(
                            c.seq,
                            &c.event,
                            c.prev_hash.as_deref().unwrap_or(""),
                            c.hash.as_deref().unwrap_or("")
                        )
                    );
                }
            } else {
                print_events(&new, false)?;
            }
            std::io::stdout().flush()?;
        }
    }
}

async fn export(config: &Config, a: ExportArgs) -> anyhow::Result<ExitCode> {
    let keys = KeyStore::load_or_create(&config.data_dir, &config.tls.hostnames)?.keys;
    let signer = Signer::new(&keys.audit_key)?;
    let store = open_store(config).await?;
    let since = when(&a.since)?;
    let until = when(&a.until)?;
    let format = match a.format {
        Format::Jsonl => ExportFormat::Jsonl,
        Format::Csv => ExportFormat::Csv,
    };
    let count = match &a.output {
        Some(p) => {
            let file = crate::credentials::open_private_append(p, true).with_context(|| {
                format!(
                    "cannot create {} (an existing symbolic link is not followed)",
                    p.display()
                )
            })?;
            let mut out = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
            let n = store
                .export_audit(format, since, until, &signer, &mut out)
                .await?;
            out.into_inner().sync_all().await?;
            n
        }
        None => {
            let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
            store
                .export_audit(format, since, until, &signer, &mut out)
                .await?
        }
    };
    store
        .append_audit(&AuditEvent::new("audit.export", &Actor::os(), Outcome::Success, serde_json::json!({ "events": count, "output": a.output.as_ref().map(|p| p.display().to_string()) })))
        .await?;
    store.close().await;
    if a.output.is_some() {
        eprintln!("exported {count} event(s)");
    }
    Ok(ExitCode::SUCCESS)
}
