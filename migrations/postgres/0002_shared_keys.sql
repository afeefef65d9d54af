-- Key files every replica uses (host key, CAs, audit key, TLS CA), sealed with the master
-- key each replica brings; `name` is the file's path in the data dir.
CREATE TABLE shared_keys (
    name        TEXT PRIMARY KEY NOT NULL,
    sealed      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
