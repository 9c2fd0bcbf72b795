-- Data-key rotation re-seals the active rows still sealed under an older key; this index makes
-- finding them (and checking that none is left before the old key is deleted) a range scan.
CREATE INDEX credentials_by_key ON credentials (key_id) WHERE state = 1;
