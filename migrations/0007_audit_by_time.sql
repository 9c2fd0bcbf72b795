-- The audit trail is listed newest first by time: a Reveal aggregated in memory and written at
-- the next flush sorts by its last use, not by when it was written. Keyset pages walk (at, id).
DROP INDEX audit_events_by_pair;
DROP INDEX audit_events_by_caller;
CREATE INDEX audit_events_by_time ON audit_events (at, id);
CREATE INDEX audit_events_by_pair ON audit_events (mailbox, client, at, id);
CREATE INDEX audit_events_by_caller ON audit_events (caller, at, id);
