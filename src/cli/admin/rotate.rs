//! `postern admin rotate-keys`: a new user CA, target CA or audit key, with an overlap in
//! which the old one still works (`credentials::rotate`). On a PostgreSQL store the result becomes
//! the replicas' shared set; every `serve` uses it from its next start.

use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};

use super::super::{open_store, shared_keys};
use crate::audit::{Actor, AuditEvent, Outcome, lineage};
use crate::config::Config;
use crate::credentials::{self, audit_key, rotate, secrets::MasterKey};
use crate::store::{AuditFilter, LeaseKey, Store};

#[derive(clap::Subcommand)]
pub enum Key {
    /// The user CA, which signs developers' certificates. A new CA signs from the next
    /// start of serve; certificates from the old one keep working until `--retire`.
    UserCa {
        /// Stop trusting the CA before the last rotation (once its certificates expired).
        #[arg(long)]
        retire: bool,
    },
    /// The target CA, which targets trust (TrustedUserCAKeys). In three steps: stage a
    /// new CA (print it for targets beside the current one), `--activate` it (it signs
    /// from the next start of serve), `--retire` the old one.
    TargetCa {
        /// Sign with the staged CA from the next start of serve.
        #[arg(long, conflicts_with = "retire")]
        activate: bool,
        /// Stop printing the CA before the last rotation for targets.
        #[arg(long)]
        retire: bool,
    },
    /// The SSH host key, which clients pin in known_hosts. In three steps: stage a new key
    /// (announced beside the current one from the next start of serve: OpenSSH clients
    /// with UpdateHostKeys learn it), `--activate` it (the key exchange uses it from the
    /// next start; the old one is still announced), `--retire` the old one.
    #[command(name = "host-key")]
    Host {
        /// Use the staged key for the key exchange from the next start of serve.
        #[arg(long, conflicts_with = "retire")]
        activate: bool,
        /// Stop announcing the key before the last rotation.
        #[arg(long)]
        retire: bool,
    },
    /// The TLS CA, which clients trust for the HTTPS API and PostgreSQL (`--ca-file`,
    /// `sslrootcert`). In three steps: stage a new CA (`admin tls-ca` and logins hand out
    /// both), `--activate` it (the server certificate is issued by it from the next start
    /// of serve), `--retire` the old one.
    TlsCa {
        /// Issue the server certificate from the staged CA from the next start of serve.
        #[arg(long, conflicts_with = "retire")]
        activate: bool,
        /// Take the CA before the last rotation out of the bundle clients are given.
        #[arg(long)]
        retire: bool,
    },
    /// The audit key, which signs checkpoints. The log records a handover signed by both
    /// keys, so `audit verify` with either key checks all of it; the new key signs from
    /// the next start of serve, and the old one until `--retire`.
    #[command(name = "audit-key")]
    Audit {
        /// Stop accepting checkpoints from the key before the last rotation (refused
        /// while a replica that started before the rotation still runs).
        #[arg(long)]
        retire: bool,
    },
}

fn restart_hint(config: &Config) -> &'static str {
    if config.store.url.is_empty() {
        "restart serve"
    } else {
        "restart every replica"
    }
}

/// Live replicas (a lease renewed within `REPLICA_LEASE`) whose lease names `fingerprint`
/// as `key`, or names none.
async fn live_using(
    store: &Store,
    key: LeaseKey,
    fingerprint: &str,
) -> anyhow::Result<Vec<String>> {
    let lease = i64::try_from(crate::server::REPLICA_LEASE.as_millis()).unwrap_or(i64::MAX);
    Ok(store
        .replicas_using(key, fingerprint, crate::audit::now_ms() - lease)
        .await?)
}

/// Refuses to retire the host key before the last rotation while a live replica still
/// offers it in key exchange (it has not restarted since `--activate`): clients that
/// follow announcements would drop it and then meet it there as a changed host key.
async fn host_key_unused(config: &Config, store: &Store) -> anyhow::Result<()> {
    let Some(old) = rotate::previous_host_key(&config.data_dir)? else {
        return Ok(());
    };
    let old = credentials::fingerprint(&old);
    let running = live_using(store, LeaseKey::Host, &old).await?;
    if !running.is_empty() {
        bail!(
            "{} still offer(s) the old host key {old} in key exchange: {}, then retire it",
            running.join(", "),
            restart_hint(config)
        );
    }
    Ok(())
}

/// The log's latest audit key handover: (from, to).
async fn last_handover(
    store: &Store,
) -> anyhow::Result<Option<(russh::keys::PublicKey, russh::keys::PublicKey)>> {
    let last = store
        .search_audit(&AuditFilter {
            kind: Some(lineage::ROTATED.into()),
            limit: Some(1),
            ..AuditFilter::default()
        })
        .await?;
    Ok(last.first().and_then(|e| {
        let keys = lineage::named_keys(&e.event.details);
        match keys.as_slice() {
            [from, to] => Some((from.clone(), to.clone())),
            _ => None,
        }
    }))
}

async fn audit_key(config: &Config, store: &Store, retire: bool) -> anyhow::Result<ExitCode> {
    let dir = &config.data_dir;
    let master = MasterKey::load(&dir.join("keys/master.key"))?;
    let fp = |k: &russh::keys::PublicKey| k.fingerprint(russh::keys::HashAlg::Sha256).to_string();
    if retire {
        let (old, current) = audit_key::previous(dir).map_err(|e| anyhow!(e))?;
        match last_handover(store).await? {
            Some((from, to))
                if from.key_data() == old.key_data() && to.key_data() == current.key_data() => {}
            _ => bail!(
                "the log's last audit key handover is not from {} to {}: this data dir's keys are not the ones the log names; check them against the store's (`postern admin user list` brings a replica's data dir to the store's keys)",
                fp(&old),
                fp(&current)
            ),
        }
        let running = live_using(store, LeaseKey::Audit, &fp(&old)).await?;
        if !running.is_empty() {
            bail!(
                "{} still sign(s) with the old audit key: {}, then retire it",
                running.join(", "),
                restart_hint(config)
            );
        }
        store
            .append_audit(&AuditEvent::new(
                lineage::RETIRED,
                &Actor::os(),
                Outcome::Success,
                lineage::retirement(&old),
            ))
            .await?;
        let changed = audit_key::forget_previous(dir).map_err(|e| anyhow!(e))?;
        shared_keys::publish(config, &master, store, &changed.written, &changed.removed)
            .await
            .context("the log retired the key, but the store's shared set still names it")?;
        println!(
            "the audit key {} is retired: a checkpoint it signs from now on fails `postern audit verify`",
            fp(&old)
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Staged first, then the handover into the log, then installed: a key no handover
    // names never signs, and a step that failed can be run again.
    let (current, next) = audit_key::stage(dir).map_err(|e| anyhow!(e))?;
    let from = match audit_key::handed_over_from(&current, &next, last_handover(store).await?)
        .map_err(|e| anyhow!(e))?
    {
        Some(from) => from,
        None => {
            store
                .append_audit(&AuditEvent::new(
                    lineage::ROTATED,
                    &Actor::os(),
                    Outcome::Success,
                    lineage::handover(&current, &next)?,
                ))
                .await?;
            store.audit_checkpoint().await?;
            current.public_key().clone()
        }
    };
    let changed = audit_key::install(dir, &from, &next).map_err(|e| anyhow!(e))?;
    shared_keys::publish(config, &master, store, &changed.written, &changed.removed)
        .await
        .context(
            "the files changed here, but the store's shared set did not: run the command again",
        )?;
    println!(
        "new audit key {}: it signs checkpoints once you {}; the old key signs until then. `postern audit verify` with either key checks the whole log.\nOnce every replica has restarted, run `postern admin rotate-keys audit-key --retire`.",
        credentials::fingerprint(&next),
        restart_hint(config)
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run(config: &Config, key: Key) -> anyhow::Result<ExitCode> {
    // The store first: on PostgreSQL it brings the data dir to the replicas' shared set.
    let store = open_store(config).await?;
    let dir = &config.data_dir;
    if matches!(key, Key::Host { retire: true, .. })
        && let Err(e) = host_key_unused(config, &store).await
    {
        store.close().await;
        return Err(e);
    }
    let (name, step, result) = match key {
        Key::UserCa { retire: false } => (
            "user_ca",
            "rotate",
            rotate::rotate_user_ca(dir).map(|(k, c)| (Some(k), c)),
        ),
        Key::UserCa { retire: true } => (
            "user_ca",
            "retire",
            rotate::retire_user_ca(dir).map(|c| (None, c)),
        ),
        Key::TargetCa {
            activate: false,
            retire: false,
        } => (
            "target_ca",
            "stage",
            rotate::stage_target_ca(dir).map(|(k, c)| (Some(k), c)),
        ),
        Key::TargetCa { activate: true, .. } => (
            "target_ca",
            "activate",
            rotate::activate_target_ca(dir).map(|(k, c)| (Some(k), c)),
        ),
        Key::TargetCa { retire: true, .. } => (
            "target_ca",
            "retire",
            rotate::retire_target_ca(dir).map(|c| (None, c)),
        ),
        Key::Host {
            activate: false,
            retire: false,
        } => (
            "host_key",
            "stage",
            rotate::stage_host_key(dir).map(|(k, c)| (Some(k), c)),
        ),
        Key::Host { activate: true, .. } => (
            "host_key",
            "activate",
            rotate::activate_host_key(dir).map(|(k, c)| (Some(k), c)),
        ),
        Key::Host { retire: true, .. } => (
            "host_key",
            "retire",
            rotate::retire_host_key(dir).map(|c| (None, c)),
        ),
        Key::TlsCa {
            activate: false,
            retire: false,
        } => (
            "tls_ca",
            "stage",
            rotate::stage_tls_ca(dir).map(|c| (None, c)),
        ),
        Key::TlsCa { activate: true, .. } => (
            "tls_ca",
            "activate",
            rotate::activate_tls_ca(dir).map(|c| (None, c)),
        ),
        Key::TlsCa { retire: true, .. } => (
            "tls_ca",
            "retire",
            rotate::retire_tls_ca(dir).map(|c| (None, c)),
        ),
        Key::Audit { retire } => {
            let done = audit_key(config, &store, retire).await;
            store.close().await;
            return done;
        }
    };
    let (new, changed) = match result {
        Ok(r) => r,
        Err(why) => {
            store.close().await;
            bail!("{why}");
        }
    };
    let master = MasterKey::load(&dir.join("keys/master.key"))?;
    shared_keys::publish(config, &master, &store, &changed.written, &changed.removed)
        .await
        .context("the files changed here, but the store's shared set did not")?;
    let fingerprint = match (name, step) {
        ("tls_ca", "stage") => tls_fingerprint(dir, rotate::TLS_CA_NEXT),
        ("tls_ca", "activate") => tls_fingerprint(dir, rotate::TLS_CA),
        _ => new.as_ref().map(credentials::fingerprint),
    };
    store
        .append_audit(&AuditEvent::new(
            "keys.rotated",
            &Actor::os(),
            Outcome::Success,
            serde_json::json!({ "key": name, "step": step, "fingerprint": fingerprint }),
        ))
        .await?;
    store.close().await;
    let restart = restart_hint(config);
    match (name, step) {
        ("user_ca", "rotate") => println!(
            "new user CA {}: it signs certificates once you {restart}.\nCertificates from the old CA are honoured until `postern admin rotate-keys user-ca --retire`; run it when they have expired (at most the longest certificate TTL after the restart).",
            fingerprint.unwrap_or_default()
        ),
        ("user_ca", _) => {
            println!("the user CA before the last rotation is no longer trusted once you {restart}")
        }
        ("target_ca", "stage") => {
            if let Some(k) = &new {
                println!("{}", credentials::public_line(k));
            }
            println!(
                "# The next target CA ({}). Add the line above to TrustedUserCAKeys on every target, beside the current one (`postern admin target-ca` prints both), then run `postern admin rotate-keys target-ca --activate`.",
                fingerprint.unwrap_or_default()
            );
        }
        ("target_ca", "activate") => println!(
            "the target CA {} signs session certificates once you {restart}. `postern admin target-ca` still prints the old one; when no replica signs with it any more, run `postern admin rotate-keys target-ca --retire` and remove it from targets.",
            fingerprint.unwrap_or_default()
        ),
        ("target_ca", _) => println!(
            "the target CA before the last rotation is no longer printed for targets; remove it from their TrustedUserCAKeys"
        ),
        ("host_key", "stage") => {
            if let Some(k) = &new {
                println!("{}", credentials::public_line(k));
            }
            println!(
                "# The next host key ({}). From the next start of serve it is announced beside the current one: OpenSSH clients with UpdateHostKeys (the default with the default known_hosts file) add it to known_hosts; others need the line above (`postern admin host-key` prints both). Then run `postern admin rotate-keys host-key --activate`.",
                fingerprint.unwrap_or_default()
            );
        }
        ("host_key", "activate") => println!(
            "the host key {} is used for the key exchange once you {restart}; clients that never learnt it see a changed host key. The old one is still announced; when every replica runs the new one, run `postern admin rotate-keys host-key --retire`.",
            fingerprint.unwrap_or_default()
        ),
        ("host_key", _) => println!(
            "the host key before the last rotation is no longer announced once you {restart}; OpenSSH clients with UpdateHostKeys remove it from known_hosts"
        ),
        ("tls_ca", "stage") => println!(
            "the next TLS CA ({}) is staged: `postern admin tls-ca` prints it with the current one, and `postern login` hands both to clients. Give every client that bundle (--ca-file, sslrootcert), then run `postern admin rotate-keys tls-ca --activate`.",
            fingerprint.unwrap_or_default()
        ),
        ("tls_ca", "activate") => println!(
            "the TLS CA {} issues the server certificate once you {restart}; clients that trust only the old CA are then refused. `postern admin tls-ca` still prints the old one; run `postern admin rotate-keys tls-ca --retire` when no client needs it.",
            fingerprint.unwrap_or_default()
        ),
        _ => println!(
            "the TLS CA before the last rotation is no longer in the bundle `postern admin tls-ca` prints and logins hand out"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The SHA-256 fingerprint of the PEM certificate in `rel`.
fn tls_fingerprint(dir: &std::path::Path, rel: &str) -> Option<String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::from_pem_file(dir.join(rel)).ok()?;
    Some(crate::client::https::fingerprint(&der))
}
