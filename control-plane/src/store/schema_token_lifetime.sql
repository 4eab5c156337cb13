-- Catalogue schema, version 3: an external issuer's maximum token lifetime in seconds (gateways
-- refuse a token whose `exp` lies further ahead). NULL: the gateways' default, one day.
ALTER TABLE issuers ADD COLUMN max_token_lifetime INTEGER
    CHECK (max_token_lifetime IS NULL OR max_token_lifetime > 0);
