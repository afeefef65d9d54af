//! What the console's pages and the `/v1/` endpoints both do: end a session, lock or
//! unlock a user, check access. Callers decide whether the person asking may; each action
//! is audited here with that person as actor, and `via` says which door it came through.

use serde_json::json;

use super::routes::Ctx;
use crate::audit::{Actor, Outcome};
use crate::policy::{Decision, Policy, Request, Target, User, UserStatus, decide};
use crate::store::{SessionRow, StoreError};

/// The session `id` when it exists and `may_see` its user; `None` alike for one that does
/// not exist and one the caller may not see. Whole ids only: a prefix would let a caller
/// probe ids they may not see.
pub async fn session_for(
    cx: &Ctx,
    id: &str,
    may_see: impl Fn(&str) -> bool,
) -> Result<Option<SessionRow>, StoreError> {
    if id.len() != 36 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Ok(None);
    }
    Ok(cx
        .shared
        .store
        .get_session(id)
        .await?
        .filter(|s| s.id == id && may_see(&s.user)))
}

/// Asks whichever `serve` runs the session to end it (the store command `sessions kill`
/// writes), and ends it at once when it runs in this process.
pub async fn kill(cx: &Ctx, actor: Actor, s: &SessionRow, via: &str) -> Result<(), StoreError> {
    cx.shared.store.request_kill(&s.id, &actor).await?;
    cx.shared.live.kill(&s.id);
    cx.audit_on(
        "session.kill",
        actor,
        Outcome::Success,
        Some(s.target.clone()),
        json!({ "session": s.id, "user": s.user, "via": via }),
    )
    .await;
    Ok(())
}

/// Locks or unlocks a user through the same policy update as `admin user lock`: one
/// `user.update` event with the actor. Live sessions of a locked user end within a second
/// (the live review re-decides them). False when the user does not exist.
pub async fn set_user_status(
    cx: &Ctx,
    actor: &Actor,
    name: &str,
    to: UserStatus,
) -> Result<bool, StoreError> {
    let mut found = false;
    cx.shared
        .store
        .update_policy(actor, false, |current| {
            let mut p = current.clone();
            if let Some(u) = p.users.get_mut(name) {
                u.status = to;
                found = true;
            }
            Ok(p)
        })
        .await?;
    Ok(found)
}

/// The policy engine's decision for a request, audited as `access.check`.
pub async fn check_access(
    cx: &Ctx,
    actor: Actor,
    policy: &Policy,
    user: &User,
    target: &Target,
    request: &Request<'_>,
    via: &str,
) -> Decision {
    let decision = decide(user, &policy.roles_for(user, &target.name), target, request);
    let outcome = match decision {
        Decision::Allow(_) => Outcome::Allow,
        Decision::Deny(_) => Outcome::Deny,
    };
    cx.audit_on(
        "access.check",
        actor,
        outcome,
        Some(target.name.clone()),
        json!({ "user": user.name, "request": request.to_string(), "decision": decision, "via": via }),
    )
    .await;
    decision
}
