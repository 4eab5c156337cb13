-- Catalogue schema, version 2: tokens. Private signing keys live in the data directory
-- (file `token-signing-keys`, mode 0600), never in the database.

-- How a private API version's callers identify themselves (core's AuthMode).
ALTER TABLE api_versions ADD COLUMN auth TEXT NOT NULL DEFAULT 'api_key'
    CHECK (auth IN ('api_key', 'jwt', 'api_key_or_jwt'));

-- tollgate's own token issuer as last configured; a change moves the revision.
CREATE TABLE own_issuer (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    issuer   TEXT NOT NULL,
    audience TEXT NOT NULL
);

-- Public halves of the own issuer's Ed25519 signing keys. One is current (retired_at NULL);
-- a retired key stays published until drop_at (its last token's expiry plus the gateways'
-- leeway) and is then deleted.
CREATE TABLE token_keys (
    kid        TEXT PRIMARY KEY,
    -- base64url Ed25519 public key (the JWK's `x`).
    x          TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER,
    drop_at    INTEGER
);

CREATE TABLE service_accounts (
    id         TEXT PRIMARY KEY,
    -- JSON array of scopes, sorted.
    scopes     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- OAuth client credentials (RFC 6749 §4.4): of a client version (gateway tokens) or of a
-- service account (management tokens). The secret is stored only as its SHA-256.
CREATE TABLE oauth_credentials (
    client_id       TEXT PRIMARY KEY,
    secret_sha256   BLOB NOT NULL,
    client_org      TEXT,
    client          TEXT,
    client_version  TEXT,
    service_account TEXT REFERENCES service_accounts (id),
    created_at      INTEGER NOT NULL,
    -- Set when replaced: the old secret works until then.
    expires_at      INTEGER,
    CHECK ((client_org IS NULL) <> (service_account IS NULL)),
    FOREIGN KEY (client_org, client, client_version)
        REFERENCES client_versions (org, client, version)
);
CREATE INDEX oauth_credentials_client_version
    ON oauth_credentials (client_org, client, client_version);

-- External issuers (Keycloak, Entra ID, Auth0…) whose tokens gateways accept.
CREATE TABLE issuers (
    issuer       TEXT PRIMARY KEY,
    -- JSON array of accepted audiences.
    audiences    TEXT NOT NULL,
    -- The JWKS document as given.
    jwks         TEXT NOT NULL,
    client_claim TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- A client version's identity at an external issuer.
CREATE TABLE token_subjects (
    issuer     TEXT NOT NULL REFERENCES issuers (issuer),
    value      TEXT NOT NULL,
    org        TEXT NOT NULL,
    client     TEXT NOT NULL,
    version    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, value),
    FOREIGN KEY (org, client, version) REFERENCES client_versions (org, client, version)
);
CREATE INDEX token_subjects_client_version ON token_subjects (org, client, version);
