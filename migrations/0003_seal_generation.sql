-- A random value per seal, bound into the code's AAD (format 2), so that no two seals of a pair
-- share an AAD: a ciphertext written back into its row after a re-bind or rotate fails to
-- decrypt. NULL for rows sealed before it existed (AAD format 1) and for revoked rows.
ALTER TABLE credentials ADD COLUMN generation BLOB;

-- Start-up re-seals active rows still without a generation; this keeps finding them a lookup
-- in a (usually empty) partial index rather than a scan of every binding.
CREATE INDEX credentials_legacy_sealed ON credentials (mailbox, client) WHERE state = 1 AND generation IS NULL;
