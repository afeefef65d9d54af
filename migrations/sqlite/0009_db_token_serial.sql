-- A database token is bound to the postern login (user certificate serial) it was issued
-- under: revoking that certificate revokes the token and ends its sessions.
ALTER TABLE db_tokens ADD COLUMN cert_serial TEXT;
