-- Catalogue schema, version 5: fleet-wide counting (`tollgate serve --redis`) is catalogue
-- state, so that gateways learn from a new revision when a restart turns it on or off. One row
-- while counts are fleet-wide, with the policy gateways follow when the broker is away; none
-- while each gateway counts alone.
CREATE TABLE fleet_settings (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    fallback TEXT NOT NULL CHECK (fallback IN ('share', 'closed', 'local'))
);
