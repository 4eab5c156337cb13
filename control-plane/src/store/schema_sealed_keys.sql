-- Catalogue schema, version 6: beside each token signing key, its private seed sealed with the
-- secrets key, where keys are kept in the database (PostgreSQL replicas, which must all sign
-- with the same keys). On SQLite the seeds stay in the data directory's key file and the column
-- is NULL.
ALTER TABLE token_keys ADD COLUMN sealed TEXT;
