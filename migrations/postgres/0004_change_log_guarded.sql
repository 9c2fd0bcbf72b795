-- The change log, made checkable: the server compares these triggers and functions with this
-- file at every read of the log (see store/postgres/guards.rs).
--
-- The update trigger's test moves from its WHEN clause (whose text PostgreSQL versions print
-- differently) into the function, whose body is compared byte for byte. `txid` is written
-- here, not left to the column's default.
CREATE OR REPLACE FUNCTION vault_note_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A Reveal's usage flush moves last_used_at only: that is no change a cache must drop.
    IF TG_OP = 'UPDATE' AND (OLD.mailbox, OLD.client, OLD.provider, OLD.state, OLD.version, OLD.key_id,
                             OLD.nonce, OLD.ciphertext, OLD.created_at, OLD.rotated_at, OLD.revoked_at,
                             OLD.revoke_reason, OLD.last_verified_at, OLD.last_probe_outcome, OLD.generation)
                            IS NOT DISTINCT FROM
                            (NEW.mailbox, NEW.client, NEW.provider, NEW.state, NEW.version, NEW.key_id,
                             NEW.nonce, NEW.ciphertext, NEW.created_at, NEW.rotated_at, NEW.revoked_at,
                             NEW.revoke_reason, NEW.last_verified_at, NEW.last_probe_outcome, NEW.generation) THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO changes (txid, mailbox, client) VALUES (pg_current_xact_id(), OLD.mailbox, OLD.client);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO changes (txid, mailbox, client) VALUES (pg_current_xact_id(), NEW.mailbox, NEW.client);
    END IF;
    RETURN NULL;
END $$;
-- The whole table at once (TRUNCATE by hand): every cache empties.
CREATE OR REPLACE FUNCTION vault_note_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO changes (txid, mailbox, client) VALUES (pg_current_xact_id(), '', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS credentials_update ON credentials;
CREATE TRIGGER credentials_update AFTER UPDATE ON credentials
    FOR EACH ROW EXECUTE FUNCTION vault_note_change();

-- They fire whatever `session_replication_role` a session runs with: under `replica` (a DBA's
-- way round foreign keys, and what replication tools set) an ordinary trigger stays silent,
-- and a change would reach no replica's row cache.
ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_insert_or_delete;
ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_update;
ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_truncate;

-- Their functions write this schema's `changes`, never a session's temporary table of that
-- name (`pg_temp`, searched first unless named, comes last).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION vault_note_change() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION vault_note_truncate() SET search_path = %I, pg_temp', current_schema());
END $$;
