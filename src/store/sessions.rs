//! The session index: one row per session, one per recording.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::StoreError;

#[derive(Clone, Debug, Serialize)]
pub struct SessionRow {
    pub id: String,
    pub kind: String,
    pub user: String,
    pub target: String,
    pub login: String,
    pub client_addr: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub end_reason: Option<String>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub exit_status: Option<i64>,
    pub cert_serial: Option<String>,
    /// The roles that allowed the session (what access reviews call its use).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The replica (`host:api-port`) that runs or ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    pub recordings: Vec<RecordingRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecordingRow {
    pub channel: i64,
    pub path: String,
    pub sha256: Option<String>,
    pub bytes: i64,
}

#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    pub active: bool,
    pub limit: Option<i64>,
}

/// What a finished session reports.
#[derive(Clone, Debug)]
pub struct SessionEnd {
    pub reason: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub exit_status: Option<u32>,
}

pub async fn insert(conn: &mut AnyConnection, s: &SessionRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sessions (id, kind, user_name, target_name, login, client_addr, started_ms, cert_serial, roles, replica)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&s.id)
    .bind(&s.kind)
    .bind(&s.user)
    .bind(&s.target)
    .bind(&s.login)
    .bind(&s.client_addr)
    .bind(s.started_ms)
    .bind(s.cert_serial.as_ref().and_then(|c| c.parse::<i64>().ok()))
    .bind(s.roles.join(","))
    .bind(&s.replica)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn end(
    conn: &mut AnyConnection,
    id: &str,
    ended_ms: i64,
    e: &SessionEnd,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sessions SET ended_ms = $1, end_reason = $2, bytes_in = $3, bytes_out = $4, exit_status = $5
         WHERE id = $6 AND ended_ms IS NULL",
    )
    .bind(ended_ms)
    .bind(&e.reason)
    .bind(i64::try_from(e.bytes_in).unwrap_or(i64::MAX))
    .bind(i64::try_from(e.bytes_out).unwrap_or(i64::MAX))
    .bind(e.exit_status.map(i64::from))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn add_recording(
    conn: &mut AnyConnection,
    session: &str,
    channel: u32,
    path: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO recordings (session_id, channel, path) VALUES ($1, $2, $3)")
        .bind(session)
        .bind(i64::from(channel))
        .bind(path)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn finish_recording(
    conn: &mut AnyConnection,
    session: &str,
    channel: u32,
    sha256: &str,
    bytes: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE recordings SET sha256 = $1, bytes = $2 WHERE session_id = $3 AND channel = $4",
    )
    .bind(sha256)
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .bind(session)
    .bind(i64::from(channel))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn row_to_session(r: &sqlx::any::AnyRow) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        user: r.try_get("user_name")?,
        target: r.try_get("target_name")?,
        login: r.try_get("login")?,
        client_addr: r.try_get("client_addr")?,
        started_ms: r.try_get("started_ms")?,
        ended_ms: r.try_get("ended_ms")?,
        end_reason: r.try_get("end_reason")?,
        bytes_in: r.try_get("bytes_in")?,
        bytes_out: r.try_get("bytes_out")?,
        exit_status: r.try_get("exit_status")?,
        cert_serial: r
            .try_get::<Option<i64>, _>("cert_serial")?
            .map(|s| s.to_string()),
        roles: r
            .try_get::<String, _>("roles")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        replica: r.try_get("replica")?,
        recordings: Vec::new(),
    })
}

async fn recordings(conn: &mut AnyConnection, id: &str) -> Result<Vec<RecordingRow>, StoreError> {
    sqlx::query(
        "SELECT channel, path, sha256, bytes FROM recordings WHERE session_id = $1 ORDER BY channel",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(RecordingRow {
            channel: r.try_get("channel")?,
            path: r.try_get("path")?,
            sha256: r.try_get("sha256")?,
            bytes: r.try_get("bytes")?,
        })
    })
    .collect()
}

pub async fn list(
    conn: &mut AnyConnection,
    f: &SessionFilter,
) -> Result<Vec<SessionRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM (
           SELECT * FROM sessions
           WHERE ($1 IS NULL OR user_name = $1)
             AND ($2 IS NULL OR target_name = $2)
             AND ($3 IS NULL OR started_ms >= $3)
             AND ($4 = 0 OR ended_ms IS NULL)
           ORDER BY started_ms DESC, id LIMIT $5
         ) AS recent ORDER BY started_ms, id",
    )
    .bind(&f.user)
    .bind(&f.target)
    .bind(f.since_ms)
    .bind(i64::from(f.active))
    .bind(f.limit.unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut s = row_to_session(r)?;
        s.recordings = recordings(conn, &s.id).await?;
        out.push(s);
    }
    Ok(out)
}

/// A session by id, or by a unique id prefix (as `git` takes short hashes).
pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<SessionRow>, StoreError> {
    let rows = sqlx::query("SELECT * FROM sessions WHERE id = $1 OR id LIKE $1 || '%' LIMIT 2")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    let exact = rows
        .iter()
        .find(|r| r.try_get::<String, _>("id").ok().as_deref() == Some(id));
    let row = match (exact, rows.len()) {
        (Some(r), _) => r,
        (None, 1) => &rows[0],
        _ => return Ok(None),
    };
    let mut s = row_to_session(row)?;
    s.recordings = recordings(conn, &s.id).await?;
    Ok(Some(s))
}

/// The PostgreSQL notification channel a new session command is announced on.
pub const COMMANDS_CHANNEL: &str = "postern_commands";

pub async fn push_command(
    conn: &mut AnyConnection,
    session: &str,
    command: &str,
    actor: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO session_commands (session_id, command, actor, requested_ms) VALUES ($1, $2, $3, $4)")
        .bind(session)
        .bind(command)
        .bind(actor)
        .bind(crate::audit::now_ms())
        .execute(&mut *conn)
        .await?;
    if super::Dialect::of_conn(conn) == super::Dialect::Postgres {
        // Delivered at commit: every replica's watcher reads the commands at once.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(COMMANDS_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Commands after `seq`, oldest first, as (seq, session id, command).
pub async fn commands_after(
    conn: &mut AnyConnection,
    seq: i64,
) -> Result<Vec<(i64, String, String)>, StoreError> {
    sqlx::query("SELECT seq, session_id, command FROM session_commands WHERE seq > $1 ORDER BY seq LIMIT 1000")
        .bind(seq)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("seq")?, r.try_get("session_id")?, r.try_get("command")?)))
        .collect()
}

pub async fn last_command(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("SELECT COALESCE(MAX(seq), 0) AS m FROM session_commands")
            .fetch_one(&mut *conn)
            .await?
            .try_get("m")?,
    )
}

/// Sessions left open by a replica that died: `me`'s own from an earlier run (at its
/// start, `at_start`, with those of no replica), and those of replicas whose lease ran
/// out before `expired_before` or that no longer hold one. Closed with `reason`, once.
pub async fn close_orphans(
    conn: &mut AnyConnection,
    reason: &str,
    me: &str,
    at_start: bool,
    expired_before: i64,
) -> Result<Vec<SessionRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM sessions WHERE ended_ms IS NULL AND (
            ($1 AND (replica IS NULL OR replica = $2))
            OR (replica IS NOT NULL AND replica != $2 AND (
                replica IN (SELECT name FROM replicas WHERE heartbeat_ms < $3)
                OR replica NOT IN (SELECT name FROM replicas))))",
    )
    .bind(at_start)
    .bind(me)
    .bind(expired_before)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in &rows {
        let s = row_to_session(r)?;
        // Whoever closes it first reports it.
        let done = sqlx::query(
            "UPDATE sessions SET ended_ms = $1, end_reason = $2 WHERE id = $3 AND ended_ms IS NULL",
        )
        .bind(crate::audit::now_ms())
        .bind(reason)
        .bind(&s.id)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 1 {
            out.push(s);
        }
    }
    Ok(out)
}
