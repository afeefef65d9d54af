-- The audit key each replica signs with (its SHA-256 fingerprint), so retiring a key
-- waits until no live replica signs with it.
ALTER TABLE replicas ADD COLUMN audit_key TEXT;
