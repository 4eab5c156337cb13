-- Catalogue schema on PostgreSQL, version 2: each token signing key's private seed, sealed
-- (XChaCha20-Poly1305, bound to its kid) with the key every replica derives from
-- TOLLGATE_SECRETS_KEY, so that any replica signs tokens every gateway verifies. The database
-- never holds a seed in the clear.
ALTER TABLE token_keys ADD COLUMN sealed TEXT;
