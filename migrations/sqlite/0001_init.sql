-- postern's embedded store: the policy model, the session index and the audit log.
-- Times are Unix milliseconds (UTC). Nested values (rules, labels, details) are JSON text.

CREATE TABLE users (
    name        TEXT PRIMARY KEY NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'locked')),
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE user_keys (
    fingerprint TEXT PRIMARY KEY NOT NULL,
    user_name   TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    public_key  TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    position    INTEGER NOT NULL
) STRICT;
CREATE INDEX user_keys_by_user ON user_keys (user_name);

CREATE TABLE roles (
    name        TEXT PRIMARY KEY NOT NULL,
    spec        TEXT NOT NULL,            -- JSON: settings, allow and deny rules
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE user_roles (
    user_name   TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    role_name   TEXT NOT NULL REFERENCES roles (name) ON DELETE RESTRICT,
    PRIMARY KEY (user_name, role_name)
) STRICT;

CREATE TABLE targets (
    name        TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('ssh', 'postgres')),
    address     TEXT NOT NULL,
    spec        TEXT NOT NULL,            -- JSON: labels, host key, TLS mode
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL,
    user_name    TEXT NOT NULL,
    target_name  TEXT NOT NULL,
    login        TEXT NOT NULL,
    client_addr  TEXT NOT NULL,
    started_ms   INTEGER NOT NULL,
    ended_ms     INTEGER,
    end_reason   TEXT,
    bytes_in     INTEGER NOT NULL DEFAULT 0,
    bytes_out    INTEGER NOT NULL DEFAULT 0,
    exit_status  INTEGER,
    cert_serial  INTEGER
) STRICT;
CREATE INDEX sessions_by_start ON sessions (started_ms);

CREATE TABLE recordings (
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    channel     INTEGER NOT NULL,
    path        TEXT NOT NULL,
    sha256      TEXT,
    bytes       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, channel)
) STRICT;

CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    time_ms     INTEGER NOT NULL,
    type        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    source      TEXT,
    target      TEXT,
    session_id  TEXT,
    result      TEXT NOT NULL,
    details     TEXT NOT NULL
) STRICT;
CREATE INDEX audit_by_time ON audit_events (time_ms);
CREATE INDEX audit_by_type ON audit_events (type, time_ms);
