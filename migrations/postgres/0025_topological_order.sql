-- Topological order (`/messages`, `/context`): each event's depth as this server orders it,
-- computed from its prev events when it is stored (never the PDU's claimed depth alone, so a
-- lying depth cannot move an event past its parents or children), and whether it arrived late
-- (fetched as a missing prev event, or a pending PDU placed below what the room already shows:
-- never delivered by `/sync` as new). Rows stored before this migration take their claimed
-- depth, which is what they were ordered by among themselves.
ALTER TABLE events ADD COLUMN topological_ordering BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN late BIGINT NOT NULL DEFAULT 0;
UPDATE events SET topological_ordering = depth;
CREATE INDEX events_by_room_topological ON events (room_id, topological_ordering, stream_ordering);
