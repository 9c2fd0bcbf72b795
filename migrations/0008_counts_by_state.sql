-- The metrics count bindings by state and active ones by last probe outcome at every scrape.
-- Without this index each count read the whole table (about 5 s at a million bindings); with
-- it, a covering index of a few bytes per row.
CREATE INDEX credentials_by_outcome_state ON credentials (last_probe_outcome, state);
