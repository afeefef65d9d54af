//! `postern admin …`: imperative changes to users, roles and targets, each audited.

pub mod bot;
mod role;
mod rotate;
mod target;
mod user;

use std::process::ExitCode;

use super::open_store;
use crate::audit::Actor;
use crate::config::Config;
use crate::credentials::{self, KeyStore};
use crate::policy::{Policy, PolicyError};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Users: who may log in, with which keys and roles.
    #[command(subcommand)]
    User(user::Command),
    /// Bots: machine identities for pipelines and agents, with join tokens.
    #[command(subcommand)]
    Bot(bot::Command),
    /// Roles: allow and deny rules and TTLs.
    #[command(subcommand)]
    Role(role::Command),
    /// Targets: SSH hosts and PostgreSQL servers.
    #[command(subcommand)]
    Target(target::Command),
    /// User certificates: revoke a serial so it is refused before it expires.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Print the target CA public key and the sshd_config line targets need.
    TargetCa,
    /// Print the user CA public key (what signs developers' certificates).
    UserCa,
    /// Print postern's TLS CA certificate (PEM), for clients' --ca-file / sslrootcert.
    TlsCa,
    /// Print postern's SSH host public key (and, during a rotation, the other one
    /// announced), for clients' known_hosts.
    HostKey,
    /// Rotate a CA with an overlap in which the old one still works.
    #[command(subcommand)]
    RotateKeys(rotate::Key),
}

#[derive(clap::Subcommand)]
pub enum CertCommand {
    /// Refuse the certificate with this serial from now on.
    Revoke {
        /// The certificate's serial number, as `sessions show` prints it.
        serial: u64,
        /// Why it is revoked, kept with the revocation and in the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn run(config: &Config, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Cert(CertCommand::Revoke { serial, reason }) => {
            let store = open_store(config).await?;
            let actor = Actor::os();
            let fresh = store.revoke_serial(serial, &actor, &reason).await?;
            store
                .append_audit(&crate::audit::AuditEvent::new(
                    "credential.revoke",
                    &actor,
                    crate::audit::Outcome::Success,
                    serde_json::json!({ "type": "ssh_user_certificate", "serial": serial.to_string(), "reason": reason }),
                ))
                .await?;
            store.close().await;
            if fresh {
                println!("revoked certificate serial {serial}");
            } else {
                println!("certificate serial {serial} was already revoked");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::User(c) => user::run(config, c).await,
        Command::Bot(c) => bot::run(config, c).await,
        Command::Role(c) => role::run(config, c).await,
        Command::Target(c) => target::run(config, c).await,
        Command::TargetCa => {
            let keys = keys(config)?;
            println!("{}", credentials::public_line(&keys.target_ca));
            // While a rotation overlaps, targets trust both CAs.
            for k in [&keys.target_ca_next, &keys.target_ca_previous]
                .into_iter()
                .flatten()
            {
                println!("{}", k.to_openssh().unwrap_or_default());
            }
            let lines = if keys.target_ca_next.is_some() || keys.target_ca_previous.is_some() {
                "lines"
            } else {
                "line"
            };
            println!(
                "# On each SSH target, save the {lines} above as /etc/ssh/postern_target_ca.pub and add to sshd_config:"
            );
            println!("#   TrustedUserCAKeys /etc/ssh/postern_target_ca.pub");
            Ok(ExitCode::SUCCESS)
        }
        Command::HostKey => {
            let keys = keys(config)?;
            println!("{}", credentials::public_line(&keys.host_key));
            for k in &keys.host_key_announced {
                println!("{}", credentials::public_line(k));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::UserCa => {
            let keys = keys(config)?;
            println!("{}", credentials::public_line(&keys.user_ca));
            if let Some(p) = &keys.user_ca_previous {
                println!("{}", p.to_openssh().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::RotateKeys(key) => rotate::run(config, key).await,
        Command::TlsCa => {
            let keys = keys(config)?;
            print!("{}", keys.tls.trusted_pem()?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(super) fn keys(config: &Config) -> anyhow::Result<KeyStore> {
    Ok(KeyStore::load_or_create(&config.data_dir, &config.tls.hostnames)?.keys)
}

/// Applies one edit to the policy in a transaction and prints what changed.
async fn mutate<F>(config: &Config, edit: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(&mut Policy) -> Result<(), PolicyError>,
{
    let store = open_store(config).await?;
    let changes = store
        .update_policy(&Actor::os(), false, |current| {
            let mut p = current.clone();
            edit(&mut p)?;
            Ok(p)
        })
        .await?;
    store.close().await;
    if changes.is_empty() {
        println!("nothing to change");
    }
    for c in &changes {
        println!("{c}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn load(config: &Config) -> anyhow::Result<Policy> {
    let store = open_store(config).await?;
    let p = store.load_policy().await?;
    store.close().await;
    Ok(p)
}

fn not_found(what: &'static str, name: &str) -> PolicyError {
    PolicyError::NotFound {
        what,
        name: name.to_string(),
    }
}

fn exists(what: &'static str, name: &str) -> PolicyError {
    PolicyError::Exists {
        what,
        name: name.to_string(),
    }
}
