-- PostgreSQL cancel keys of live sessions, so a CancelRequest that a load balancer hands
-- to another replica still reaches the target: `key_hash` is SHA-256 of the key postern
-- gave the client, `sealed` the target backend's key (sealed with the master key).
CREATE TABLE cancel_keys (
    key_hash    TEXT PRIMARY KEY NOT NULL,
    replica     TEXT NOT NULL,
    addr        TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
CREATE INDEX cancel_keys_by_replica ON cancel_keys (replica);
