-- Caller tokens. Only a SHA-256 digest of each token is kept. `mac` is an HMAC over the row
-- under a key derived from the keyring, so a row inserted by hand (without the passphrase) is
-- refused at use. Times are Unix milliseconds.
CREATE TABLE tokens (
    id           TEXT    PRIMARY KEY,
    role         TEXT    NOT NULL,
    digest       BLOB    NOT NULL,
    key_id       INTEGER NOT NULL REFERENCES keyring (key_id),
    mac          BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;
