-- Brokered credentials: the password postern logs in to a PostgreSQL target with, per
-- database user, sealed with the master key (purpose `target:NAME:user:DBUSER`).
CREATE TABLE target_credentials (
    target      TEXT NOT NULL,
    db_user     TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (target, db_user)
) STRICT;
