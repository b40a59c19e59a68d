-- event_push_actions rows are narrower: a batch of messages writes one row per notified member
-- (100 members, 100 rows per message), so the row's width is most of what a message costs the
-- database. The event ID is read from `events` by position when /notifications needs it, and
-- the actions are NULL when they are the plain ["notify"] most rows have.
CREATE TABLE event_push_actions_narrow (
    user_id          TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,   -- the event's position (events.stream_ordering)
    room_id          TEXT NOT NULL,
    notify           BIGINT NOT NULL,
    highlight        BIGINT NOT NULL,
    thread_id        TEXT,
    actions          TEXT,              -- the matched rule's actions, JSON; NULL = ["notify"]
    PRIMARY KEY (user_id, stream_ordering)
) WITHOUT ROWID;
INSERT INTO event_push_actions_narrow
    (user_id, stream_ordering, room_id, notify, highlight, thread_id, actions)
    SELECT user_id, stream_ordering, room_id, notify, highlight, thread_id,
           CASE WHEN actions = '["notify"]' THEN NULL ELSE actions END
    FROM event_push_actions;
DROP TABLE event_push_actions;
ALTER TABLE event_push_actions_narrow RENAME TO event_push_actions;
