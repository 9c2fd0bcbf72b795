-- Scheduled verification re-probes active codes whose last check (or binding) is oldest first;
-- this index makes finding the ones due a range scan, even at a million rows.
CREATE INDEX credentials_by_verification ON credentials (coalesce(last_verified_at, created_at), mailbox, client)
    WHERE state = 1;
