//! `postern audit …`: search, follow, verify, export and prune the audit log.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use russh::keys::PublicKey;

use super::{open_store, output};
use crate::audit::chain::{self, Signer};
use crate::audit::verify::{CheckpointIn, Report, Verifier};
use crate::audit::{Actor, AuditEvent, Outcome, format_ms, now_ms};
use crate::config::Config;
use crate::credentials::KeyStore;
use crate::duration::Dur;
use crate::store::{AuditFilter, ChainedEvent, Store};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List events, filtered; --follow keeps printing new ones.
    Search(SearchArgs),
    /// Check that no event or recording was modified, deleted, inserted or reordered.
    Verify(VerifyArgs),
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
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Verify an exported JSON-lines file instead of the data dir's store.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The audit public key (default: the data dir's keys/audit_ed25519.pub).
    #[arg(long)]
    pubkey: Option<PathBuf>,
    /// A head saved earlier with `postern audit head -o FILE` (or a witness file, whose
    /// last checkpoint counts): the log must still reach it, unchanged (catches events
    /// removed from the end together with their checkpoints).
    #[arg(long, value_name = "FILE")]
    head: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Jsonl,
    Csv,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    #[arg(long)]
    since: Option<String>,
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
        Command::Verify(a) => verify(config, a).await,
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
        Command::Head { output } => head(config, output).await,
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

fn load_pubkey(config: &Config, path: &Option<PathBuf>) -> anyhow::Result<PublicKey> {
    let path = path
        .clone()
        .unwrap_or_else(|| config.data_dir.join("keys/audit_ed25519.pub"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the audit public key {}", path.display()))?;
    PublicKey::from_openssh(text.trim())
        .with_context(|| format!("{} is not an OpenSSH public key", path.display()))
}

fn report(r: &Report, source: &str) -> ExitCode {
    let unsigned = r.last_seq - r.last_signed;
    println!(
        "OK: {source}: {} events verified (chain intact), {} signed checkpoints, {} recordings intact, {} open recordings intact up to their last seal",
        r.events, r.checkpoints, r.recordings, r.open_recordings
    );
    if unsigned > 0 {
        println!(
            "note: the newest {unsigned} event(s) are not yet covered by a signed checkpoint (postern signs every 10,000 events or 10 s, and at shutdown)"
        );
    }
    ExitCode::SUCCESS
}

async fn verify(config: &Config, a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = load_pubkey(config, &a.pubkey)?;
    let mut v = Verifier::new(key);
    if let Some(head) = &a.head {
        let text = std::fs::read_to_string(head)
            .with_context(|| format!("cannot read the saved head {}", head.display()))?;
        // A file from `audit head`, or a witness or mirror file: its last head counts.
        let not_a_head = || {
            format!(
                "{} is not a head saved by `postern audit head` (nor a witness file)",
                head.display()
            )
        };
        let last = text
            .lines()
            .rev()
            .find(|l| l.contains("\"head\"") || l.contains("\"checkpoint\""))
            .with_context(not_a_head)?;
        let value: serde_json::Value = serde_json::from_str(last).with_context(not_a_head)?;
        let h = value
            .get("head")
            .or_else(|| value.get("checkpoint"))
            .with_context(not_a_head)?;
        if let Err(b) = v.expect_head(checkpoint_in(h)?) {
            println!("FAILED: {}", b.what);
            return Ok(ExitCode::from(1));
        }
    }
    if let Some(file) = &a.file {
        if let Err(what) = verify_file(file, &mut v) {
            println!("FAILED: {what}");
            return Ok(ExitCode::from(1));
        }
        return match v.finish(None, None) {
            Ok(r) => Ok(report(&r, &file.display().to_string())),
            Err(b) => {
                println!("FAILED: {}", b.what);
                Ok(ExitCode::from(1))
            }
        };
    }
    let db = crate::store::sqlite_path(&config.data_dir);
    if !db.exists() {
        bail!(
            "no postern store at {}; give --data-dir of a postern data dir (or a copy of one)",
            db.display()
        );
    }
    let store = Store::open_sqlite(&config.data_dir, None).await?;
    let outcome = verify_store(&store, &mut v).await;
    store.close().await;
    let result = match outcome {
        Ok(()) => v.finish(Some(&config.data_dir), Some(now_ms())),
        Err(b) => Err(b),
    };
    match result {
        Ok(r) => Ok(report(&r, &config.data_dir.display().to_string())),
        Err(b) => {
            println!("FAILED at seq {}: {}", b.seq, b.what);
            Ok(ExitCode::from(1))
        }
    }
}

/// An export, read strictly: an optional anchor first, events and the checkpoints that
/// follow them, and the signed trailer last; any other line is an error.
fn verify_file(file: &std::path::Path, v: &mut Verifier) -> Result<(), String> {
    let f =
        std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let mut started = false;
    let mut trailer = false;
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let at = format!("{}:{}", file.display(), n + 1);
        let line = line.map_err(|e| format!("{at}: cannot read: {e}"))?;
        if trailer {
            return Err(format!("{at}: a line after the signed trailer"));
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|_| format!("{at}: not a JSON line"))?;
        let result = if let Some(t) = value.get("trailer") {
            trailer = true;
            let t: chain::Trailer = serde_json::from_value(t.clone())
                .map_err(|e| format!("{at}: not an export trailer: {e}"))?;
            v.trailer(&t)
        } else if let Some(c) = value.get("checkpoint") {
            v.checkpoint_after(checkpoint_in(c).map_err(|e| format!("{at}: {e}"))?)
        } else if let Some(c) = value.get("anchor") {
            if started {
                return Err(format!("{at}: a prune anchor after the first line"));
            }
            started = true;
            v.anchor(&checkpoint_in(c).map_err(|e| format!("{at}: {e}"))?)
        } else {
            let (seq, e, prev, hash) =
                event_from_line(&value).map_err(|e| format!("{at}: not an audit event: {e:#}"))?;
            if !started {
                v.start_at(seq, &prev);
                started = true;
            }
            v.event(seq, &e, Some(&prev), Some(&hash))
        };
        result.map_err(|b| format!("{at}: {}", b.what))?;
    }
    if !trailer {
        return Err(format!(
            "{}: no signed trailer at the end: the export was cut short (or made by an older postern: export it again)",
            file.display()
        ));
    }
    Ok(())
}

async fn verify_store(store: &Store, v: &mut Verifier) -> Result<(), crate::audit::verify::Broken> {
    let internal = |e: crate::store::StoreError| crate::audit::verify::Broken {
        seq: 0,
        what: format!("cannot read the store: {e}"),
    };
    let mut after = 0;
    if let Some(a) = store.audit_anchor().await.map_err(internal)? {
        after = a.seq;
        v.anchor(&signed(a))?;
    }
    loop {
        let page = store.audit_page(after, 5000).await.map_err(internal)?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        for c in store
            .audit_checkpoints(after, last)
            .await
            .map_err(internal)?
        {
            v.checkpoint(signed(c))?;
        }
        for c in &page {
            v.event(c.seq, &c.event, c.prev_hash.as_deref(), c.hash.as_deref())?;
        }
        after = last;
    }
    for c in store
        .audit_checkpoints(after, i64::MAX)
        .await
        .map_err(internal)?
    {
        v.checkpoint(signed(c))?;
    }
    Ok(())
}

fn signed(c: crate::store::Checkpoint) -> CheckpointIn {
    CheckpointIn {
        seq: c.seq,
        hash: c.hash,
        signature: c.signature,
    }
}

fn checkpoint_in(c: &serde_json::Value) -> anyhow::Result<CheckpointIn> {
    Ok(CheckpointIn {
        seq: c["seq"].as_i64().context("checkpoint without seq")?,
        hash: c["hash"]
            .as_str()
            .context("checkpoint without hash")?
            .to_string(),
        signature: c["signature"]
            .as_str()
            .context("checkpoint without signature")?
            .to_string(),
    })
}

fn event_from_line(v: &serde_json::Value) -> anyhow::Result<(i64, AuditEvent, String, String)> {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let e = AuditEvent {
        id: uuid::Uuid::parse_str(&s("id").context("id")?)?,
        time_ms: v["time_ms"].as_i64().context("time_ms")?,
        kind: s("type").context("type")?,
        actor: Actor(s("actor").context("actor")?),
        source: s("source"),
        target: s("target"),
        session_id: s("session_id"),
        result: {
            let r = s("result").context("result")?;
            Outcome::parse(&r)
                .with_context(|| format!("unknown result `{}`", crate::printable::cell(&r)))?
        },
        details: v.get("details").cloned().unwrap_or(serde_json::Value::Null),
    };
    Ok((
        v["seq"].as_i64().context("seq")?,
        e,
        s("prev_hash").context("prev_hash")?,
        s("hash").context("hash")?,
    ))
}

/// Signs the head now and prints (or saves) it as one JSON line.
async fn head(config: &Config, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    store.audit_checkpoint().await?;
    let head = store.audit_last_checkpoint().await?;
    store.close().await;
    let Some(h) = head else {
        bail!("the audit log is empty: there is no head to save yet");
    };
    let line = serde_json::json!({ "head": { "seq": h.seq, "hash": h.hash, "signature": h.signature, "time": format_ms(h.time_ms) } });
    match output {
        Some(p) => {
            let mut f = crate::credentials::open_private_append(&p, true)
                .with_context(|| format!("cannot create {}", p.display()))?;
            writeln!(f, "{line}")?;
            f.sync_all()?;
            eprintln!(
                "saved the audit head (seq {}) to {}; check against it with `postern audit verify --head {}`",
                h.seq,
                p.display(),
                p.display()
            );
        }
        None => println!("{line}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn export(config: &Config, a: ExportArgs) -> anyhow::Result<ExitCode> {
    let keys = KeyStore::load_or_create(&config.data_dir, &config.tls.hostnames)?.keys;
    let signer = Signer::new(&keys.audit_key)?;
    let store = open_store(config).await?;
    // Make the newest events exportable with a signature.
    store.audit_checkpoint().await?;
    let since = when(&a.since)?;
    let until = when(&a.until)?;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            crate::credentials::open_private_append(p, true).with_context(|| {
                format!(
                    "cannot create {} (an existing symbolic link is not followed)",
                    p.display()
                )
            })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    if matches!(a.format, Format::Csv) {
        writeln!(
            out,
            "seq,id,time,type,actor,source,target,session_id,result,details,prev_hash,hash"
        )?;
    }
    let mut after = 0;
    let mut first = true;
    let mut count = 0u64;
    let mut checkpoints = 0u64;
    let mut first_seq = 0i64;
    let mut last = (0i64, String::new());
    if since.is_none()
        && let Some(anchor) = store.audit_anchor().await?
        && matches!(a.format, Format::Jsonl)
    {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "anchor": { "seq": anchor.seq, "hash": anchor.hash, "signature": anchor.signature } })
        )?;
        after = anchor.seq;
        first = false;
    }
    loop {
        let page = store.audit_page(after, 5000).await?;
        let Some(page_last) = page.last().map(|e| e.seq) else {
            break;
        };
        let cps = store.audit_checkpoints(after, page_last).await?;
        for c in &page {
            let t = c.event.time_ms;
            if since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
                continue;
            }
            let prev = c.prev_hash.as_deref().unwrap_or("");
            let hash = c.hash.as_deref().unwrap_or("");
            match a.format {
                Format::Jsonl => {
                    writeln!(out, "{}", chain::export_line(c.seq, &c.event, prev, hash))?;
                    if let Some(cp) = cps.iter().find(|cp| cp.seq == c.seq) {
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({ "checkpoint": { "seq": cp.seq, "hash": cp.hash, "signature": cp.signature } })
                        )?;
                        checkpoints += 1;
                    }
                }
                Format::Csv => {
                    let e = &c.event;
                    let row = [
                        c.seq.to_string(),
                        e.id.to_string(),
                        format_ms(e.time_ms),
                        e.kind.clone(),
                        e.actor.0.clone(),
                        e.source.clone().unwrap_or_default(),
                        e.target.clone().unwrap_or_default(),
                        e.session_id.clone().unwrap_or_default(),
                        e.result.as_str().to_string(),
                        e.details.to_string(),
                        prev.to_string(),
                        hash.to_string(),
                    ];
                    writeln!(
                        out,
                        "{}",
                        row.iter()
                            .map(|f| csv_field(f))
                            .collect::<Vec<_>>()
                            .join(",")
                    )?;
                }
            }
            first = false;
            count += 1;
            if first_seq == 0 {
                first_seq = c.seq;
            }
            last = (c.seq, hash.to_string());
        }
        after = page_last;
    }
    let _ = first;
    if matches!(a.format, Format::Jsonl) {
        let mut t = chain::Trailer {
            events: count,
            checkpoints,
            first_seq,
            last_seq: last.0,
            last_hash: last.1,
            signature: String::new(),
        };
        t.signature = signer.sign_message(&t.message());
        writeln!(out, "{}", serde_json::json!({ "trailer": t }))?;
    }
    out.flush()?;
    drop(out);
    store
        .append_audit(&AuditEvent::new("audit.export", &Actor::os(), Outcome::Success, serde_json::json!({ "events": count, "output": a.output.as_ref().map(|p| p.display().to_string()) })))
        .await?;
    store.close().await;
    if a.output.is_some() {
        eprintln!("exported {count} event(s)");
    }
    Ok(ExitCode::SUCCESS)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
