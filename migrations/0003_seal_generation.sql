-- A random value per seal, bound into the code's AAD (format 2), so that no two seals of a pair
-- share an AAD: a ciphertext written back into its row after a re-bind or rotate fails to
-- decrypt. NULL for rows sealed before it existed (AAD format 1) and for revoked rows.
ALTER TABLE credentials ADD COLUMN generation BLOB;
