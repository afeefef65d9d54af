-- Credentials postern issues at `postern login` and `postern db login`. Tokens are kept
-- only as SHA-256 hashes; TOTP secrets only sealed with the master key.

-- Every user certificate issued, by serial: who it names, which key it certifies.
CREATE TABLE user_certificates (
    serial           TEXT PRIMARY KEY NOT NULL,
    user_name        TEXT NOT NULL,
    key_fingerprint  TEXT NOT NULL,
    valid_before     INTEGER NOT NULL,
    issued_ms        INTEGER NOT NULL,
    source           TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX user_certificates_key ON user_certificates (key_fingerprint);

-- A user's TOTP secret (RFC 6238), sealed; last_step stops a code being used twice.
CREATE TABLE user_totp (
    user_name    TEXT PRIMARY KEY NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    sealed       TEXT NOT NULL,
    last_step    INTEGER NOT NULL DEFAULT 0,
    enrolled_ms  INTEGER NOT NULL
) STRICT;

-- Bearer tokens of the HTTPS API, issued with a login and expiring with its certificate.
CREATE TABLE api_tokens (
    token_hash   TEXT PRIMARY KEY NOT NULL,
    user_name    TEXT NOT NULL,
    cert_serial  TEXT NOT NULL,
    expires_ms   INTEGER NOT NULL
) STRICT;

-- Short-lived database credentials, bound to user, target, database and database user.
CREATE TABLE db_tokens (
    token_hash   TEXT PRIMARY KEY NOT NULL,
    user_name    TEXT NOT NULL,
    target       TEXT NOT NULL,
    database     TEXT NOT NULL,
    db_user      TEXT NOT NULL,
    issued_ms    INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL
) STRICT;
