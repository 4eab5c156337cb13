-- Catalogue schema, version 3: an external issuer's maximum token lifetime in seconds (gateways
-- refuse a token whose `exp` lies further ahead). NULL: the gateways' default, one day.
ALTER TABLE issuers ADD COLUMN max_token_lifetime INTEGER
    CHECK (max_token_lifetime IS NULL OR max_token_lifetime > 0);

-- Tokens now name their credentials (the own issuer's client claim is `client_id`, one subject
-- per credential): an upgraded catalogue renders a different snapshot, so it gets a revision
-- of its own and gateways fetch it. A new catalogue (no own issuer yet) starts as before.
UPDATE gateway_revision SET revision = revision + 1
WHERE id = 1 AND EXISTS (SELECT 1 FROM own_issuer);
