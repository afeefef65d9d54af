-- Commands for live sessions (kill today; lock and TTL changes later), written by admin
-- commands in other processes and picked up by every running `postern serve`.
CREATE TABLE session_commands (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id    TEXT NOT NULL,
    command       TEXT NOT NULL CHECK (command IN ('kill')),
    actor         TEXT NOT NULL,
    requested_ms  INTEGER NOT NULL
) STRICT;
