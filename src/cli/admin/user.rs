//! `postern admin user …`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{exists, load, mutate, not_found};
use crate::cli::output;
use crate::config::Config;
use crate::policy::names::{check_user_name, parse_user_key};
use crate::policy::{Policy, PolicyError, User, UserStatus};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add a user.
    Add {
        /// The new user's name.
        name: String,
        /// Roles to grant (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// List users with their status, roles and number of keys.
    List {
        /// Print the users as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One user: status, roles and keys (by fingerprint).
    Show {
        /// The user to show.
        name: String,
        /// Print the user as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Refuse the user everything until unlocked.
    Lock {
        /// The user to lock.
        name: String,
    },
    /// Make a locked user active again.
    Unlock {
        /// The user to unlock.
        name: String,
    },
    /// Remove a user and their keys.
    Rm {
        /// The user to remove.
        name: String,
    },
    /// Register SSH public keys (one per line) from FILE, or from standard input with `-`.
    AddKey {
        /// The user the keys belong to.
        name: String,
        /// A file of OpenSSH public keys (blank lines and `#` comments skipped), or `-`.
        file: PathBuf,
    },
    /// Remove a key by its SHA256 fingerprint.
    RmKey {
        /// The user the key belongs to.
        name: String,
        /// The key's fingerprint, as `user show` prints it (SHA256:…).
        fingerprint: String,
    },
    /// Set the password `postern login` checks (Argon2id), read from standard input.
    SetPassword {
        /// The user whose password to set.
        name: String,
        /// Read the password from standard input (one line), for scripts.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Enrol the user in one-time codes (TOTP): prints the otpauth:// URI for their
    /// authenticator app. Enrolling again replaces the secret.
    Totp {
        /// The user to enrol (or, with --remove, unenrol).
        name: String,
        /// Remove the enrolment instead: the password alone logs in again.
        #[arg(long)]
        remove: bool,
    },
    /// Grant a role to a user.
    Grant {
        /// The user to grant the role to.
        name: String,
        /// The role to grant; it must exist.
        role: String,
    },
    /// Take a role away from a user.
    Revoke {
        /// The user to take the role from.
        name: String,
        /// The role to take away; the user must hold it.
        role: String,
    },
}

fn user_mut<'a>(p: &'a mut Policy, name: &str) -> Result<&'a mut User, PolicyError> {
    p.users.get_mut(name).ok_or_else(|| not_found("user", name))
}

fn role_exists(p: &Policy, role: &str) -> Result<(), PolicyError> {
    if p.roles.contains_key(role) {
        Ok(())
    } else {
        Err(not_found("role", role))
    }
}

fn read_keys(file: &PathBuf) -> anyhow::Result<Vec<crate::policy::UserKey>> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read keys from standard input")?;
        s
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read key file {}", file.display()))?
    };
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(parse_user_key)
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        anyhow::bail!("no public key found in {}", file.display());
    }
    Ok(keys)
}

pub async fn run(config: &Config, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Add { name, roles } => {
            check_user_name(&name)?;
            mutate(config, |p| {
                if p.users.contains_key(&name) {
                    return Err(exists("user", &name));
                }
                let mut u = User::new(&name);
                for r in roles {
                    role_exists(p, &r)?;
                    u.roles.insert(r);
                }
                p.users.insert(name, u);
                Ok(())
            })
            .await
        }
        Command::List { json } => {
            let p = load(config).await?;
            if json {
                output::json(&p.users.values().collect::<Vec<_>>())?;
            } else {
                let rows: Vec<Vec<String>> = p
                    .users
                    .values()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.status.to_string(),
                            output::list(&u.roles.iter().cloned().collect::<Vec<_>>()),
                            u.keys.len().to_string(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "STATUS", "ROLES", "KEYS"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { name, json } => {
            let p = load(config).await?;
            let u = p.users.get(&name).ok_or_else(|| not_found("user", &name))?;
            if json {
                output::json(u)?;
            } else {
                println!("user    {}", u.name);
                println!("status  {}", u.status);
                println!(
                    "roles   {}",
                    output::list(&u.roles.iter().cloned().collect::<Vec<_>>())
                );
                println!("keys    {}", u.keys.len());
                for k in &u.keys {
                    println!("  {} {}", k.fingerprint, output::cell(&k.comment));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lock { name } => set_status(config, name, UserStatus::Locked).await,
        Command::Unlock { name } => set_status(config, name, UserStatus::Active).await,
        Command::Rm { name } => {
            mutate(config, |p| {
                p.users
                    .remove(&name)
                    .map(|_| ())
                    .ok_or_else(|| not_found("user", &name))
            })
            .await
        }
        Command::AddKey { name, file } => {
            let keys = read_keys(&file)?;
            mutate(config, |p| {
                let u = user_mut(p, &name)?;
                for k in keys {
                    if !u.keys.iter().any(|x| x.fingerprint == k.fingerprint) {
                        u.keys.push(k);
                    }
                }
                Ok(())
            })
            .await
        }
        Command::RmKey { name, fingerprint } => {
            mutate(config, |p| {
                let u = user_mut(p, &name)?;
                let before = u.keys.len();
                u.keys.retain(|k| k.fingerprint != fingerprint);
                if u.keys.len() == before {
                    return Err(not_found("key", &fingerprint));
                }
                Ok(())
            })
            .await
        }
        Command::SetPassword {
            name,
            password_stdin: _,
        } => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let password = line.trim_end_matches(['\n', '\r']);
            if load(config).await?.users.get(&name).is_some_and(|u| u.bot) {
                anyhow::bail!(
                    "`{name}` is a bot: bots log in with their join token (`postern admin bot rotate {name}`), never a password"
                );
            }
            let hash = crate::credentials::password::hash(password)?;
            let store = crate::cli::open_store(config).await?;
            if !store.set_password_hash(&name, &hash).await? {
                store.close().await;
                return Err(not_found("user", &name).into());
            }
            store
                .append_audit(
                    &crate::audit::AuditEvent::new(
                        "user.password_set",
                        &crate::audit::Actor::os(),
                        crate::audit::Outcome::Success,
                        serde_json::json!({ "algorithm": "argon2id" }),
                    )
                    .with_target(format!("user:{name}")),
                )
                .await?;
            store.close().await;
            println!("password set for user {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Totp { name, remove } => totp(config, &name, remove).await,
        Command::Grant { name, role } => {
            mutate(config, |p| {
                role_exists(p, &role)?;
                user_mut(p, &name)?.roles.insert(role);
                Ok(())
            })
            .await
        }
        Command::Revoke { name, role } => {
            mutate(config, |p| {
                if !user_mut(p, &name)?.roles.remove(&role) {
                    return Err(PolicyError::Invalid(format!(
                        "user `{name}` does not hold role `{role}`"
                    )));
                }
                Ok(())
            })
            .await
        }
    }
}

async fn set_status(config: &Config, name: String, status: UserStatus) -> anyhow::Result<ExitCode> {
    mutate(config, |p| {
        user_mut(p, &name)?.status = status;
        Ok(())
    })
    .await
}

async fn totp(config: &Config, name: &str, remove: bool) -> anyhow::Result<ExitCode> {
    use crate::audit::{Actor, AuditEvent, Outcome};
    use crate::credentials::{KeyStore, totp};
    let keys = KeyStore::load_or_create(&config.data_dir, &config.tls.hostnames)?.keys;
    let store = crate::cli::open_store(config).await?;
    let event = |kind: &str| {
        AuditEvent::new(kind, &Actor::os(), Outcome::Success, serde_json::json!({}))
            .with_target(format!("user:{name}"))
    };
    if remove {
        let had = store.remove_totp(name).await?;
        if had {
            store.append_audit(&event("user.totp_removed")).await?;
        }
        store.close().await;
        println!(
            "{}",
            if had {
                format!("one-time codes removed for user {name}")
            } else {
                format!("user {name} was not enrolled in one-time codes")
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let secret = totp::new_secret()?;
    let sealed = keys.master_key.seal("totp", &secret)?;
    if !store.set_totp(name, &sealed).await? {
        store.close().await;
        return Err(not_found("user", name).into());
    }
    store.append_audit(&event("user.totp_enrolled")).await?;
    store.close().await;
    println!("one-time codes enrolled for user {name}; add this to their authenticator app:");
    println!();
    println!("{}", totp::uri("postern", name, &secret));
    println!();
    println!("secret (base32): {}", totp::base32(&secret));
    println!("postern login now asks for the current code (--totp CODE in scripts).");
    Ok(ExitCode::SUCCESS)
}
