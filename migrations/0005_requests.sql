-- Idempotent writes: Bind, Rotate and Revoke calls that carried a request_id and changed a
-- binding, with the answer they gave, so that a retry gets the same answer without a second
-- probe. `fingerprint` is an HMAC of the request (code included) and `mac` one of the whole row,
-- both under a key derived from data key `key_id`: the row says nothing about the code, and an
-- edited row is refused. A row outlives its key (no foreign key): once the key is retired, a
-- retry with its id can no longer be compared and is refused rather than run twice. Rows older
-- than a day are deleted by the next write.
CREATE TABLE requests (
    caller      TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    rpc         TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    key_id      INTEGER NOT NULL,
    answer      BLOB    NOT NULL,
    mac         BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (caller, request_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX requests_by_age ON requests (created_at);
