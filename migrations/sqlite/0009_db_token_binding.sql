-- A database token is bound to the postern login (user certificate serial) it was issued
-- under: revoking that certificate revokes the token and ends its sessions.
ALTER TABLE db_tokens ADD COLUMN cert_serial TEXT;
-- Its SCRAM-SHA-256 verifier (stored key, server key), so clients prove they hold the
-- token without sending it.
ALTER TABLE db_tokens ADD COLUMN scram_stored_key BLOB;
ALTER TABLE db_tokens ADD COLUMN scram_server_key BLOB;
CREATE INDEX db_tokens_user ON db_tokens (user_name, expires_ms);
