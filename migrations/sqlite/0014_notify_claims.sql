-- Each request notification is delivered by one replica: the first to claim its event.
CREATE TABLE notify_claims (
    seq        INTEGER PRIMARY KEY NOT NULL,
    replica    TEXT NOT NULL,
    claimed_ms INTEGER NOT NULL
) STRICT;
