-- The chain assigns `seq` itself, so the table needs neither AUTOINCREMENT (an extra
-- write per row) nor a unique index on the random event id (a random-position insert per
-- row). Rebuilt without them; the searchable indexes stay.
CREATE TABLE audit_events_lean (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL,
    time_ms     INTEGER NOT NULL,
    type        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    source      TEXT,
    target      TEXT,
    session_id  TEXT,
    result      TEXT NOT NULL,
    details     TEXT NOT NULL,
    prev_hash   TEXT,
    hash        TEXT
) STRICT;
INSERT INTO audit_events_lean
    SELECT seq, id, time_ms, type, actor, source, target, session_id, result, details, prev_hash, hash
    FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_lean RENAME TO audit_events;
CREATE INDEX audit_by_time ON audit_events (time_ms);
CREATE INDEX audit_by_type ON audit_events (type, time_ms);
CREATE INDEX audit_by_session ON audit_events (session_id);
