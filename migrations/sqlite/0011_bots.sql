-- Machine identities (CI pipelines, agents): users of kind `bot`, logging in with a join
-- token kept as its SHA-256, with their own cap on credential lifetime.
ALTER TABLE users ADD COLUMN kind TEXT NOT NULL DEFAULT 'person' CHECK (kind IN ('person', 'bot'));

CREATE TABLE bot_tokens (
    user_name           TEXT PRIMARY KEY NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    token_hash          TEXT NOT NULL UNIQUE,
    credential_ttl_secs INTEGER NOT NULL,
    created_ms          INTEGER NOT NULL
) STRICT;
