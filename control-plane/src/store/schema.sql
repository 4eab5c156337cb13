-- Catalogue schema, version 1. Rows are never deleted except contracts (revocation) and
-- rotated-out keys past their grace period; everything else is immutable history or a draft.

-- The revision gateways see. Bumped in the same transaction as every change to the snapshot.
CREATE TABLE gateway_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO gateway_revision (id, revision) VALUES (1, 1);

CREATE TABLE orgs (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE plans (
    org        TEXT NOT NULL REFERENCES orgs (id),
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org, id)
);

CREATE TABLE plan_versions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    org        TEXT NOT NULL,
    plan       TEXT NOT NULL,
    version    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- NULL while draft; set once by lock, never cleared.
    locked_at  INTEGER,
    UNIQUE (org, plan, version),
    FOREIGN KEY (org, plan) REFERENCES plans (org, id)
);

CREATE TABLE plan_limits (
    org      TEXT NOT NULL,
    plan     TEXT NOT NULL,
    version  TEXT NOT NULL,
    per      TEXT NOT NULL CHECK (per IN ('second', 'minute', 'hour', 'day', 'month')),
    requests INTEGER NOT NULL CHECK (requests > 0),
    PRIMARY KEY (org, plan, version, per),
    FOREIGN KEY (org, plan, version) REFERENCES plan_versions (org, plan, version)
);

CREATE TABLE apis (
    org        TEXT NOT NULL REFERENCES orgs (id),
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org, id)
);

CREATE TABLE api_versions (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    org             TEXT NOT NULL,
    api             TEXT NOT NULL,
    version         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('draft', 'published', 'retired')),
    public          INTEGER NOT NULL,
    path_prefix     TEXT NOT NULL,
    -- JSON array of lowercased, sorted, distinct host names (no ports).
    hosts           TEXT NOT NULL,
    forward_api_key INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    published_at    INTEGER,
    retired_at      INTEGER,
    UNIQUE (org, api, version),
    FOREIGN KEY (org, api) REFERENCES apis (org, id)
);
CREATE INDEX api_versions_routing ON api_versions (path_prefix, hosts);

CREATE TABLE api_version_plans (
    org          TEXT NOT NULL,
    api          TEXT NOT NULL,
    version      TEXT NOT NULL,
    plan_org     TEXT NOT NULL,
    plan         TEXT NOT NULL,
    plan_version TEXT NOT NULL,
    -- One version per plan: a contract names the plan, the API version decides which version.
    PRIMARY KEY (org, api, version, plan_org, plan),
    FOREIGN KEY (org, api, version) REFERENCES api_versions (org, api, version),
    FOREIGN KEY (plan_org, plan, plan_version) REFERENCES plan_versions (org, plan, version)
);

CREATE TABLE clients (
    org        TEXT NOT NULL REFERENCES orgs (id),
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org, id)
);

CREATE TABLE client_versions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    org        TEXT NOT NULL,
    client     TEXT NOT NULL,
    version    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (org, client, version),
    FOREIGN KEY (org, client) REFERENCES clients (org, id)
);

CREATE TABLE api_keys (
    id         INTEGER PRIMARY KEY,
    org        TEXT NOT NULL,
    client     TEXT NOT NULL,
    version    TEXT NOT NULL,
    -- Lowercase hex SHA-256 of the key; the key itself is never stored.
    sha256     TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    -- NULL for the current key; set when rotated out.
    expires_at INTEGER,
    FOREIGN KEY (org, client, version) REFERENCES client_versions (org, client, version)
);
CREATE INDEX api_keys_client_version ON api_keys (org, client, version);

CREATE TABLE contracts (
    -- AUTOINCREMENT: ids are never reused, because an id names a counter at the gateways.
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    client_org     TEXT NOT NULL,
    client         TEXT NOT NULL,
    client_version TEXT NOT NULL,
    api_org        TEXT NOT NULL,
    api            TEXT NOT NULL,
    api_version    TEXT NOT NULL,
    plan_org       TEXT NOT NULL,
    plan           TEXT NOT NULL,
    plan_version   TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    UNIQUE (client_org, client, client_version, api_org, api, api_version),
    FOREIGN KEY (client_org, client, client_version)
        REFERENCES client_versions (org, client, version),
    FOREIGN KEY (api_org, api, api_version) REFERENCES api_versions (org, api, version),
    FOREIGN KEY (plan_org, plan, plan_version) REFERENCES plan_versions (org, plan, version)
);
