-- Unlock material: Argon2id parameters and salt (one row).
CREATE TABLE vault_meta (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    kdf_salt    BLOB    NOT NULL,
    kdf_m_kib   INTEGER NOT NULL,
    kdf_t       INTEGER NOT NULL,
    kdf_p       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

-- Data-encryption keys, each sealed under the KEK. The highest key_id is the active key.
CREATE TABLE keyring (
    key_id      INTEGER PRIMARY KEY,
    nonce       BLOB    NOT NULL,
    wrapped_dek BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

-- One row per (mailbox, client). A revoked row keeps its metadata but no ciphertext.
-- Times are Unix milliseconds.
CREATE TABLE credentials (
    mailbox            TEXT    NOT NULL,
    client             TEXT    NOT NULL,
    provider           TEXT    NOT NULL,
    state              INTEGER NOT NULL CHECK (state IN (1, 2)),
    version            INTEGER NOT NULL CHECK (version >= 1),
    key_id             INTEGER REFERENCES keyring (key_id),
    nonce              BLOB,
    ciphertext         BLOB,
    created_at         INTEGER NOT NULL,
    rotated_at         INTEGER,
    revoked_at         INTEGER,
    revoke_reason      TEXT,
    last_used_at       INTEGER,
    last_verified_at   INTEGER,
    last_probe_outcome INTEGER,
    PRIMARY KEY (mailbox, client),
    -- An active row always holds a ciphertext; a revoked row never does.
    CHECK ((state = 1) = (ciphertext IS NOT NULL AND nonce IS NOT NULL AND key_id IS NOT NULL))
) STRICT, WITHOUT ROWID;

CREATE INDEX credentials_by_client ON credentials (client, mailbox);

-- The quarterly review walks active bindings by their last activity (last use, else binding
-- time), oldest first; this index makes each page a range scan, even at a million rows.
CREATE INDEX credentials_unused ON credentials (coalesce(last_used_at, created_at), mailbox, client)
    WHERE state = 1;

-- Every mutating RPC writes one event here, in the same transaction as its change. Reveals are
-- aggregated: one row per (caller, pair) and flush window, with a count and first/last time.
CREATE TABLE audit_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    caller        TEXT    NOT NULL,
    caller_role   TEXT    NOT NULL,
    rpc           TEXT    NOT NULL,
    mailbox       TEXT    NOT NULL,
    client        TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    probe_outcome INTEGER,
    count         INTEGER NOT NULL DEFAULT 1,
    first_at      INTEGER NOT NULL
) STRICT;

CREATE INDEX audit_events_by_pair ON audit_events (mailbox, client, id);
CREATE INDEX audit_events_by_caller ON audit_events (caller, id);
