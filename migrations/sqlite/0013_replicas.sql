-- Replicas serving from one store: each `serve` holds a lease it renews every second, and
-- each session records the replica that runs it, so the sessions of a replica that died
-- are closed by the others (and by its own restart) without touching the live ones.
CREATE TABLE replicas (
    name          TEXT PRIMARY KEY NOT NULL,
    started_ms    INTEGER NOT NULL,
    heartbeat_ms  INTEGER NOT NULL
) STRICT;
ALTER TABLE sessions ADD COLUMN replica TEXT;
