//! `postern audit verify` and `postern audit head`: walking the store or an export with
//! `audit::verify::Verifier`, strictly, and saving a signed head to check against later.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use russh::keys::PublicKey;

use super::open_store;
use crate::audit::chain;
use crate::audit::verify::{CheckpointIn, Report, Verifier};
use crate::audit::{Actor, AuditEvent, Outcome, format_ms, now_ms};
use crate::config::Config;
use crate::store::Store;

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

pub(super) fn load_pubkey(config: &Config, path: &Option<PathBuf>) -> anyhow::Result<PublicKey> {
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

pub async fn run(config: &Config, a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = load_pubkey(config, &a.pubkey)?;
    let mut v = Verifier::new(key);
    // The keys the log hands over to, read ahead: a saved head or a checkpoint may be
    // signed by one before the walk reaches its handover.
    let source = match &a.file {
        Some(file) => {
            v.expect_keys(handover_keys(file)?);
            Err(file.as_path())
        }
        None => {
            let db = crate::store::sqlite_path(&config.data_dir);
            if config.store.url.is_empty() && !db.exists() {
                bail!(
                    "no postern store at {}; give --data-dir of a postern data dir (or a copy of one)",
                    db.display()
                );
            }
            let store = Store::open(&config.data_dir, &config.store.url, None).await?;
            v.expect_keys(store.audit_handover_keys().await?);
            Ok(store)
        }
    };
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
        // Every head in the file counts: each must still be in the log, unchanged.
        let heads: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("head").or_else(|| v.get("checkpoint")).cloned())
            .collect();
        if heads.is_empty() {
            bail!(not_a_head());
        }
        for h in &heads {
            if let Err(b) = v.expect_head(checkpoint_in(h)?) {
                if let Ok(store) = &source {
                    store.close().await;
                }
                println!("FAILED: {}", crate::printable::cell(&b.what));
                return Ok(ExitCode::from(1));
            }
        }
    }
    let store = match source {
        Ok(store) => store,
        Err(file) => return Ok(verify_export(file, v)),
    };
    v.at(now_ms());
    let outcome = store.verify_chain(&mut v, |_| {}).await;
    store.close().await;
    let result = match outcome {
        Ok(()) => {
            let recordings = crate::recording::RecordingStore::from_config(config)?;
            let files = v.recording_files();
            let local = recordings
                .open_all(files.iter().map(String::as_str))
                .await?;
            v.finish(Some(local.root()), Some(now_ms()))
        }
        Err(b) => Err(b),
    };
    match result {
        Ok(r) => Ok(report(&r, &config.data_dir.display().to_string())),
        Err(b) => {
            println!(
                "FAILED at seq {}: {}",
                b.seq,
                crate::printable::cell(&b.what)
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Walks an export ([`verify_file`]) and reports.
fn verify_export(file: &std::path::Path, mut v: Verifier) -> ExitCode {
    if let Err(what) = verify_file(file, &mut v) {
        println!("FAILED: {}", crate::printable::cell(&what));
        return ExitCode::from(1);
    }
    match v.finish(None, None) {
        Ok(r) => report(&r, &file.display().to_string()),
        Err(b) => {
            println!("FAILED: {}", crate::printable::cell(&b.what));
            ExitCode::from(1)
        }
    }
}

/// The keys an export's leading `lineage` lines name (checked again as the walk reads
/// them): a saved head may be signed by one of them.
fn handover_keys(file: &std::path::Path) -> anyhow::Result<Vec<PublicKey>> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut keys = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        let Some(l) = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("lineage").cloned())
        else {
            break;
        };
        if l["type"].as_str() == Some(crate::audit::lineage::ROTATED) {
            keys.extend(crate::audit::lineage::named_keys(&l["details"]));
        }
    }
    Ok(keys)
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
        } else if let Some(l) = value.get("lineage") {
            if started {
                return Err(format!("{at}: an audit key line after the first event"));
            }
            let seq = l["seq"]
                .as_i64()
                .ok_or(format!("{at}: an audit key line without seq"))?;
            let kind = l["type"].as_str().unwrap_or_default();
            v.key_event(seq, kind, &l["details"])
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
pub async fn head(config: &Config, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
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
