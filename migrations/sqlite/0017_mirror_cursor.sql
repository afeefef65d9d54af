-- The SIEM mirror across replicas: one cursor (events up to `seq` were taken by some
-- replica's mirror) and the ranges taken but not yet written out. A replica takes the
-- next range, writes it, then drops its claim; the claims of a replica that died are
-- taken over, so every event reaches a mirror once (twice only around a crash).
CREATE TABLE mirror_cursor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL
) STRICT;

CREATE TABLE mirror_claims (
    after_seq   INTEGER PRIMARY KEY NOT NULL,
    last_seq    INTEGER NOT NULL,
    replica     TEXT NOT NULL,
    claimed_ms  INTEGER NOT NULL
) STRICT;
