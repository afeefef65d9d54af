//! `postern doctor TARGET`: checks a target the way a session would reach it, and says
//! what to fix. SSH: the address answers, its host key is the pinned one, and a login with
//! a certificate from postern's target CA is accepted (the target trusts the CA and has
//! the login). PostgreSQL: the address answers, postern holds a credential for each
//! database user, and logging in with it (TLS per the target's `tls_mode`) works.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::admin::{keys, load};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::config::Config;
use crate::policy::{Policy, Target, TargetKind};

#[derive(clap::Args)]
pub struct Args {
    /// The target to check.
    target: String,
    /// The login to try on an SSH target [default: every login the roles allow there].
    #[arg(long)]
    login: Option<String>,
    /// The database user to try on a PostgreSQL target [default: every one the roles
    /// allow there].
    #[arg(long)]
    db_user: Option<String>,
    /// The database to log in to [default: the first the roles allow there, or postgres].
    #[arg(long)]
    database: Option<String>,
}

/// One check's outcome, as printed: `ok` or `FAIL`, what, and for a failure what to do.
struct Check {
    ok: bool,
    what: String,
    fix: String,
}

impl Check {
    fn ok(what: String) -> Check {
        Check {
            ok: true,
            what,
            fix: String::new(),
        }
    }

    fn fail(what: String, fix: String) -> Check {
        Check {
            ok: false,
            what,
            fix,
        }
    }
}

/// What the allow rules covering `target` list under `field` (logins, databases, db users).
fn allowed(
    policy: &Policy,
    target: &Target,
    field: fn(&crate::policy::Rule) -> &Vec<String>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for role in policy.roles.values() {
        for rule in role
            .allow
            .iter()
            .filter(|r| r.targets.matches(&target.labels))
        {
            for v in field(rule) {
                if v != "*" && !out.contains(v) {
                    out.push(v.clone());
                }
            }
        }
    }
    out
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let policy = load(config).await?;
    let target = policy
        .targets
        .get(&args.target)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "target `{}` not found (postern admin target list)",
                args.target
            )
        })?
        .clone();
    let limit = config.ssh.connect_timeout.0;
    let mut checks = vec![reachable(&target, limit).await];
    if checks[0].ok {
        match target.kind {
            TargetKind::Ssh => {
                let logins = match &args.login {
                    Some(l) => vec![l.clone()],
                    None => allowed(&policy, &target, |r| &r.logins),
                };
                ssh_checks(config, &target, &logins, limit, &mut checks).await?;
            }
            TargetKind::Postgres => {
                let users = match &args.db_user {
                    Some(u) => vec![u.clone()],
                    None => allowed(&policy, &target, |r| &r.db_users),
                };
                let database = args
                    .database
                    .clone()
                    .or_else(|| {
                        allowed(&policy, &target, |r| &r.databases)
                            .into_iter()
                            .next()
                    })
                    .unwrap_or_else(|| "postgres".into());
                pg_checks(config, &target, &users, &database, &mut checks).await?;
            }
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    for c in &checks {
        let what = crate::printable::safe(&c.what);
        if c.ok {
            println!("ok    {what}");
        } else {
            println!(
                "FAIL  {what}\n      fix: {}",
                crate::printable::safe(&c.fix)
            );
        }
    }
    let store = super::open_store(config).await?;
    let summary: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| json!({ "ok": c.ok, "check": c.what }))
        .collect();
    store
        .append_audit(
            &AuditEvent::new(
                "target.checked",
                &Actor::os(),
                if failed == 0 {
                    Outcome::Success
                } else {
                    Outcome::Failure
                },
                json!({ "checks": summary }),
            )
            .with_target(format!("target:{}", target.name)),
        )
        .await?;
    store.close().await;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn reachable(target: &Target, limit: Duration) -> Check {
    let what = format!("{} answers at {}", target.name, target.address);
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(&target.address)).await {
        Ok(Ok(_)) => Check::ok(what),
        Ok(Err(e)) => Check::fail(
            format!("{what}: {e}"),
            format!(
                "check the address (postern admin target set {} --{} HOST:PORT) and that nothing between postern and the target blocks it",
                target.name, target.kind
            ),
        ),
        Err(_) => Check::fail(
            format!("{what}: no answer within {}s", limit.as_secs()),
            "check the address, the host, and firewalls between postern and the target".into(),
        ),
    }
}

async fn ssh_checks(
    config: &Config,
    target: &Target,
    logins: &[String],
    limit: Duration,
    checks: &mut Vec<Check>,
) -> anyhow::Result<()> {
    let scan = format!("postern admin target set {} --scan-host-key", target.name);
    let Some(pinned) = target.host_key.as_deref() else {
        checks.push(Check::fail(
            "a host key is pinned".into(),
            format!("pin it: {scan}"),
        ));
        return Ok(());
    };
    let pinned = russh::keys::PublicKey::from_openssh(pinned).map_err(|e| {
        anyhow::anyhow!("the pinned host key of {} cannot be read: {e}", target.name)
    })?;
    let fp = |k: &russh::keys::PublicKey| k.fingerprint(russh::keys::HashAlg::Sha256).to_string();
    match crate::ssh::scan::host_key_of(&target.address, limit, Some(pinned.algorithm())).await {
        Ok(k) if k.key_data() == pinned.key_data() => {
            checks.push(Check::ok(format!(
                "host key is the pinned one ({})",
                fp(&k)
            )));
        }
        Ok(k) => {
            checks.push(Check::fail(
                format!("host key {} is not the pinned {}", fp(&k), fp(&pinned)),
                format!("if the host was rebuilt, check its new key on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and pin it: {scan}; otherwise something is intercepting the connection"),
            ));
            return Ok(());
        }
        Err(e) => {
            checks.push(Check::fail(
                format!("host key: {e}"),
                "is it an SSH server?".into(),
            ));
            return Ok(());
        }
    }
    if logins.is_empty() {
        checks.push(Check::fail(
            "a login to try".into(),
            format!(
                "no role allows a login on {}; give --login LOGIN",
                target.name
            ),
        ));
        return Ok(());
    }
    let keys = keys(config)?;
    for login in logins {
        let id = format!("doctor-{}", uuid::Uuid::new_v4());
        let cert = crate::credentials::ssh_cert::issue(
            &keys.target_ca,
            &crate::credentials::ssh_cert::CertRequest {
                login,
                session_id: &id,
                user: "postern-doctor",
                valid_before: crate::credentials::ssh_cert::now_secs() + 60,
                port_forwarding: false,
            },
        )?;
        let creds = crate::ssh::upstream::Credentials {
            login: login.clone(),
            key: std::sync::Arc::new(cert.key),
            cert: cert.cert,
        };
        let what = format!("login `{login}` with a certificate from postern's target CA");
        match crate::ssh::upstream::connect(target, &creds, limit).await {
            Ok(h) => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    h.disconnect(russh::Disconnect::ByApplication, "", "en"),
                )
                .await;
                checks.push(Check::ok(what));
            }
            Err(crate::ssh::upstream::UpstreamError::AuthRefused { .. }) => checks.push(Check::fail(
                format!("{what}: refused"),
                format!("on {}: the sshd must trust postern's target CA (put the line `postern admin target-ca` prints in a file named by TrustedUserCAKeys in sshd_config, then reload sshd), and the unix user `{login}` must exist", target.name),
            )),
            Err(e) => checks.push(Check::fail(format!("{what}: {e}"), "see the error".into())),
        }
    }
    Ok(())
}

async fn pg_checks(
    config: &Config,
    target: &Target,
    users: &[String],
    database: &str,
    checks: &mut Vec<Check>,
) -> anyhow::Result<()> {
    if users.is_empty() {
        checks.push(Check::fail(
            "a database user to try".into(),
            format!(
                "no role allows a database user on {}; give --db-user USER",
                target.name
            ),
        ));
        return Ok(());
    }
    let keys = keys(config)?;
    let store = super::open_store(config).await?;
    let limit = Duration::from_secs(config.postgres.connect_timeout.as_secs().max(1));
    for user in users {
        let set = format!(
            "postern admin target set-credential {} --db-user {user} --password-stdin",
            target.name
        );
        let sealed = store.target_credential(&target.name, user).await?;
        let password = sealed.and_then(|s| {
            keys.master_key
                .open(&crate::pg::credential_purpose(&target.name, user), &s)
                .ok()
                .and_then(|p| String::from_utf8(p).ok())
        });
        let Some(password) = password else {
            checks.push(Check::fail(
                format!("a credential for database user `{user}`"),
                format!("store it: {set}"),
            ));
            continue;
        };
        let what = format!("login to `{database}` as `{user}`");
        match crate::pg::probe(
            target,
            database,
            user,
            &password,
            limit,
            config.postgres.target_ca_file.as_deref(),
        )
        .await
        {
            Ok(_) => checks.push(Check::ok(what)),
            Err(e) => checks.push(Check::fail(
                format!("{what}: {e}"),
                format!("if the password changed, store the new one: {set}"),
            )),
        }
    }
    store.close().await;
    Ok(())
}
