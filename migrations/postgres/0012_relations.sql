-- Relations (issue 12): an annotation's `key` in a column of its own, so that a second identical
-- annotation can be refused without reading event content; and an index for the relations of a
-- room by type in stream order (thread lists, bundles).
ALTER TABLE events ADD COLUMN relation_key TEXT;
CREATE INDEX events_by_room_relation ON events (room_id, rel_type, stream_ordering);
