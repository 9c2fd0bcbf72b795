-- The PostgreSQL schema: the same tables as the SQLite one (see ../0001_init.sql onwards for
-- what each column means), plus what several replicas share: the change log they invalidate
-- their caches from, the probe budget and the pair leases. Times are Unix milliseconds.

CREATE TABLE vault_meta (
    id          integer PRIMARY KEY CHECK (id = 1),
    kdf_salt    bytea   NOT NULL,
    kdf_m_kib   bigint  NOT NULL,
    kdf_t       bigint  NOT NULL,
    kdf_p       bigint  NOT NULL,
    created_at  bigint  NOT NULL
);

CREATE TABLE keyring (
    key_id      bigint PRIMARY KEY CHECK (key_id BETWEEN 0 AND 4294967295),
    nonce       bytea  NOT NULL,
    wrapped_dek bytea  NOT NULL,
    created_at  bigint NOT NULL
);

CREATE TABLE credentials (
    mailbox            text     NOT NULL,
    client             text     NOT NULL,
    provider           text     NOT NULL,
    state              smallint NOT NULL CHECK (state IN (1, 2)),
    version            bigint   NOT NULL CHECK (version >= 1),
    key_id             bigint   REFERENCES keyring (key_id),
    nonce              bytea,
    ciphertext         bytea,
    created_at         bigint   NOT NULL,
    rotated_at         bigint,
    revoked_at         bigint,
    revoke_reason      text,
    last_used_at       bigint,
    last_verified_at   bigint,
    last_probe_outcome integer,
    generation         bytea,
    PRIMARY KEY (mailbox, client),
    CHECK ((state = 1) = (ciphertext IS NOT NULL AND nonce IS NOT NULL AND key_id IS NOT NULL))
);

CREATE INDEX credentials_by_client ON credentials (client, mailbox);
CREATE INDEX credentials_unused ON credentials ((coalesce(last_used_at, created_at)), mailbox, client)
    WHERE state = 1;
CREATE INDEX credentials_by_verification ON credentials ((coalesce(last_verified_at, created_at)), mailbox, client)
    WHERE state = 1;
CREATE INDEX credentials_by_key ON credentials (key_id) WHERE state = 1;
CREATE INDEX credentials_by_outcome_state ON credentials (last_probe_outcome, state);

CREATE TABLE audit_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            bigint NOT NULL,
    caller        text   NOT NULL,
    caller_role   text   NOT NULL,
    rpc           text   NOT NULL,
    mailbox       text   NOT NULL,
    client        text   NOT NULL,
    outcome       text   NOT NULL,
    probe_outcome integer,
    count         bigint NOT NULL DEFAULT 1,
    first_at      bigint NOT NULL
);

CREATE INDEX audit_events_by_time ON audit_events (at, id);
CREATE INDEX audit_events_by_pair ON audit_events (mailbox, client, at, id);
CREATE INDEX audit_events_by_caller ON audit_events (caller, at, id);

CREATE TABLE tokens (
    id           text   PRIMARY KEY,
    role         text   NOT NULL,
    digest       bytea  NOT NULL,
    key_id       bigint NOT NULL REFERENCES keyring (key_id),
    mac          bytea  NOT NULL,
    created_at   bigint NOT NULL,
    last_used_at bigint,
    revoked_at   bigint
);

CREATE TABLE requests (
    caller      text   NOT NULL,
    request_id  text   NOT NULL,
    rpc         text   NOT NULL,
    fingerprint bytea  NOT NULL,
    key_id      bigint NOT NULL,
    answer      bytea  NOT NULL,
    mac         bytea  NOT NULL,
    created_at  bigint NOT NULL,
    PRIMARY KEY (caller, request_id)
);

CREATE INDEX requests_by_age ON requests (created_at);

-- Every change to a binding other than its last use, by whoever made it (a replica, or a hand
-- edit): replicas drop the pairs named here from their row caches. `txid` lets a reader that
-- polls find rows of transactions that were still running at its previous poll (a sequence
-- alone would skip a row whose number was taken before, but committed after, a later one's).
CREATE TABLE changes (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid    xid8   NOT NULL DEFAULT pg_current_xact_id(),
    mailbox text   NOT NULL,
    client  text   NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX changes_by_txid ON changes (txid);

-- `SET search_path FROM CURRENT`: the log written is this schema's, whoever edits the table.
CREATE FUNCTION vault_note_change() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO changes (mailbox, client) VALUES (OLD.mailbox, OLD.client);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO changes (mailbox, client) VALUES (NEW.mailbox, NEW.client);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER credentials_insert_or_delete AFTER INSERT OR DELETE ON credentials
    FOR EACH ROW EXECUTE FUNCTION vault_note_change();
-- A Reveal's usage flush moves last_used_at only: that is no change a cache must drop.
CREATE TRIGGER credentials_update AFTER UPDATE ON credentials
    FOR EACH ROW WHEN ((OLD.mailbox, OLD.client, OLD.provider, OLD.state, OLD.version, OLD.key_id, OLD.nonce,
                        OLD.ciphertext, OLD.created_at, OLD.rotated_at, OLD.revoked_at, OLD.revoke_reason,
                        OLD.last_verified_at, OLD.last_probe_outcome, OLD.generation)
                       IS DISTINCT FROM
                       (NEW.mailbox, NEW.client, NEW.provider, NEW.state, NEW.version, NEW.key_id, NEW.nonce,
                        NEW.ciphertext, NEW.created_at, NEW.rotated_at, NEW.revoked_at, NEW.revoke_reason,
                        NEW.last_verified_at, NEW.last_probe_outcome, NEW.generation))
    EXECUTE FUNCTION vault_note_change();
-- The whole table at once (TRUNCATE by hand): every cache empties.
CREATE FUNCTION vault_note_truncate() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO changes (mailbox, client) VALUES ('', '');
    RETURN NULL;
END $$;
CREATE TRIGGER credentials_truncate AFTER TRUNCATE ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION vault_note_truncate();

-- The probe budget per mailbox, shared by every replica: a token bucket, refilled lazily.
CREATE TABLE probe_budget (
    mailbox    text   PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at bigint NOT NULL
);

-- A pair's change runs on one replica at a time: the replica holds the lease until it is done
-- or `expires_at` passes (a replica that died mid-probe).
CREATE TABLE pair_leases (
    mailbox    text   NOT NULL,
    client     text   NOT NULL,
    holder     text   NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (mailbox, client)
);
