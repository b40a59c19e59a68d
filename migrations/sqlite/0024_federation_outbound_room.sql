-- The room of a queued PDU: local events' queue rows are now written in the events' own
-- transaction, and a PDU of a search-enabled room is stored sealed under that room's data key
-- (like `events.json`), so reading it back needs the room. NULL for EDUs.
ALTER TABLE federation_outbound ADD COLUMN room_id TEXT;
