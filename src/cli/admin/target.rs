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
        name: String,
        #[arg(
            long,
            value_name = "HOST:PORT",
            conflicts_with = "postgres",
            required_unless_present = "postgres"
        )]
        ssh: Option<String>,
        #[arg(long, value_name = "HOST:PORT")]
        postgres: Option<String>,
        /// The SSH target's host public key, e.g. "ssh-ed25519 AAAA…" (pinned; never trust-on-first-use).
        #[arg(long, requires = "ssh")]
        host_key: Option<String>,
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
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    Rm {
        name: String,
    },
    /// Store the password postern logs in to a PostgreSQL target with, for one database
    /// user (sealed with the master key; developers never see it).
    SetCredential {
        name: String,
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
            let host_key = host_key
                .map(|k| parse_public_key(&k).map(|k| k.public_key))
                .transpose()?;
            let target = Target {
                name: name.clone(),
                kind,
                address,
                labels: parse_labels(&labels)?,
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
