//! `postern admin target …`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use super::{exists, load, mutate, not_found};
use crate::cli::output;
use crate::config::Config;
use crate::policy::names::{check_address, check_target_name, parse_public_key};
use crate::policy::selector::valid_label_part;
use crate::policy::{PolicyError, Target, TargetKind, TlsMode};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add an SSH target (--ssh HOST:PORT --host-key KEY) or a PostgreSQL target (--postgres HOST:PORT).
    Add {
        /// The new target's name.
        name: String,
        /// The address of an SSH target.
        #[arg(
            long,
            value_name = "HOST:PORT",
            conflicts_with = "postgres",
            required_unless_present = "postgres"
        )]
        ssh: Option<String>,
        /// The address of a PostgreSQL target.
        #[arg(long, value_name = "HOST:PORT")]
        postgres: Option<String>,
        /// The SSH target's host public key, e.g. "ssh-ed25519 AAAA…" (pinned; never
        /// trust-on-first-use): `ssh-keyscan -t ed25519 -p PORT HOST` prints it.
        #[arg(long, requires = "ssh", conflicts_with = "scan_host_key")]
        host_key: Option<String>,
        /// Fetch the SSH target's host key now, show its fingerprint and pin it once you
        /// confirm (compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on
        /// the host).
        #[arg(long, requires = "ssh")]
        scan_host_key: bool,
        /// With --scan-host-key: pin without asking (the fingerprint was checked another way).
        #[arg(long, requires = "scan_host_key")]
        yes: bool,
        /// TLS towards a PostgreSQL target: verify-full (the default: the target's
        /// certificate is checked against postgres.target_ca_file), require (encrypted,
        /// not verified: postern then logs in only with SCRAM channel binding), or disable
        /// (a trusted network only). Cleartext and MD5 passwords go only to verify-full.
        #[arg(long, requires = "postgres", value_parser = parse_tls_mode)]
        tls_mode: Option<TlsMode>,
        /// A label (repeatable): --label env=prod --label team=vision.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Change a target in place: its address, pinned host key, TLS mode or labels.
    Set {
        /// The target to change.
        name: String,
        /// A new address for an SSH target.
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "postgres")]
        ssh: Option<String>,
        /// A new address for a PostgreSQL target.
        #[arg(long, value_name = "HOST:PORT")]
        postgres: Option<String>,
        /// A new pinned host key for an SSH target, e.g. "ssh-ed25519 AAAA…" (a rebuilt
        /// host; get it with `ssh-keyscan -t ed25519 -p PORT HOST`).
        #[arg(long, conflicts_with = "scan_host_key")]
        host_key: Option<String>,
        /// Fetch the SSH target's host key now, show its fingerprint and pin it once you
        /// confirm.
        #[arg(long)]
        scan_host_key: bool,
        /// With --scan-host-key: pin without asking (the fingerprint was checked another way).
        #[arg(long, requires = "scan_host_key")]
        yes: bool,
        /// TLS towards a PostgreSQL target: verify-full, require or disable.
        #[arg(long, value_parser = parse_tls_mode)]
        tls_mode: Option<TlsMode>,
        /// Add or change a label (repeatable): --label env=prod.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Remove a label by its key (repeatable).
        #[arg(long = "unlabel", value_name = "KEY")]
        unlabels: Vec<String>,
    },
    /// List targets with their kind, address and labels.
    List {
        /// Print the targets as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One target: kind, address, labels, pinned host key and TLS mode.
    Show {
        /// The target to show.
        name: String,
        /// Print the target as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a target.
    Rm {
        /// The target to remove.
        name: String,
    },
    /// Store the password postern logs in to a PostgreSQL target with, for one database
    /// user (sealed with the master key; developers never see it).
    SetCredential {
        /// The PostgreSQL target.
        name: String,
        /// The database user the password is for.
        #[arg(long, value_name = "USER")]
        db_user: String,
        /// Read the password from standard input (one line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

fn parse_tls_mode(s: &str) -> Result<TlsMode, String> {
    match s {
        "disable" => Ok(TlsMode::Disable),
        "require" => Ok(TlsMode::Require),
        "verify-full" => Ok(TlsMode::VerifyFull),
        _ => Err("expected disable, require or verify-full".into()),
    }
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, PolicyError> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if valid_label_part(k) && valid_label_part(v) => Ok((k.to_string(), v.to_string())),
            _ => Err(PolicyError::Invalid(format!(
                "invalid label `{l}`: write KEY=VALUE with 1-63 letters, digits, - _ . / on each side"
            ))),
        })
        .collect()
}

pub async fn run(config: &Config, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Add {
            name,
            ssh,
            postgres,
            host_key,
            scan_host_key,
            yes,
            tls_mode,
            labels,
        } => {
            check_target_name(&name)?;
            let (kind, address) = match (ssh, postgres) {
                (Some(a), _) => (TargetKind::Ssh, a),
                (None, Some(a)) => (TargetKind::Postgres, a),
                (None, None) => anyhow::bail!("give --ssh HOST:PORT or --postgres HOST:PORT"),
            };
            check_address(&address)?;
            let labels = parse_labels(&labels)?;
            let host_key = match (host_key, scan_host_key) {
                (Some(k), _) => Some(parse_public_key(&k)?.public_key),
                (None, true) => Some(scanned(config, &name, &address, yes).await?),
                (None, false) if kind == TargetKind::Ssh => anyhow::bail!(
                    "an SSH target needs its host key pinned: give --host-key KEY (`ssh-keyscan -t ed25519 -p PORT HOST` prints it; check its fingerprint on the host) or --scan-host-key to fetch it and confirm its fingerprint"
                ),
                (None, false) => None,
            };
            let target = Target {
                name: name.clone(),
                kind,
                address,
                labels,
                host_key,
                tls_mode: match kind {
                    TargetKind::Postgres => Some(tls_mode.unwrap_or(TlsMode::VerifyFull)),
                    TargetKind::Ssh => None,
                },
            };
            mutate(config, |p| {
                if p.targets.contains_key(&name) {
                    return Err(exists("target", &name));
                }
                p.targets.insert(name, target);
                Ok(())
            })
            .await
        }
        Command::Set {
            name,
            ssh,
            postgres,
            host_key,
            scan_host_key,
            yes,
            tls_mode,
            labels,
            unlabels,
        } => {
            let address = match (ssh, postgres) {
                (Some(a), _) => Some((TargetKind::Ssh, a)),
                (None, Some(a)) => Some((TargetKind::Postgres, a)),
                (None, None) => None,
            };
            if let Some((_, a)) = &address {
                check_address(a)?;
            }
            let host_key = match (host_key, scan_host_key) {
                (Some(k), _) => Some(parse_public_key(&k)?.public_key),
                (None, true) => {
                    // The key of the address the target will have.
                    let current = load(config).await?;
                    let t = current
                        .targets
                        .get(&name)
                        .ok_or_else(|| not_found("target", &name))?;
                    let at = address.as_ref().map_or(&t.address, |(_, a)| a);
                    Some(scanned(config, &name, at, yes).await?)
                }
                (None, false) => None,
            };
            let change = Change {
                address,
                host_key,
                tls_mode,
                labels: parse_labels(&labels)?,
                unlabels,
            };
            if change.is_empty() {
                anyhow::bail!(
                    "nothing to change: give --ssh/--postgres, --host-key, --tls-mode, --label or --unlabel"
                );
            }
            mutate(config, |p| {
                let t = p
                    .targets
                    .get_mut(&name)
                    .ok_or_else(|| not_found("target", &name))?;
                change.apply(t)
            })
            .await
        }
        Command::List { json } => {
            let p = load(config).await?;
            if json {
                output::json(&p.targets.values().collect::<Vec<_>>())?;
            } else {
                let rows: Vec<Vec<String>> = p
                    .targets
                    .values()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.kind.to_string(),
                            t.address.clone(),
                            output::list(
                                &t.labels
                                    .iter()
                                    .map(|(k, v)| format!("{k}={v}"))
                                    .collect::<Vec<_>>(),
                            ),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "KIND", "ADDRESS", "LABELS"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { name, json } => {
            let p = load(config).await?;
            let t = p
                .targets
                .get(&name)
                .ok_or_else(|| not_found("target", &name))?;
            if json {
                output::json(t)?;
            } else {
                println!("target    {}", t.name);
                println!("kind      {}", t.kind);
                println!("address   {}", t.address);
                println!(
                    "labels    {}",
                    output::list(
                        &t.labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                    )
                );
                if let Some(k) = &t.host_key {
                    println!("host_key  {k}");
                }
                if let Some(m) = t.tls_mode {
                    println!(
                        "tls_mode  {}",
                        serde_json::to_value(m)
                            .map(|v| v.as_str().unwrap_or("").to_string())
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::SetCredential {
            name,
            db_user,
            password_stdin: _,
        } => set_credential(config, &name, &db_user).await,
        Command::Rm { name } => {
            mutate(config, |p| {
                p.targets
                    .remove(&name)
                    .map(|_| ())
                    .ok_or_else(|| not_found("target", &name))
            })
            .await
        }
    }
}

/// The host key at `address`, once the admin agreed to its fingerprint (or said --yes);
/// returned as it is pinned ("ALGORITHM BASE64").
async fn scanned(config: &Config, name: &str, address: &str, yes: bool) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let key = crate::ssh::scan::host_key(address, config.ssh.connect_timeout.0)
        .await
        .map_err(|e| anyhow::anyhow!("cannot fetch the host key of `{name}`: {e}"))?;
    let fingerprint = key.fingerprint(russh::keys::HashAlg::Sha256);
    let openssh = key
        .to_openssh()
        .map_err(|e| anyhow::anyhow!("cannot encode the host key: {e}"))?;
    let line: String = openssh
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!(
        "{address} presents a {} host key\n  {fingerprint}",
        key.algorithm().as_str()
    );
    if !yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "not pinned: check the fingerprint above on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then run again with --yes"
            );
        }
        eprint!("Is this the host key of `{name}`? Pin it [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            anyhow::bail!("not pinned: nothing changed");
        }
    }
    parse_public_key(&line)?;
    Ok(line)
}

async fn set_credential(config: &Config, name: &str, db_user: &str) -> anyhow::Result<ExitCode> {
    use crate::audit::{Actor, AuditEvent, Outcome};
    let policy = load(config).await?;
    let target = policy
        .targets
        .get(name)
        .ok_or_else(|| not_found("target", name))?;
    if target.kind != TargetKind::Postgres {
        anyhow::bail!(
            "target `{name}` is an {} target; credentials are for postgres targets",
            target.kind
        );
    }
    crate::policy::names::check_user_name(db_user)
        .map_err(|_| anyhow::anyhow!("`{db_user}` is not a usable database user name"))?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    let keys = super::keys(config)?;
    let sealed = keys.master_key.seal(
        &crate::pg::credential_purpose(name, db_user),
        password.as_bytes(),
    )?;
    let store = crate::cli::open_store(config).await?;
    store.set_target_credential(name, db_user, &sealed).await?;
    store
        .append_audit(
            &AuditEvent::new(
                "target.credential_set",
                &Actor::os(),
                Outcome::Success,
                serde_json::json!({ "db_user": db_user }),
            )
            .with_target(format!("target:{name}")),
        )
        .await?;
    store.close().await;
    println!("credential for database user {db_user} on {name} stored (sealed)");
    Ok(ExitCode::SUCCESS)
}

/// What `target set` changes; the kind of a target stays what it is.
struct Change {
    address: Option<(TargetKind, String)>,
    host_key: Option<String>,
    tls_mode: Option<TlsMode>,
    labels: BTreeMap<String, String>,
    unlabels: Vec<String>,
}

impl Change {
    fn is_empty(&self) -> bool {
        self.address.is_none()
            && self.host_key.is_none()
            && self.tls_mode.is_none()
            && self.labels.is_empty()
            && self.unlabels.is_empty()
    }

    fn apply(&self, t: &mut Target) -> Result<(), PolicyError> {
        let (article, kind) = match t.kind {
            TargetKind::Ssh => ("an", "SSH"),
            TargetKind::Postgres => ("a", "PostgreSQL"),
        };
        let wrong = |option: &str, applies_to: &str| {
            PolicyError::Invalid(format!(
                "target `{}` is {article} {kind} target; {option} applies to {applies_to} targets (to change its kind, remove it and add it again)",
                t.name
            ))
        };
        if let Some((kind, address)) = &self.address {
            if *kind != t.kind {
                return Err(match kind {
                    TargetKind::Ssh => wrong("--ssh", "SSH"),
                    TargetKind::Postgres => wrong("--postgres", "PostgreSQL"),
                });
            }
            t.address = address.clone();
        }
        if let Some(k) = &self.host_key {
            if t.kind != TargetKind::Ssh {
                return Err(wrong("--host-key", "SSH"));
            }
            t.host_key = Some(k.clone());
        }
        if let Some(m) = self.tls_mode {
            if t.kind != TargetKind::Postgres {
                return Err(wrong("--tls-mode", "PostgreSQL"));
            }
            t.tls_mode = Some(m);
        }
        for k in &self.unlabels {
            if t.labels.remove(k).is_none() {
                return Err(PolicyError::Invalid(format!(
                    "target `{}` has no label `{k}`",
                    t.name
                )));
            }
        }
        for (k, v) in &self.labels {
            t.labels.insert(k.clone(), v.clone());
        }
        Ok(())
    }
}
