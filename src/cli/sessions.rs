//! `postern sessions …` and `postern replay`: what auditors read.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{open_store, output};
use crate::audit::{Actor, AuditEvent, Outcome, format_ms, now_ms};
use crate::config::Config;
use crate::duration::Dur;
use crate::recording::RecordingStore;
use crate::recording::search::{self, is_transcript, statement_text, transcript_lines};
use crate::recording::store::Local;
use crate::store::{SessionFilter, SessionRow, Store};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List sessions, oldest first.
    List {
        /// Only sessions of this user.
        #[arg(long)]
        user: Option<String>,
        /// Only sessions to this target.
        #[arg(long)]
        target: Option<String>,
        /// Only sessions started within this long, e.g. 1h, 7d.
        #[arg(long)]
        since: Option<Dur>,
        /// Only sessions still running.
        #[arg(long)]
        active: bool,
        /// Only the newest N sessions.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print the sessions, with their recordings, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One session with its recordings.
    Show {
        /// The session id (or a unique prefix of it).
        id: String,
        /// Print the session as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a recording: a terminal's as an asciicast v2 file (`asciinema play`), a
    /// channel without a terminal as the bytes of one stream, exactly as they crossed.
    Export {
        /// The session id (or a unique prefix of it).
        id: String,
        /// The file to write (created 0600; an existing symbolic link is not followed).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// The channel to export (default: the first).
        #[arg(long)]
        channel: Option<i64>,
        /// For a channel without a terminal: which stream (default stdout).
        #[arg(long, value_enum)]
        stream: Option<super::streams::Which>,
    },
    /// End a live session, wherever it runs; waits until it has ended.
    Kill {
        /// The session id (or a unique prefix of it).
        id: String,
    },
    /// Search what was typed and printed; prints session, time offset and the matching line.
    Grep {
        /// The text to look for (plain text, case-sensitive).
        pattern: String,
        /// Only sessions started within this long, e.g. 1h, 7d.
        #[arg(long)]
        since: Option<Dur>,
        /// Print the matches as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The session id (or a unique prefix of it).
    id: String,
    /// Play faster (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Never wait longer than this between two outputs.
    #[arg(long)]
    max_idle: Option<Dur>,
    /// The channel to replay (default: the first).
    #[arg(long)]
    channel: Option<i64>,
    /// A PostgreSQL transcript as JSON lines, each statement joined with its result.
    #[arg(long)]
    json: bool,
}

fn since_ms(d: Option<Dur>) -> Option<i64> {
    d.map(|d| now_ms().saturating_sub(crate::audit::secs_to_ms(d.as_secs())))
}

fn duration_text(s: &SessionRow) -> String {
    let end = s.ended_ms.unwrap_or_else(now_ms);
    Dur::from_secs(u64::try_from((end - s.started_ms) / 1000).unwrap_or(0)).to_string()
}

async fn session(store: &Store, id: &str) -> anyhow::Result<SessionRow> {
    store.get_session(id).await?.with_context(|| {
        format!(
            "session `{id}` not found (or the prefix is ambiguous); see `postern sessions list`"
        )
    })
}

/// Recordings as people find them: files under the recordings dir in use (the index
/// keeps them relative), or objects in the bucket.
fn locate(recordings: &RecordingStore, rows: &mut [SessionRow]) {
    for r in rows.iter_mut().flat_map(|s| s.recordings.iter_mut()) {
        r.path = recordings.display(&r.path);
    }
}

/// The recording of `channel` (the first when none is given) as a local file to read.
async fn fetch(
    recordings: &RecordingStore,
    s: &SessionRow,
    channel: Option<i64>,
) -> anyhow::Result<Local> {
    let stored = stored_of(s, channel)?;
    recordings
        .open(&stored)
        .await
        .with_context(|| format!("cannot read recording {}", recordings.display(&stored)))
}

fn stored_of(s: &SessionRow, channel: Option<i64>) -> anyhow::Result<String> {
    let rec = match channel {
        Some(c) => s.recordings.iter().find(|r| r.channel == c),
        None => s.recordings.first(),
    };
    match rec {
        Some(r) => Ok(r.path.clone()),
        None => bail!(
            "session {} has no recording{}",
            s.id,
            channel
                .map(|c| format!(" for channel {c}"))
                .unwrap_or_default()
        ),
    }
}

async fn audit_read(
    store: &Store,
    kind: &str,
    s: &SessionRow,
    details: serde_json::Value,
) -> anyhow::Result<()> {
    let mut e = AuditEvent::new(kind, &Actor::os(), Outcome::Success, details);
    e.session_id = Some(s.id.clone());
    e.target = Some(s.target.clone());
    store.append_audit(&e).await?;
    Ok(())
}

pub async fn run(config: &Config, cmd: Command) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    // Listing and showing need no credentials for a bucket; reading does.
    let recordings = RecordingStore::from_config(config);
    let shown = RecordingStore::from_config(config)
        .unwrap_or_else(|_| RecordingStore::dir(config.recordings_dir()));
    let code = match cmd {
        Command::List {
            user,
            target,
            since,
            active,
            limit,
            json,
        } => {
            let mut rows = store
                .list_sessions(&SessionFilter {
                    user,
                    target,
                    since_ms: since_ms(since),
                    active,
                    limit: Some(limit),
                })
                .await?;
            locate(&shown, &mut rows);
            if json {
                output::json(&rows)?;
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|s| {
                        vec![
                            s.id.clone(),
                            s.kind.clone(),
                            s.user.clone(),
                            format!("{}@{}", s.login, s.target),
                            format_ms(s.started_ms),
                            duration_text(s),
                            s.end_reason.clone().unwrap_or_else(|| "active".into()),
                            s.exit_status
                                .map(|e| e.to_string())
                                .unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "ID",
                        "KIND",
                        "USER",
                        "DESTINATION",
                        "STARTED",
                        "DURATION",
                        "END",
                        "EXIT",
                    ],
                    &table,
                );
            }
            ExitCode::SUCCESS
        }
        Command::Show { id, json } => {
            let mut s = session(&store, &id).await?;
            let mut commands = Vec::new();
            for r in &s.recordings {
                let head = match &recordings {
                    Ok(rec) => rec.header(&r.path).await,
                    Err(_) => None,
                };
                commands.push(head.as_deref().and_then(search::command_in));
            }
            locate(&shown, std::slice::from_mut(&mut s));
            if json {
                output::json(&s)?;
            } else {
                let c = output::cell;
                println!("session      {}", c(&s.id));
                println!("kind         {}", c(&s.kind));
                println!("user         {}", c(&s.user));
                println!("destination  {}@{}", c(&s.login), c(&s.target));
                println!("client       {}", c(&s.client_addr));
                println!("started      {}", format_ms(s.started_ms));
                println!(
                    "ended        {}",
                    s.ended_ms
                        .map(format_ms)
                        .unwrap_or_else(|| "(active)".into())
                );
                println!("end reason   {}", c(s.end_reason.as_deref().unwrap_or("-")));
                println!("bytes        {} in, {} out", s.bytes_in, s.bytes_out);
                println!(
                    "exit status  {}",
                    s.exit_status
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "-".into())
                );
                println!(
                    "certificate  serial {}",
                    c(s.cert_serial.as_deref().unwrap_or("-"))
                );
                for (r, command) in s.recordings.iter().zip(commands) {
                    println!(
                        "recording    channel {}  {}  sha256 {}",
                        r.channel,
                        c(&r.path),
                        c(r.sha256.as_deref().unwrap_or("(open)"))
                    );
                    if let Some(command) = command {
                        println!("  command    {}", c(&command));
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Export {
            id,
            output,
            channel,
            stream,
        } => {
            let s = session(&store, &id).await?;
            let recordings = recordings?;
            let local = fetch(&recordings, &s, channel).await?;
            let path = local.path();
            let shown = recordings.display(&stored_of(&s, channel)?);
            if crate::recording::stream::is_stream(path) {
                let which = stream.unwrap_or(super::streams::Which::Stdout);
                let mut file = crate::credentials::open_private_append(&output, true)
                    .with_context(|| format!("cannot create {}", output.display()))?;
                super::streams::export(path, which, &mut file)?;
            } else if stream.is_some() {
                bail!(
                    "this channel had a terminal or is not a command: its recording is an asciicast; export it without --stream"
                );
            } else {
                let copied = std::fs::File::open(path).and_then(|mut from| {
                    let mut to = crate::credentials::open_private_append(&output, true)?;
                    std::io::copy(&mut from, &mut to)?;
                    to.sync_all()
                });
                copied.with_context(|| format!("cannot copy {shown} to {}", output.display()))?;
            }
            audit_read(
                &store,
                "session.export",
                &s,
                serde_json::json!({ "recording": shown, "output": output.display().to_string() }),
            )
            .await?;
            println!("wrote {}", output.display());
            ExitCode::SUCCESS
        }
        Command::Kill { id } => {
            let s = session(&store, &id).await?;
            if s.ended_ms.is_some() {
                bail!(
                    "session {} already ended ({})",
                    s.id,
                    s.end_reason.as_deref().unwrap_or("?")
                );
            }
            let actor = Actor::os();
            store.request_kill(&s.id, &actor).await?;
            audit_read(
                &store,
                "session.kill",
                &s,
                serde_json::json!({ "user": s.user }),
            )
            .await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let now = session(&store, &s.id).await?;
                if now.ended_ms.is_some() {
                    println!(
                        "session {} ended ({})",
                        s.id,
                        now.end_reason.as_deref().unwrap_or("killed")
                    );
                    break ExitCode::SUCCESS;
                }
                if std::time::Instant::now() > deadline {
                    println!(
                        "kill of session {} requested; it has not ended yet (is postern serve running?)",
                        s.id
                    );
                    break ExitCode::from(1);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Command::Grep {
            pattern,
            since,
            json,
        } => {
            let rows = store
                .list_sessions(&SessionFilter {
                    since_ms: since_ms(since),
                    ..Default::default()
                })
                .await?;
            let recordings = recordings?;
            let mut hits = Vec::new();
            for s in &rows {
                for r in &s.recordings {
                    let shown = recordings.display(&r.path);
                    // A recording that cannot be read is an error, never "no match".
                    let local = recordings.open(&r.path).await;
                    let found = local
                        .map_err(anyhow::Error::from)
                        .and_then(|l| Ok(search::grep(l.path(), &pattern)?))
                        .with_context(|| {
                            format!(
                                "cannot read the recording of session {} channel {}: {shown}",
                                s.id, r.channel,
                            )
                        })?;
                    for (offset, line) in found {
                        hits.push(serde_json::json!({ "session": s.id, "channel": r.channel, "user": s.user, "target": s.target, "offset_s": offset, "line": line }));
                    }
                }
            }
            if json {
                output::json(&hits)?;
            } else {
                for h in &hits {
                    println!(
                        "{} +{:.1}s {}: {}",
                        output::cell(h["session"].as_str().unwrap_or("")),
                        h["offset_s"].as_f64().unwrap_or(0.0),
                        output::cell(h["user"].as_str().unwrap_or("")),
                        output::cell(h["line"].as_str().unwrap_or(""))
                    );
                }
            }
            if hits.is_empty() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    };
    store.close().await;
    Ok(code)
}

pub async fn replay(config: &Config, a: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !(a.speed > 0.0 && a.speed.is_finite()) {
        bail!("--speed must be a positive number");
    }
    let store = open_store(config).await?;
    let recordings = RecordingStore::from_config(config)?;
    let s = session(&store, &a.id).await?;
    let local = fetch(&recordings, &s, a.channel).await?;
    let path = local.path().to_path_buf();
    audit_read(
        &store,
        "session.replay",
        &s,
        serde_json::json!({ "recording": recordings.display(&stored_of(&s, a.channel)?), "speed": a.speed }),
    )
    .await?;
    store.close().await;
    if crate::recording::stream::is_stream(&path) {
        super::streams::summary(&path, &mut std::io::stdout().lock())?;
        return Ok(ExitCode::SUCCESS);
    }
    if is_transcript(&path) {
        let lines = transcript_lines(&path)
            .with_context(|| format!("cannot open recording {}", path.display()))?;
        let mut out = std::io::stdout().lock();
        for (t, v) in lines {
            if a.json {
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "+{t:>9.3}s  {}", statement_text(&v))?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let file = std::fs::File::open(&path)
        .with_context(|| format!("cannot open recording {}", path.display()))?;
    let max_idle = a.max_idle.map(|d| d.as_secs() as f64);
    let mut last = 0.0f64;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(file).lines().map_while(Result::ok).skip(1) {
        let Ok((t, code, data)) = serde_json::from_str::<(f64, String, String)>(&line) else {
            continue;
        };
        if code != "o" {
            continue;
        }
        let mut wait = (t - last).max(0.0) / a.speed;
        if let Some(m) = max_idle {
            wait = wait.min(m);
        }
        last = t;
        if wait > 0.0 {
            out.flush()?;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        out.write_all(data.as_bytes())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
