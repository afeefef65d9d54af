-- Password hashes (Argon2id, PHC string) for `postern login`; kept apart from the policy
-- model so they never reach a diff, an audit row or `--json` output.
CREATE TABLE user_passwords (
    user_name   TEXT PRIMARY KEY NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    hash        TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
) STRICT;
