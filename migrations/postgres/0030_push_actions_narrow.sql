-- event_push_actions rows are narrower: a batch of messages writes one row per notified member
-- (100 members, 100 rows per message), so the row's width is most of what a message costs the
-- database. The event ID is read from `events` by position when /notifications needs it, and
-- the actions are NULL when they are the plain ["notify"] most rows have.
ALTER TABLE event_push_actions DROP COLUMN event_id;
ALTER TABLE event_push_actions ALTER COLUMN actions DROP NOT NULL;
UPDATE event_push_actions SET actions = NULL WHERE actions = '["notify"]';
