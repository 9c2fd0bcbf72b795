-- Idempotent writes: Bind, Rotate and Revoke calls that carried a request_id and changed a
-- binding, with the answer they gave, so that a retry gets the same answer without a second
-- probe. `fingerprint` is an HMAC of the request (code included) under a key derived from data
-- key `key_id`, so it says nothing about the code; rows go with their key at a rotation, and
-- after a day.
CREATE TABLE requests (
    caller      TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    rpc         TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    key_id      INTEGER NOT NULL REFERENCES keyring (key_id),
    answer      BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (caller, request_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX requests_by_age ON requests (created_at);
