-- The change log's triggers fire whatever `session_replication_role` a session runs with: under
-- `replica` (a DBA's way round foreign keys, and what replication tools set) an ordinary trigger
-- stays silent, and a change would reach no replica's row cache.
ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_insert_or_delete;
ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_update;
ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_truncate;
-- Their functions write this schema's `changes`, never a session's temporary table of that name
-- (`pg_temp`, searched first unless named, comes last).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION vault_note_change() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION vault_note_truncate() SET search_path = %I, pg_temp', current_schema());
END $$;
