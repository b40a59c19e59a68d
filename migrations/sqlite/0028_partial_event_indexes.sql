-- Most events are plain messages: no relation, no redaction target, no state key. Indexes that
-- only queries for those columns read now hold only the rows that have them, so a message is
-- written into four b-trees fewer. The queries that read them (store/relations.rs, the redaction
-- lookups of store/events.rs, history visibility in store/state.rs) name the column with `=`,
-- `IN` or `IS NOT NULL`, which both databases need to use a partial index.
DROP INDEX events_by_relation;
CREATE INDEX events_by_relation ON events (relates_to, rel_type) WHERE relates_to IS NOT NULL;
DROP INDEX events_by_room_relation;
CREATE INDEX events_by_room_relation ON events (room_id, rel_type, stream_ordering) WHERE rel_type IS NOT NULL;
DROP INDEX events_by_redacts_id;
CREATE INDEX events_by_redacts_id ON events (redacts, event_id) WHERE redacts IS NOT NULL;
-- History visibility reads state events by type (`state_key = ''`).
DROP INDEX events_by_room_type;
CREATE INDEX events_by_room_type ON events (room_id, type, stream_ordering) WHERE state_key IS NOT NULL;
