-- event_push_actions is keyed by (user, position) instead of (user, room, position). A batch of
-- messages notifies every member of its rooms; with the room in the key each (user, room) pair
-- appended to its own leaf page (~1,000 pages per batch for 100 users in 10 rooms), now each
-- user's rows are appended at one place. /notifications reads exactly this key; the unread
-- counts (user, rooms, after the read receipt) scan the user's rows after the oldest receipt of
-- the rooms asked for and filter by room. Positions are unique per event, so the key is as
-- unique as before.
CREATE TABLE event_push_actions_by_position (
    user_id          TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    room_id          TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    notify           BIGINT NOT NULL,
    highlight        BIGINT NOT NULL,
    thread_id        TEXT,
    actions          TEXT NOT NULL,
    PRIMARY KEY (user_id, stream_ordering)
) WITHOUT ROWID;
INSERT INTO event_push_actions_by_position
    (user_id, stream_ordering, room_id, event_id, notify, highlight, thread_id, actions)
    SELECT user_id, stream_ordering, room_id, event_id, notify, highlight, thread_id, actions
    FROM event_push_actions;
DROP TABLE event_push_actions;
ALTER TABLE event_push_actions_by_position RENAME TO event_push_actions;
