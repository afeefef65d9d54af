-- Serials of user certificates that must no longer be accepted, whatever their validity.
CREATE TABLE revoked_certificates (
    serial      TEXT PRIMARY KEY NOT NULL,
    revoked_ms  INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT ''
) STRICT;
