//! Policy rows: users, their keys and roles, roles, targets.

use std::collections::BTreeMap;

use sqlx::{AnyConnection, Row};

use super::StoreError;
use super::error::corrupt;
use crate::audit::now_ms;
use crate::policy::{Change, Entity, Policy, Role, Target, User, UserKey, UserStatus};

pub async fn load(conn: &mut AnyConnection) -> Result<Policy, StoreError> {
    let mut p = Policy::default();
    for r in sqlx::query("SELECT name, spec FROM roles")
        .fetch_all(&mut *conn)
        .await?
    {
        let name: String = r.try_get("name")?;
        let spec: String = r.try_get("spec")?;
        let mut role: Role =
            serde_json::from_str(&spec).map_err(corrupt(format!("role {name}")))?;
        role.name = name.clone();
        p.roles.insert(name, role);
    }
    for r in sqlx::query("SELECT name, spec FROM targets")
        .fetch_all(&mut *conn)
        .await?
    {
        let name: String = r.try_get("name")?;
        let spec: String = r.try_get("spec")?;
        let mut target: Target =
            serde_json::from_str(&spec).map_err(corrupt(format!("target {name}")))?;
        target.name = name.clone();
        p.targets.insert(name, target);
    }
    let mut users: BTreeMap<String, User> = BTreeMap::new();
    for r in sqlx::query("SELECT name, status, kind FROM users")
        .fetch_all(&mut *conn)
        .await?
    {
        let name: String = r.try_get("name")?;
        let status: String = r.try_get("status")?;
        let mut u = User::new(&name);
        u.bot = r.try_get::<String, _>("kind")? == "bot";
        u.status = if status == "locked" {
            UserStatus::Locked
        } else {
            UserStatus::Active
        };
        users.insert(name, u);
    }
    for r in sqlx::query("SELECT user_name, role_name FROM user_roles")
        .fetch_all(&mut *conn)
        .await?
    {
        let user: String = r.try_get("user_name")?;
        if let Some(u) = users.get_mut(&user) {
            u.roles.insert(r.try_get("role_name")?);
        }
    }
    for r in sqlx::query(
        "SELECT user_name, fingerprint, public_key, comment FROM user_keys ORDER BY user_name, position",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let user: String = r.try_get("user_name")?;
        if let Some(u) = users.get_mut(&user) {
            u.keys.push(UserKey {
                fingerprint: r.try_get("fingerprint")?,
                public_key: r.try_get("public_key")?,
                comment: r.try_get("comment")?,
            });
        }
    }
    p.users = users;
    Ok(p)
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(corrupt("serialising a policy entity"))
}

fn kind(u: &User) -> &'static str {
    if u.bot { "bot" } else { "person" }
}

/// Writes a user's roles (each with when it was granted: `since`'s time for roles it
/// already held, `now` for new ones) and keys.
async fn write_user_links(
    conn: &mut AnyConnection,
    u: &User,
    since: &BTreeMap<String, Option<i64>>,
    now: i64,
) -> Result<(), StoreError> {
    for role in &u.roles {
        sqlx::query(
            "INSERT INTO user_roles (user_name, role_name, granted_ms) VALUES ($1, $2, $3)",
        )
        .bind(&u.name)
        .bind(role)
        .bind(since.get(role).copied().unwrap_or(Some(now)))
        .execute(&mut *conn)
        .await?;
    }
    for (i, k) in u.keys.iter().enumerate() {
        sqlx::query(
            "INSERT INTO user_keys (fingerprint, user_name, public_key, comment, position) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&k.fingerprint)
        .bind(&u.name)
        .bind(&k.public_key)
        .bind(&k.comment)
        .bind(i64::try_from(i).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Applies `changes` in order (see [`crate::policy::diff`] for why the order is safe).
pub async fn write(conn: &mut AnyConnection, changes: &[Change]) -> Result<(), StoreError> {
    let now = now_ms();
    // Keys may move between users in one change set: clear updated users' links first,
    // remembering since when each role was held.
    let mut held: BTreeMap<String, BTreeMap<String, Option<i64>>> = BTreeMap::new();
    for c in changes {
        if let Change::Update {
            after: Entity::User(u),
            ..
        } = c
        {
            let mut since = BTreeMap::new();
            for r in
                sqlx::query("SELECT role_name, granted_ms FROM user_roles WHERE user_name = $1")
                    .bind(&u.name)
                    .fetch_all(&mut *conn)
                    .await?
            {
                since.insert(r.try_get("role_name")?, r.try_get("granted_ms")?);
            }
            held.insert(u.name.clone(), since);
            sqlx::query("DELETE FROM user_keys WHERE user_name = $1")
                .bind(&u.name)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM user_roles WHERE user_name = $1")
                .bind(&u.name)
                .execute(&mut *conn)
                .await?;
        }
    }
    for c in changes {
        match c {
            Change::Create(Entity::Role(r)) => {
                sqlx::query(
                    "INSERT INTO roles (name, spec, created_ms, updated_ms) VALUES ($1, $2, $3, $4)",
                )
                .bind(&r.name)
                .bind(json(r)?)
                .bind(now)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            Change::Update {
                after: Entity::Role(r),
                ..
            } => {
                sqlx::query("UPDATE roles SET spec = $1, updated_ms = $2 WHERE name = $3")
                    .bind(json(r)?)
                    .bind(now)
                    .bind(&r.name)
                    .execute(&mut *conn)
                    .await?;
            }
            Change::Delete(Entity::Role(r)) => {
                sqlx::query("DELETE FROM roles WHERE name = $1")
                    .bind(&r.name)
                    .execute(&mut *conn)
                    .await?;
            }
            Change::Create(Entity::Target(t)) => {
                sqlx::query(
                    "INSERT INTO targets (name, kind, address, spec, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&t.name)
                .bind(t.kind.to_string())
                .bind(&t.address)
                .bind(json(t)?)
                .bind(now)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            Change::Update {
                after: Entity::Target(t),
                ..
            } => {
                sqlx::query("UPDATE targets SET kind = $1, address = $2, spec = $3, updated_ms = $4 WHERE name = $5")
                    .bind(t.kind.to_string())
                    .bind(&t.address)
                    .bind(json(t)?)
                    .bind(now)
                    .bind(&t.name)
                    .execute(&mut *conn)
                    .await?;
            }
            Change::Delete(Entity::Target(t)) => {
                sqlx::query("DELETE FROM targets WHERE name = $1")
                    .bind(&t.name)
                    .execute(&mut *conn)
                    .await?;
            }
            Change::Create(Entity::User(u)) => {
                sqlx::query(
                    "INSERT INTO users (name, status, kind, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&u.name)
                .bind(u.status.to_string())
                .bind(kind(u))
                .bind(now)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                write_user_links(conn, u, &BTreeMap::new(), now).await?;
            }
            Change::Update {
                after: Entity::User(u),
                ..
            } => {
                sqlx::query(
                    "UPDATE users SET status = $1, kind = $2, updated_ms = $3 WHERE name = $4",
                )
                .bind(u.status.to_string())
                .bind(kind(u))
                .bind(now)
                .bind(&u.name)
                .execute(&mut *conn)
                .await?;
                let since = held.get(&u.name).cloned().unwrap_or_default();
                write_user_links(conn, u, &since, now).await?;
            }
            Change::Delete(Entity::User(u)) => {
                sqlx::query("DELETE FROM users WHERE name = $1")
                    .bind(&u.name)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}
