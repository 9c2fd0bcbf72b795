-- A Revoke's reason, kept in the trail: a re-Bind deletes the tombstone that held it.
ALTER TABLE audit_events ADD COLUMN reason text NOT NULL DEFAULT '';
