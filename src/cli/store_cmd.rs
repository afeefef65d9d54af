//! `postern store migrate`: the embedded store (and its recordings) copied into a
//! PostgreSQL database, then verified there.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::store::Store;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Copy the embedded store into an empty PostgreSQL database and verify it there.
    ///
    /// Stop every `serve` first. Users, roles, targets, credentials, requests, reviews,
    /// sessions and the audit chain with its checkpoints are copied in one transaction;
    /// the data dir's keys are put in the new store (sealed) for replicas to share; the
    /// recordings are copied to `[recordings] dir` when it is another directory. The
    /// chain is then verified on the destination. Refuses a destination that has rows.
    Migrate {
        /// The source: `sqlite:DIR` or a data dir (default: --data-dir).
        #[arg(long, value_name = "sqlite:DIR")]
        from: Option<String>,
        /// The destination: postgres://USER:PASSWORD@HOST:PORT/DATABASE (or
        /// POSTERN_STORE_URL, which keeps the password off the command line).
        #[arg(
            long,
            value_name = "URL",
            env = "POSTERN_STORE_URL",
            hide_env_values = true
        )]
        to: String,
    },
}

pub async fn run(config: &Config, cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Migrate { from, to } = cmd;
    let dir = match from.as_deref() {
        None => config.data_dir.clone(),
        Some(f) => PathBuf::from(f.strip_prefix("sqlite:").unwrap_or(f)),
    };
    if !to.starts_with("postgres://") && !to.starts_with("postgresql://") {
        bail!(
            "--to must be a postgres:// URL; the source is the embedded store in {}",
            dir.display()
        );
    }
    if !crate::store::sqlite_path(&dir).exists() {
        bail!(
            "no postern store at {}; give --from sqlite:DIR of a postern data dir",
            crate::store::sqlite_path(&dir).display()
        );
    }
    let shown = crate::store::redacted(&to);
    let source = Store::open_sqlite(&dir, None)
        .await
        .with_context(|| format!("data dir {}", dir.display()))?;
    let dest = Store::connect(&dir, &to).await?;
    let copied = source.copy_into(&dest).await?;
    source.close().await;
    let mut total = 0;
    for (table, n) in &copied {
        if *n > 0 {
            println!("{table:>22}  {n}");
        }
        total += n;
    }
    println!("copied {total} rows from {} to {shown}", dir.display());
    // The keys, as the first replica on the new store would share them.
    let mut on_dest = config.clone();
    on_dest.data_dir = dir.clone();
    let keys = crate::credentials::KeyStore::load_or_create(&dir, &config.tls.hostnames)?.keys;
    super::shared_keys::share(&on_dest, &keys.master_key, &dest).await?;
    let dest = dest.start(None);
    let store = crate::recording::RecordingStore::from_config(config)?;
    let recordings = match store.local_dir() {
        Some(to) => copy_recordings(&dir.join("recordings"), to)?,
        None => upload_recordings(&dir.join("recordings"), &store).await?,
    };
    if recordings > 0 {
        println!(
            "copied {recordings} recording files to {}",
            store.describe()
        );
    }
    let key = super::verify::load_pubkey(&on_dest, &None)?;
    let mut v = crate::audit::verify::Verifier::new(key);
    v.at(crate::audit::now_ms());
    let walked = dest.verify_chain(&mut v, |_| {}).await;
    dest.close().await;
    let files = v.recording_files();
    let local = store.open_all(files.iter().map(String::as_str)).await?;
    let result = walked.and_then(|()| v.finish(Some(local.root()), Some(crate::audit::now_ms())));
    match result {
        Ok(r) => {
            println!(
                "verified on {shown}: {} events, {} checkpoints, {} recordings",
                r.events, r.checkpoints, r.recordings
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(b) => {
            println!(
                "FAILED verifying on {shown} at seq {}: {}",
                b.seq,
                crate::printable::cell(&b.what)
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// The files under `from`, relative to it.
fn files_under(from: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if !from.is_dir() {
        return Ok(files);
    }
    let mut stack = vec![from.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let kind = e.file_type()?;
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_file()
                && let Ok(rel) = e.path().strip_prefix(from)
            {
                files.push(rel.to_path_buf());
            }
        }
    }
    Ok(files)
}

/// Copies the recordings tree `from` into `to` (files that are not there yet), unless they
/// are the same directory; returns how many files were copied.
fn copy_recordings(from: &Path, to: &Path) -> anyhow::Result<u64> {
    if same_dir(from, to) {
        return Ok(0);
    }
    let mut n = 0;
    for rel in files_under(from)? {
        let target = to.join(&rel);
        if target.exists() {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        }
        let from = from.join(&rel);
        let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        crate::credentials::write_private(&target, &bytes)?;
        n += 1;
    }
    Ok(n)
}

/// Uploads every recording under `from` to a bucket store; returns how many.
async fn upload_recordings(
    from: &Path,
    to: &crate::recording::RecordingStore,
) -> anyhow::Result<u64> {
    let mut n = 0;
    for rel in files_under(from)? {
        let path = from.join(&rel);
        let stored = Path::new("recordings").join(&rel).display().to_string();
        let bytes = tokio::fs::read(&path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        to.put_whole(&stored, &bytes)
            .await
            .with_context(|| format!("uploading {}", path.display()))?;
        n += 1;
    }
    Ok(n)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
