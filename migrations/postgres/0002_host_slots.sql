-- Probes at once against one provider host, across every replica (`--probe-host-concurrency`):
-- slot 0..N-1 of a host is held by one probe until it is done or `expires_at` passes (a replica
-- that died mid-probe). Milliseconds on the database's clock.
CREATE TABLE host_slots (
    host       text    NOT NULL,
    slot       integer NOT NULL,
    holder     text    NOT NULL,
    expires_at bigint  NOT NULL,
    PRIMARY KEY (host, slot)
);
