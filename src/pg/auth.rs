//! Authenticating a PostgreSQL client: TLS required, the password is a database token of
//! this user for this target and database, and the policy allows the database user.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;

use super::{ClientStart, Io, Refusal, audit, proof, refuse};
use crate::api::Door;
use crate::audit::{Actor, AuditEvent, Outcome, format_clock, now_ms};
use crate::config::ClientAuth;
use crate::credentials::token;
use crate::policy::{
    Decision, Grant, Request, Target, TargetKind, UserStatus, decide, no_such_target,
};
use crate::server::Shared;

/// A client postern let in: who, where, and the rule that allowed it.
pub struct Authorized {
    pub user: String,
    pub actor: Actor,
    pub target: Target,
    pub database: String,
    pub db_user: String,
    pub grant: Grant,
    /// The approved request the access rests on, when no standing role gives it.
    pub resting: Option<crate::policy::TimedGrant>,
    /// The login (user certificate) the token was issued under.
    pub cert_serial: Option<u64>,
    /// `auth.success`, not yet written: it goes into the log with the session's next
    /// event (its start, or why it could not start), in one commit, before the client is
    /// let in.
    pub success: Option<AuditEvent>,
}

/// A name from the wire as it may appear in an audit event: printable, at most 64
/// characters.
fn shown(name: &str) -> String {
    let p = crate::policy::names::printable(name);
    match p.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &p[..cut]),
        None => p,
    }
}

pub async fn authorize(
    io: &mut Box<dyn Io>,
    client: &ClientStart,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<Authorized, Refusal> {
    if !client.tls && !shared.config.postgres.allow_plaintext {
        return Err(refuse(
            "28000",
            "postern accepts PostgreSQL connections over TLS only: connect with sslmode=require (or verify-full with postern's CA, `postern admin tls-ca`)",
        ));
    }
    let user = client.param("user").unwrap_or_default().to_string();
    if user.is_empty() {
        return Err(refuse(
            "28000",
            "no user name given: the user is your postern user",
        ));
    }
    let dbparam = client.param("database").unwrap_or(&user).to_string();
    let (mut target_name, mut asked_db) = match dbparam.split_once('/') {
        Some((t, d)) => (t.to_string(), Some(d.to_string())),
        None => (dbparam.clone(), None),
    };
    let printable = crate::policy::names::printable;

    let ip = peer.ip();
    let policy = shared.store.load_policy().await.map_err(|_| {
        refuse(
            "08006",
            "postern cannot read its policy right now; try again shortly",
        )
    })?;
    // Only a user's name is a counter key or an audit actor; anything else is `unknown`,
    // with a bounded, printable copy of what was tried.
    let known = policy.users.contains_key(&user);
    let tried = shown(&user);
    let attempt = shared
        .api
        .limiter
        .attempt(Door::Postgres, known.then_some(user.as_str()), ip);
    let attempt = match attempt {
        Ok(a) => a,
        Err(wait) => {
            audit(
            shared,
            AuditEvent::new(
                "auth.rate_limited",
                &Actor("unknown".into()),
                Outcome::Deny,
                json!({ "method": "db_token", "user": tried, "retry_after": wait.as_secs() + 1 }),
            ),
            peer,
        )
        .await;
            return Err(refuse(
                "28P01",
                format!(
                    "too many failed logins; try again in {} s",
                    wait.as_secs() + 1
                ),
            ));
        }
    };
    let fail = |reason: &str| {
        let (actor, details) = if known {
            (
                Actor::user(&user),
                json!({ "method": "db_token", "reason": reason, "database": shown(&dbparam) }),
            )
        } else {
            (
                Actor("unknown".into()),
                json!({ "method": "db_token", "reason": reason, "user": tried, "database": shown(&dbparam) }),
            )
        };
        AuditEvent::new("auth.failure", &actor, Outcome::Failure, details)
    };
    // The client proves it holds a database token.
    let store_down = || {
        refuse(
            "08006",
            "postern cannot reach its store right now; try again shortly",
        )
    };
    let tok = match shared.config.postgres.client_auth {
        ClientAuth::Password => {
            let secret = proof::password(io).await?;
            shared
                .store
                .db_token(&token::hash(&secret))
                .await
                .map_err(|_| store_down())?
        }
        ClientAuth::ScramSha256 => {
            let candidates = match known {
                true => shared
                    .store
                    .scram_tokens(&user)
                    .await
                    .map_err(|_| store_down())?,
                false => Vec::new(),
            };
            let binding = shared.pg_end_point.as_deref().filter(|_| client.tls);
            proof::scram(io, &user, binding, candidates).await?
        }
    };
    // A token of this user, proven: whatever is wrong with the request now, it is no
    // guess, and the reserved attempt is given back.
    if tok.as_ref().is_some_and(|t| t.user == user) {
        attempt.succeeded();
    }
    let again = format!("run postern db login {}", printable(&target_name));
    // A plain DATABASE names the database the token is bound to (drivers that query
    // catalogs with their connection's database name need it to be the real one).
    if let Some(t) = &tok
        && asked_db.is_none()
        && t.user == user
        && t.database == dbparam
        && t.target != dbparam
    {
        target_name = t.target.clone();
        asked_db = Some(t.database.clone());
    }
    let tok = match tok {
        Some(t)
            if t.user == user
                && t.target == target_name
                && asked_db.as_ref().is_none_or(|d| *d == t.database) =>
        {
            t
        }
        // A valid token of this user, for another target: say which target it is for
        // (the same answer whether the target asked for exists or not).
        Some(t) if t.user == user && t.expires_ms > now_ms() && t.target != target_name => {
            audit(shared, fail("token for another target"), peer).await;
            return Err(refuse(
                "28P01",
                format!(
                    "password authentication failed for user \"{}\": this token is for `{}/{}`; {again}",
                    printable(&user),
                    t.target,
                    t.database
                ),
            ));
        }
        _ => {
            audit(
                shared,
                fail("not a database token for this user, target and database"),
                peer,
            )
            .await;
            return Err(refuse(
                "28P01",
                format!(
                    "password authentication failed for user \"{}\": the password must be a database token for this target and database; {again}",
                    printable(&user)
                ),
            ));
        }
    };
    if tok.expires_ms <= now_ms() {
        audit(shared, fail("token expired"), peer).await;
        return Err(refuse(
            "28P01",
            format!(
                "token expired at {} — {again}",
                format_clock(tok.expires_ms)
            ),
        ));
    }
    if let Some(serial) = tok.cert_serial {
        let revoked = shared.store.is_revoked(serial).await.map_err(|_| {
            refuse(
                "08006",
                "postern cannot reach its store right now; try again shortly",
            )
        })?;
        if revoked {
            audit(shared, fail("login revoked"), peer).await;
            return Err(refuse(
                "28P01",
                format!(
                    "the postern login this token was issued under (serial {serial}) was revoked; run postern login, then postern db login {}",
                    printable(&target_name)
                ),
            ));
        }
    }

    // The access decision.
    let actor = match policy.users.get(&user) {
        Some(u) => Actor::of(u),
        None => Actor::user(&user),
    };
    let deny = |reason: &str| {
        let mut e = AuditEvent::new(
            "access.deny",
            &actor,
            Outcome::Deny,
            json!({ "reason": reason, "kind": "postgres" }),
        );
        e.target = Some(shown(&target_name));
        e
    };
    // The token was issued for this target; it may have been removed or changed since.
    let target = match policy.targets.get(&target_name) {
        Some(t) if t.kind == TargetKind::Postgres => t.clone(),
        found => {
            let reason = match found {
                Some(_) => "wrong kind",
                None => "unknown target",
            };
            audit(shared, deny(reason), peer).await;
            return Err(refuse("3D000", no_such_target(&target_name)));
        }
    };
    let Some(u) = policy.users.get(&user) else {
        audit(shared, deny("user no longer exists"), peer).await;
        return Err(refuse(
            "28000",
            format!("user `{}` no longer exists", printable(&user)),
        ));
    };
    let database = tok.database.clone();
    let db_user = tok.db_user.clone();
    let grant = match decide(
        u,
        &policy.roles_for(u, &target.name),
        &target,
        &Request::Postgres {
            database: &database,
            db_user: &db_user,
        },
    ) {
        Decision::Allow(g) => g,
        Decision::Deny(reason) => {
            let mut e = AuditEvent::new(
                "access.deny",
                &actor,
                Outcome::Deny,
                json!({ "database": database, "db_user": db_user, "reason": reason.to_string(), "decision": reason }),
            );
            e.target = Some(target.name.clone());
            audit(shared, e, peer).await;
            let code = if u.status == UserStatus::Locked {
                "28000"
            } else {
                "42501"
            };
            return Err(refuse(
                code,
                format!(
                    "access to database `{database}` as `{db_user}` on `{}` denied: {reason}{}",
                    target.name,
                    crate::policy::requests::refusal_hint(
                        &policy,
                        u,
                        &target,
                        &Request::Postgres {
                            database: &database,
                            db_user: &db_user
                        }
                    )
                ),
            ));
        }
    };
    let mut success = AuditEvent::new(
        "auth.success",
        &actor,
        Outcome::Success,
        json!({ "method": "db_token", "database": database, "db_user": db_user }),
    );
    success.source = Some(peer.to_string());

    let resting = policy.grant_end(u, &target.name, &grant.roles).cloned();
    Ok(Authorized {
        resting,
        user,
        actor,
        target,
        database,
        db_user,
        grant,
        cert_serial: tok.cert_serial,
        success: Some(success),
    })
}
