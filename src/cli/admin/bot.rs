//! `postern admin bot …`: machine identities for pipelines and agents. A bot is a user of
//! kind `bot` with roles like anyone, and a join token (shown once, stored as its
//! SHA-256) that `postern login --bot` trades for the same short-lived credentials a
//! person gets, capped at the bot's `--credential-ttl`.

use std::process::ExitCode;

use serde_json::json;

use super::{exists, mutate, not_found};
use crate::audit::{Actor, AuditEvent, Outcome, now_ms};
use crate::cli::{open_store, output};
use crate::config::Config;
use crate::credentials::token;
use crate::duration::Dur;
use crate::policy::names::check_user_name;
use crate::policy::{PolicyError, User, UserStatus};
use crate::store::BotToken;

/// The default cap on a bot's credentials.
pub const DEFAULT_TTL: Dur = Dur::from_secs(15 * 60);
/// The longest cap an admin may give a bot.
pub const MAX_TTL: Dur = Dur::from_secs(12 * 3600);

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add a bot with roles; prints its join token once.
    Add {
        /// The bot's name (it acts as `bot:NAME`).
        name: String,
        /// Roles to grant (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// The longest its credentials live (default 15m, at most 12h).
        #[arg(long, default_value = "15m")]
        credential_ttl: Dur,
    },
    /// Replace a bot's join token (the old one stops working); prints the new one once.
    Rotate {
        /// The bot.
        name: String,
        /// A new cap on its credentials (default: keep the current one).
        #[arg(long)]
        credential_ttl: Option<Dur>,
    },
    /// Take a bot's join token away and lock it: its live sessions end, logins and
    /// connections are refused. `rotate` and `admin user unlock` bring it back.
    Revoke {
        /// The bot.
        name: String,
    },
    /// List bots with their roles, status and credential cap.
    List {
        /// Print the bots as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn check_ttl(ttl: Dur) -> Result<(), PolicyError> {
    if ttl.as_secs() == 0 || ttl > MAX_TTL {
        return Err(PolicyError::Invalid(format!(
            "--credential-ttl must be between 1s and {MAX_TTL}, not {ttl}"
        )));
    }
    Ok(())
}

/// Makes a new join token for `name`, stores its hash and audits it; returns the token.
async fn issue(config: &Config, name: &str, ttl: Dur, kind: &str) -> anyhow::Result<String> {
    let (secret, hash) = token::new_token("pbt_")?;
    let store = open_store(config).await?;
    let stored = store
        .set_bot_token(
            name,
            &BotToken {
                hash,
                credential_ttl_secs: ttl.as_secs(),
                created_ms: now_ms(),
            },
        )
        .await?;
    if !stored {
        store.close().await;
        return Err(not_found("bot", name).into());
    }
    store
        .append_audit(
            &AuditEvent::new(
                kind,
                &Actor::os(),
                Outcome::Success,
                json!({ "credential_ttl": ttl.to_string() }),
            )
            .with_target(format!("user:{name}")),
        )
        .await?;
    store.close().await;
    Ok(secret)
}

fn print_token(name: &str, secret: &str) {
    println!("join token for bot {name} (shown once; store it as a pipeline secret):");
    println!("{secret}");
    println!("log in with: postern login --server URL --bot {name} --token-stdin <<< \"$TOKEN\"");
}

fn bot_of<'a>(p: &'a crate::policy::Policy, name: &str) -> Result<&'a User, PolicyError> {
    p.users
        .get(name)
        .filter(|u| u.bot)
        .ok_or_else(|| not_found("bot", name))
}

pub async fn run(config: &Config, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Add {
            name,
            roles,
            credential_ttl,
        } => {
            check_user_name(&name)?;
            check_ttl(credential_ttl)?;
            mutate(config, |p| {
                if p.users.contains_key(&name) {
                    return Err(exists("user", &name));
                }
                let mut u = User::new(&name);
                u.bot = true;
                for r in roles {
                    if !p.roles.contains_key(&r) {
                        return Err(not_found("role", &r));
                    }
                    u.roles.insert(r);
                }
                p.users.insert(name.clone(), u);
                Ok(())
            })
            .await?;
            let secret = issue(config, &name, credential_ttl, "bot.token_issued").await?;
            print_token(&name, &secret);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rotate {
            name,
            credential_ttl,
        } => {
            let p = super::load(config).await?;
            bot_of(&p, &name)?;
            let store = open_store(config).await?;
            let current = store.bot_token(&name).await?;
            store.close().await;
            let ttl = credential_ttl
                .or_else(|| current.map(|t| Dur::from_secs(t.credential_ttl_secs)))
                .unwrap_or(DEFAULT_TTL);
            check_ttl(ttl)?;
            let secret = issue(config, &name, ttl, "bot.token_rotated").await?;
            print_token(&name, &secret);
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke { name } => {
            let p = super::load(config).await?;
            bot_of(&p, &name)?;
            let store = open_store(config).await?;
            let had = store.remove_bot_token(&name).await?;
            store
                .append_audit(
                    &AuditEvent::new(
                        "bot.token_revoked",
                        &Actor::os(),
                        Outcome::Success,
                        json!({ "had_token": had }),
                    )
                    .with_target(format!("user:{name}")),
                )
                .await?;
            store.close().await;
            mutate(config, |p| {
                if let Some(u) = p.users.get_mut(&name) {
                    u.status = UserStatus::Locked;
                }
                Ok(())
            })
            .await?;
            println!("bot {name}: join token revoked and bot locked");
            Ok(ExitCode::SUCCESS)
        }
        Command::List { json } => {
            let p = super::load(config).await?;
            let store = open_store(config).await?;
            let mut rows = Vec::new();
            let mut out = Vec::new();
            for u in p.users.values().filter(|u| u.bot) {
                let t = store.bot_token(&u.name).await?;
                let ttl = t.as_ref().map(|t| Dur::from_secs(t.credential_ttl_secs));
                let roles: Vec<String> = u.roles.iter().cloned().collect();
                rows.push(vec![
                    u.name.clone(),
                    u.status.to_string(),
                    output::list(&roles),
                    ttl.map_or_else(|| "no token".into(), |d| d.to_string()),
                    t.as_ref()
                        .map_or_else(String::new, |t| crate::audit::format_ms(t.created_ms)),
                ]);
                out.push(json!({
                    "name": u.name, "status": u.status, "roles": roles,
                    "credential_ttl": ttl.map(|d| d.to_string()),
                    "token_created_ms": t.map(|t| t.created_ms),
                }));
            }
            store.close().await;
            if json {
                output::json(&out)?;
            } else if rows.is_empty() {
                println!("no bots");
            } else {
                output::table(
                    &["BOT", "STATUS", "ROLES", "CREDENTIAL TTL", "TOKEN SINCE"],
                    &rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
