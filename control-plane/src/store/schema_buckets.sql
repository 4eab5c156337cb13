-- Catalogue schema, version 4: the snapshot kept rendered, one key-directory bucket at a time
-- (issue 12), so that a write re-renders only the buckets it touched.
--
-- Which buckets a write touched is recorded by triggers on the tables the buckets are made of
-- (keys, token subjects, client credentials, contracts): no call site can forget one. The store
-- re-renders exactly those inside the write's transaction (store/buckets.rs).

-- The bucket of a key is the first two bytes of its SHA-256 (core::keydir::bucket_of), read off
-- the stored lowercase hex.
ALTER TABLE api_keys ADD COLUMN bucket INTEGER GENERATED ALWAYS AS (
    (instr('0123456789abcdef', substr(sha256, 1, 1)) - 1) * 4096
    + (instr('0123456789abcdef', substr(sha256, 2, 1)) - 1) * 256
    + (instr('0123456789abcdef', substr(sha256, 3, 1)) - 1) * 16
    + (instr('0123456789abcdef', substr(sha256, 4, 1)) - 1)
) VIRTUAL;
CREATE INDEX api_keys_bucket ON api_keys (bucket);
-- The expiry sweep of every gateway-visible write reads only what expired.
CREATE INDEX api_keys_expiry ON api_keys (expires_at) WHERE expires_at IS NOT NULL;

-- The bucket of a token subject's directory record (core::token::subject_digest), set by the
-- triggers below through the control plane's SQL function `tollgate_subject_bucket`.
ALTER TABLE token_subjects ADD COLUMN bucket INTEGER;
CREATE INDEX token_subjects_bucket ON token_subjects (bucket);
-- Client credentials are token subjects of the own issuer: NULL while there is none, and for a
-- service account's credentials (management tokens never reach gateways).
ALTER TABLE oauth_credentials ADD COLUMN bucket INTEGER;
CREATE INDEX oauth_credentials_bucket ON oauth_credentials (bucket) WHERE bucket IS NOT NULL;
CREATE INDEX oauth_credentials_expiry ON oauth_credentials (expires_at) WHERE expires_at IS NOT NULL;

UPDATE token_subjects SET bucket = tollgate_subject_bucket(issuer, value);
UPDATE oauth_credentials SET bucket = tollgate_subject_bucket(
    (SELECT issuer FROM own_issuer WHERE id = 1), client_id)
WHERE client_org IS NOT NULL;

-- Buckets touched by the write in progress; emptied by the same write before it commits.
CREATE TABLE dirty_buckets (bucket INTEGER PRIMARY KEY);

CREATE TRIGGER api_keys_inserted AFTER INSERT ON api_keys BEGIN
    INSERT OR IGNORE INTO dirty_buckets (bucket) VALUES (NEW.bucket);
END;
CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys BEGIN
    INSERT OR IGNORE INTO dirty_buckets (bucket) VALUES (OLD.bucket);
END;
CREATE TRIGGER api_keys_updated AFTER UPDATE ON api_keys BEGIN
    INSERT OR IGNORE INTO dirty_buckets (bucket) VALUES (OLD.bucket), (NEW.bucket);
END;

CREATE TRIGGER token_subjects_inserted AFTER INSERT ON token_subjects BEGIN
    UPDATE token_subjects SET bucket = tollgate_subject_bucket(NEW.issuer, NEW.value)
    WHERE issuer = NEW.issuer AND value = NEW.value;
END;
CREATE TRIGGER token_subjects_deleted AFTER DELETE ON token_subjects
WHEN OLD.bucket IS NOT NULL BEGIN
    INSERT OR IGNORE INTO dirty_buckets (bucket) VALUES (OLD.bucket);
END;
-- Also fires for the bucket set just after an insert.
CREATE TRIGGER token_subjects_updated AFTER UPDATE ON token_subjects BEGIN
    INSERT OR IGNORE INTO dirty_buckets (bucket)
    SELECT b FROM (SELECT OLD.bucket AS b UNION SELECT NEW.bucket) WHERE b IS NOT NULL;
END;

CREATE TRIGGER oauth_credentials_inserted AFTER INSERT ON oauth_credentials
WHEN NEW.client_org IS NOT NULL BEGIN
    UPDATE oauth_credentials SET bucket = tollgate_subject_bucket(
        (SELECT issuer FROM own_issuer WHERE id = 1), NEW.client_id)
    WHERE client_id = NEW.client_id;
END;
CREATE TRIGGER oauth_credentials_deleted AFTER DELETE ON oauth_credentials
WHEN OLD.bucket IS NOT NULL BEGIN
    INSERT OR IGNORE INTO dirty_buckets (bucket) VALUES (OLD.bucket);
END;
CREATE TRIGGER oauth_credentials_updated AFTER UPDATE ON oauth_credentials BEGIN
    INSERT OR IGNORE INTO dirty_buckets (bucket)
    SELECT b FROM (SELECT OLD.bucket AS b UNION SELECT NEW.bucket) WHERE b IS NOT NULL;
END;

-- The own issuer names every client credential's subject: renaming it moves them all.
CREATE TRIGGER own_issuer_inserted AFTER INSERT ON own_issuer BEGIN
    UPDATE oauth_credentials SET bucket = tollgate_subject_bucket(NEW.issuer, client_id)
    WHERE client_org IS NOT NULL;
END;
CREATE TRIGGER own_issuer_updated AFTER UPDATE OF issuer ON own_issuer
WHEN OLD.issuer IS NOT NEW.issuer BEGIN
    UPDATE oauth_credentials SET bucket = tollgate_subject_bucket(NEW.issuer, client_id)
    WHERE client_org IS NOT NULL;
END;

-- A bucket carries the contracts of every client version with a record in it.
CREATE TRIGGER contracts_inserted AFTER INSERT ON contracts BEGIN
    INSERT OR IGNORE INTO dirty_buckets (bucket)
    SELECT bucket FROM api_keys
    WHERE org = NEW.client_org AND client = NEW.client AND version = NEW.client_version
    UNION SELECT bucket FROM token_subjects
    WHERE org = NEW.client_org AND client = NEW.client AND version = NEW.client_version
      AND bucket IS NOT NULL
    UNION SELECT bucket FROM oauth_credentials
    WHERE client_org = NEW.client_org AND client = NEW.client
      AND client_version = NEW.client_version AND bucket IS NOT NULL;
END;
CREATE TRIGGER contracts_deleted AFTER DELETE ON contracts BEGIN
    INSERT OR IGNORE INTO dirty_buckets (bucket)
    SELECT bucket FROM api_keys
    WHERE org = OLD.client_org AND client = OLD.client AND version = OLD.client_version
    UNION SELECT bucket FROM token_subjects
    WHERE org = OLD.client_org AND client = OLD.client AND version = OLD.client_version
      AND bucket IS NOT NULL
    UNION SELECT bucket FROM oauth_credentials
    WHERE client_org = OLD.client_org AND client = OLD.client
      AND client_version = OLD.client_version AND bucket IS NOT NULL;
END;
CREATE TRIGGER contracts_updated AFTER UPDATE ON contracts BEGIN
    INSERT OR IGNORE INTO dirty_buckets (bucket)
    SELECT bucket FROM api_keys
    WHERE (org = OLD.client_org AND client = OLD.client AND version = OLD.client_version)
       OR (org = NEW.client_org AND client = NEW.client AND version = NEW.client_version)
    UNION SELECT bucket FROM token_subjects
    WHERE ((org = OLD.client_org AND client = OLD.client AND version = OLD.client_version)
        OR (org = NEW.client_org AND client = NEW.client AND version = NEW.client_version))
      AND bucket IS NOT NULL
    UNION SELECT bucket FROM oauth_credentials
    WHERE ((client_org = OLD.client_org AND client = OLD.client
            AND client_version = OLD.client_version)
        OR (client_org = NEW.client_org AND client = NEW.client
            AND client_version = NEW.client_version))
      AND bucket IS NOT NULL;
END;

-- Every bucket's rendered content (core's client versions restricted to the bucket's records,
-- and their contracts, as JSON) from the revision that wrote it until the one that replaced it
-- (`superseded`, NULL while current). Versions stay while a recent revision may still be
-- fetched page by page; a bucket without records is stored with `records` 0 while it is needed
-- to say so.
CREATE TABLE snapshot_buckets (
    bucket     INTEGER NOT NULL CHECK (bucket BETWEEN 0 AND 65535),
    revision   INTEGER NOT NULL,
    superseded INTEGER,
    records    INTEGER NOT NULL,
    body       BLOB NOT NULL,
    PRIMARY KEY (bucket, revision)
) WITHOUT ROWID;
CREATE INDEX snapshot_buckets_superseded ON snapshot_buckets (superseded)
    WHERE superseded IS NOT NULL;
CREATE INDEX snapshot_buckets_current ON snapshot_buckets (bucket, records)
    WHERE superseded IS NULL;

-- What every page repeats (plans, API versions, issuers), as JSON, from the revision that
-- changed it.
CREATE TABLE snapshot_shells (
    revision INTEGER PRIMARY KEY,
    body     BLOB NOT NULL
);

-- Recent revisions: when each committed and which buckets it changed (deltas from an older
-- revision are the union of the changes since).
CREATE TABLE snapshot_revisions (
    revision     INTEGER PRIMARY KEY,
    committed_at INTEGER NOT NULL
);
CREATE TABLE snapshot_changes (
    revision INTEGER NOT NULL,
    bucket   INTEGER NOT NULL,
    PRIMARY KEY (revision, bucket)
) WITHOUT ROWID;

-- The revision the stored buckets describe; NULL until they are first built (an upgraded
-- catalogue builds them once, at its first start).
CREATE TABLE snapshot_state (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER
);
INSERT INTO snapshot_state (id, revision) VALUES (1, NULL);
-- What pruning looks for: emptied buckets no revision still being read needs.
CREATE INDEX snapshot_buckets_emptied ON snapshot_buckets (revision)
    WHERE superseded IS NULL AND records = 0;
