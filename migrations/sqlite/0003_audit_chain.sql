-- The audit log becomes a hash chain: each event stores the hash of the previous one and
-- its own; signed checkpoints vouch for the chain up to a sequence number; a pruned log
-- keeps an anchor (the last removed event's hash) so what remains still verifies.
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_events ADD COLUMN hash TEXT;
CREATE INDEX audit_by_session ON audit_events (session_id);

CREATE TABLE audit_checkpoints (
    seq        INTEGER PRIMARY KEY NOT NULL,
    hash       TEXT NOT NULL,
    time_ms    INTEGER NOT NULL,
    signature  TEXT NOT NULL
) STRICT;

CREATE TABLE audit_anchor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    time_ms    INTEGER NOT NULL,
    signature  TEXT NOT NULL
) STRICT;
