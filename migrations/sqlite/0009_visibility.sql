-- History visibility reads a room's m.room.history_visibility changes in stream order; without
-- this index that is a walk over every event of the room.
CREATE INDEX events_by_room_type ON events (room_id, type, stream_ordering);

-- Only an m.room.redaction (a message event, not a state event) redacts. Before this, a
-- `redacts` field in any event's content filled the column and hid its target: clear those.
UPDATE events SET redacts = NULL
    WHERE redacts IS NOT NULL AND (type <> 'm.room.redaction' OR state_key IS NOT NULL);
