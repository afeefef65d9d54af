-- The SSH host key each replica offers in key exchange (its SHA-256 fingerprint), so
-- retiring the key before the last rotation waits until every live replica offers the
-- new one.
ALTER TABLE replicas ADD COLUMN host_key TEXT;
