//! Access-review campaigns and their items. Starting a campaign snapshots the grants in
//! scope with their age and last use; a reviewer certifies or revokes each (a revoke
//! takes the role away in the same transaction, as `admin user revoke` would); at the due
//! date what is still open is revoked or reported, as the campaign says.

use serde::Serialize;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{RequestError, Store, StoreError, audit, edit_policy, policy};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::duration::Dur;
use crate::policy::reviews::{Scope, may_decide, tally};

/// What a new campaign covers and how it ends.
pub struct NewCampaign {
    pub name: String,
    pub scope: Scope,
    pub due: Dur,
    /// Revoke what is undecided at the due date (else only report it).
    pub revoke_at_due: bool,
    /// Grants unused for this long are flagged stale.
    pub stale_after: Dur,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Campaign {
    pub id: i64,
    pub name: String,
    pub scope: String,
    pub created_ms: i64,
    pub created_by: String,
    pub due_ms: i64,
    /// `revoke` or `report`.
    pub on_due: String,
    pub closed_ms: Option<i64>,
    /// Items by decision (`open` while undecided).
    pub counts: std::collections::BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReviewItem {
    pub id: i64,
    pub campaign: i64,
    pub user: String,
    pub role: String,
    /// When the role was granted (absent for grants older than this record).
    pub granted_ms: Option<i64>,
    /// The last session the role allowed.
    pub last_used_ms: Option<i64>,
    /// Unused for the campaign's `stale_after`.
    pub stale: bool,
    /// `certified`, `revoked`, `revoked_at_due`, `unreviewed`; absent while open.
    pub decision: Option<String>,
    pub reviewer: Option<String>,
    pub decided_ms: Option<i64>,
    pub reason: Option<String>,
}

fn item_row(r: &AnyRow) -> Result<ReviewItem, StoreError> {
    Ok(ReviewItem {
        id: r.try_get("id")?,
        campaign: r.try_get("campaign_id")?,
        user: r.try_get("user_name")?,
        role: r.try_get("role_name")?,
        granted_ms: r.try_get("granted_ms")?,
        last_used_ms: r.try_get("last_used_ms")?,
        stale: r.try_get::<i64, _>("stale")? != 0,
        decision: r.try_get("decision")?,
        reviewer: r.try_get("reviewer")?,
        decided_ms: r.try_get("decided_ms")?,
        reason: r.try_get("reason")?,
    })
}

async fn items_of(conn: &mut AnyConnection, campaign: i64) -> Result<Vec<ReviewItem>, StoreError> {
    sqlx::query("SELECT * FROM review_items WHERE campaign_id = $1 ORDER BY id")
        .bind(campaign)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(item_row)
        .collect()
}

async fn campaign_row(conn: &mut AnyConnection, r: &AnyRow) -> Result<Campaign, StoreError> {
    let id: i64 = r.try_get("id")?;
    let items = items_of(conn, id).await?;
    Ok(Campaign {
        id,
        name: r.try_get("name")?,
        scope: r.try_get("scope")?,
        created_ms: r.try_get("created_ms")?,
        created_by: r.try_get("created_by")?,
        due_ms: r.try_get("due_ms")?,
        on_due: r.try_get("on_due")?,
        closed_ms: r.try_get("closed_ms")?,
        counts: tally(items.iter().map(|i| i.decision.as_deref())),
    })
}

async fn get_campaign(conn: &mut AnyConnection, id: i64) -> Result<Option<Campaign>, StoreError> {
    let Some(r) = sqlx::query("SELECT * FROM review_campaigns WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(campaign_row(conn, &r).await?))
}

fn item_event(kind: &str, actor: &Actor, i: &ReviewItem) -> AuditEvent {
    AuditEvent::new(
        kind,
        actor,
        Outcome::Success,
        json!({
            "campaign": i.campaign, "item": i.id, "user": i.user, "role": i.role,
            "reason": i.reason, "stale": i.stale, "last_used_ms": i.last_used_ms,
        }),
    )
    .with_target(format!("user:{}", i.user))
}

/// Takes `role` from `user` (if they still hold it) in the caller's transaction.
async fn take_role(
    tx: &mut AnyConnection,
    actor: &Actor,
    user: &str,
    role: &str,
) -> Result<(), StoreError> {
    edit_policy(tx, actor, false, |current| {
        let mut p = current.clone();
        if let Some(u) = p.users.get_mut(user) {
            u.roles.remove(role);
        }
        Ok(p)
    })
    .await
    .map(|_| ())
}

async fn save_decision(tx: &mut AnyConnection, i: &ReviewItem) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE review_items SET decision = $1, reviewer = $2, decided_ms = $3, reason = $4 WHERE id = $5",
    )
    .bind(&i.decision)
    .bind(&i.reviewer)
    .bind(i.decided_ms)
    .bind(&i.reason)
    .bind(i.id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A new campaign and its items, with `review.started`, in the caller's transaction.
async fn insert_campaign(
    tx: &mut AnyConnection,
    actor: &Actor,
    c: &NewCampaign,
    now: i64,
) -> Result<Campaign, StoreError> {
    let p = policy::load(&mut *tx).await?;
    let due_ms = now.saturating_add(crate::audit::secs_to_ms(c.due.as_secs()));
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO review_campaigns (name, scope, created_ms, created_by, due_ms, on_due) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(&c.name)
    .bind(c.scope.to_string())
    .bind(now)
    .bind(&actor.0)
    .bind(due_ms)
    .bind(if c.revoke_at_due { "revoke" } else { "report" })
    .fetch_one(&mut *tx)
    .await?;
    let stale_before = now.saturating_sub(crate::audit::secs_to_ms(c.stale_after.as_secs()));
    for (user, role) in c.scope.grants(&p) {
        let granted: Option<i64> = sqlx::query_scalar(
            "SELECT granted_ms FROM user_roles WHERE user_name = $1 AND role_name = $2",
        )
        .bind(&user.name)
        .bind(&role)
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
        let last_used: Option<i64> = sqlx::query_scalar(super::Dialect::of_conn(tx).pick(
            "SELECT MAX(started_ms) FROM sessions WHERE user_name = $1 AND instr(',' || roles || ',', ',' || $2 || ',') > 0",
            "SELECT MAX(started_ms) FROM sessions WHERE user_name = $1 AND strpos(',' || roles || ',', ',' || $2 || ',') > 0",
        ))
        .bind(&user.name)
        .bind(&role)
        .fetch_one(&mut *tx)
        .await?;
        let stale = last_used.or(granted).unwrap_or(i64::MIN) < stale_before;
        sqlx::query(
            "INSERT INTO review_items (campaign_id, user_name, role_name, granted_ms, last_used_ms, stale) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(&user.name)
        .bind(&role)
        .bind(granted)
        .bind(last_used)
        .bind(i64::from(stale))
        .execute(&mut *tx)
        .await?;
    }
    let campaign = get_campaign(&mut *tx, id)
        .await?
        .ok_or(StoreError::Corrupt {
            what: "review campaign".into(),
            why: "missing right after it was written".into(),
        })?;
    let e = AuditEvent::new(
        "review.started",
        actor,
        Outcome::Success,
        json!({
            "campaign": id, "name": c.name, "scope": campaign.scope, "due_ms": due_ms,
            "on_due": campaign.on_due, "items": campaign.counts.get("open").copied().unwrap_or(0),
        }),
    );
    audit::insert_chained(&mut *tx, &[e]).await?;
    Ok(campaign)
}

impl Store {
    /// Starts a campaign: one item per standing grant in scope, with its age and last
    /// use, and `review.started`.
    pub async fn start_review(
        &self,
        actor: &Actor,
        c: &NewCampaign,
        now: i64,
    ) -> Result<Campaign, StoreError> {
        let pool = &self.pool;
        let mut tx = crate::store::begin_write(pool).await?;
        let campaign = insert_campaign(&mut tx, actor, c, now).await?;
        tx.commit().await?;
        Ok(campaign)
    }

    /// Starts a campaign unless one started less than `every_ms` ago, deciding in the
    /// same transaction, so replicas sharing the store start one between them.
    pub async fn start_scheduled_review(
        &self,
        c: &NewCampaign,
        now: i64,
        every_ms: i64,
    ) -> Result<Option<Campaign>, StoreError> {
        let pool = &self.pool;
        let mut tx = crate::store::begin_write(pool).await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(created_ms) FROM review_campaigns")
            .fetch_one(&mut *tx)
            .await?;
        if last.is_some_and(|l| now - l < every_ms) {
            tx.rollback().await?;
            return Ok(None);
        }
        let campaign = insert_campaign(&mut tx, &Actor::system(), c, now).await?;
        tx.commit().await?;
        Ok(Some(campaign))
    }

    /// Campaigns, newest first.
    pub async fn review_campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        let pool = &self.pool;
        let mut conn = pool.acquire().await?;
        let rows = sqlx::query("SELECT * FROM review_campaigns ORDER BY id DESC LIMIT 200")
            .fetch_all(&mut *conn)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(campaign_row(&mut conn, r).await?);
        }
        Ok(out)
    }

    pub async fn review_campaign(&self, id: i64) -> Result<Option<Campaign>, StoreError> {
        let pool = &self.pool;
        get_campaign(&mut *pool.acquire().await?, id).await
    }

    /// A campaign's items, or the open items of every campaign still running.
    pub async fn review_items(&self, campaign: Option<i64>) -> Result<Vec<ReviewItem>, StoreError> {
        let pool = &self.pool;
        let mut conn = pool.acquire().await?;
        match campaign {
            Some(id) => items_of(&mut conn, id).await,
            None => sqlx::query(
                "SELECT i.* FROM review_items i JOIN review_campaigns c ON c.id = i.campaign_id
                 WHERE c.closed_ms IS NULL AND i.decision IS NULL ORDER BY i.id LIMIT 5000",
            )
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(item_row)
            .collect(),
        }
    }

    /// A reviewer certifies (keeps) or revokes (takes away) one grant.
    pub async fn decide_review_item(
        &self,
        reviewer: &str,
        item: i64,
        certify: bool,
        reason: &str,
        now: i64,
    ) -> Result<ReviewItem, RequestError> {
        let reason = reason.trim();
        if !certify && reason.is_empty() {
            return Err(RequestError::Invalid(
                "a reason is required to revoke (--reason \"…\")".into(),
            ));
        }
        if reason.len() > super::requests::MAX_REASON {
            return Err(RequestError::Invalid("the reason is too long".into()));
        }
        let pool = &self.pool;
        let mut tx = crate::store::begin_write(pool).await?;
        let p = policy::load(&mut tx).await?;
        let missing = || RequestError::Invalid(format!("no review item #{item}"));
        let row = sqlx::query("SELECT * FROM review_items WHERE id = $1")
            .bind(item)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(missing)?;
        let mut i = item_row(&row)?;
        let allowed = p
            .users
            .get(reviewer)
            .is_some_and(|r| may_decide(&p, r, &i.user, &i.role));
        if !allowed {
            return Err(RequestError::Refused(format!(
                "you may not decide review item #{item}: its role's reviewers or an admin do, never the grant's holder"
            )));
        }
        let closed: Option<i64> =
            sqlx::query_scalar("SELECT closed_ms FROM review_campaigns WHERE id = $1")
                .bind(i.campaign)
                .fetch_one(&mut *tx)
                .await?;
        if closed.is_some() || i.decision.is_some() {
            return Err(RequestError::Conflict(format!(
                "review item #{item} is already {}",
                i.decision.as_deref().unwrap_or("closed")
            )));
        }
        let actor = Actor::user(reviewer);
        i.decision = Some(if certify { "certified" } else { "revoked" }.into());
        i.reviewer = Some(reviewer.to_string());
        i.decided_ms = Some(now);
        i.reason = Some(reason.to_string());
        save_decision(&mut tx, &i).await?;
        if !certify {
            take_role(&mut tx, &actor, &i.user, &i.role).await?;
        }
        let kind = if certify {
            "review.certified"
        } else {
            "review.revoked"
        };
        audit::insert_chained(&mut tx, &[item_event(kind, &actor, &i)]).await?;
        tx.commit().await?;
        Ok(i)
    }

    /// Closes campaigns past their due date: open items are revoked (`revoked_at_due`)
    /// or marked `unreviewed`, as the campaign says, with `review.closed`.
    pub async fn sweep_reviews(&self, now: i64) -> Result<Vec<Campaign>, StoreError> {
        let pool = &self.pool;
        let due: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM review_campaigns WHERE closed_ms IS NULL AND due_ms <= $1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
        let mut closed = Vec::new();
        for id in due {
            let mut tx = crate::store::begin_write(pool).await?;
            let Some(c) = get_campaign(&mut tx, id).await? else {
                continue;
            };
            if c.closed_ms.is_some() {
                continue;
            }
            let actor = Actor::system();
            let revoke = c.on_due == "revoke";
            let mut events = Vec::new();
            for mut i in items_of(&mut tx, id).await? {
                if i.decision.is_some() {
                    continue;
                }
                i.decision = Some(
                    if revoke {
                        "revoked_at_due"
                    } else {
                        "unreviewed"
                    }
                    .into(),
                );
                i.decided_ms = Some(now);
                save_decision(&mut tx, &i).await?;
                if revoke {
                    take_role(&mut tx, &actor, &i.user, &i.role).await?;
                    events.push(item_event("review.revoked_at_due", &actor, &i));
                }
            }
            sqlx::query("UPDATE review_campaigns SET closed_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let c = get_campaign(&mut tx, id).await?.unwrap_or(c);
            events.push(AuditEvent::new(
                "review.closed",
                &actor,
                Outcome::Success,
                json!({ "campaign": id, "name": c.name, "counts": c.counts }),
            ));
            audit::insert_chained(&mut tx, &events).await?;
            tx.commit().await?;
            closed.push(c);
        }
        Ok(closed)
    }

    /// When the newest campaign was started (for `[review] every`).
    pub async fn last_review_ms(&self) -> Result<Option<i64>, StoreError> {
        let pool = &self.pool;
        Ok(
            sqlx::query_scalar("SELECT MAX(created_ms) FROM review_campaigns")
                .fetch_one(&mut *pool.acquire().await?)
                .await?,
        )
    }
}

/// A field for CSV: quoted, quotes doubled, and a leading `=`, `+`, `-` or `@` defused so
/// a spreadsheet does not run it.
fn csv(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A campaign's items as CSV, one line each, for auditors.
pub fn review_csv(items: &[ReviewItem]) -> String {
    let ms = |v: Option<i64>| v.map(crate::audit::format_ms).unwrap_or_default();
    let mut out =
        String::from("item,user,role,granted,last_used,stale,decision,reviewer,decided,reason\n");
    for i in items {
        let row = [
            i.id.to_string(),
            csv(&i.user),
            csv(&i.role),
            ms(i.granted_ms),
            ms(i.last_used_ms),
            i.stale.to_string(),
            i.decision.clone().unwrap_or_else(|| "open".into()),
            csv(i.reviewer.as_deref().unwrap_or("")),
            ms(i.decided_ms),
            csv(i.reason.as_deref().unwrap_or("")),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}
