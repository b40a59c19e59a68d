-- Every event read asks which redaction applies to it: MIN(event_id) among the events whose
-- `redacts` is its ID. With an index on `redacts` alone, PostgreSQL may answer MIN() by walking
-- the event_id index and filtering every row (it did on a freshly created, never analysed
-- table: 20 ms per 50-event page instead of 0.1). With `event_id` in the index the lookup is
-- one index-only probe whatever the statistics say.
CREATE INDEX events_by_redacts_id ON events (redacts, event_id);
DROP INDEX events_by_redacts;
