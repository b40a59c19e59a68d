-- Push rule outcomes are stored once per event and outcome, not once per notified member. A
-- message to a 100-member room notified 99 members the same way and wrote 99 rows (each into
-- its member's part of the key space: a batch of messages touched a leaf page per member); now
-- it writes one row naming its audience, the set of members who got that outcome. Audiences
-- repeat from one message to the next (the same room, the same sender), so their members are
-- written once, when a set is first seen.
--
-- An audience's ID is its single member's user ID, or for two or more members 32 hex digits of
-- the SHA-256 of their sorted IDs (a user ID begins with '@', so the two never meet). Migrated
-- rows become audiences of one.
CREATE TABLE push_audience_members (
    audience_id TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    PRIMARY KEY (audience_id, user_id)
) WITHOUT ROWID;
CREATE INDEX push_audience_members_by_user ON push_audience_members (user_id, audience_id);

CREATE TABLE event_push_outcomes (
    stream_ordering  BIGINT NOT NULL,   -- the event's position (events.stream_ordering)
    audience_id      TEXT NOT NULL,
    room_id          TEXT NOT NULL,
    notify           BIGINT NOT NULL,
    highlight        BIGINT NOT NULL,
    thread_id        TEXT,
    actions          TEXT,              -- the matched rule's actions, JSON; NULL = ["notify"]
    PRIMARY KEY (stream_ordering, audience_id)
) WITHOUT ROWID;
CREATE INDEX event_push_outcomes_by_room ON event_push_outcomes (room_id, stream_ordering);
CREATE INDEX event_push_outcomes_by_audience ON event_push_outcomes (audience_id, stream_ordering);

INSERT INTO push_audience_members (audience_id, user_id)
    SELECT DISTINCT user_id, user_id FROM event_push_actions;
INSERT INTO event_push_outcomes
    (stream_ordering, audience_id, room_id, notify, highlight, thread_id, actions)
    SELECT stream_ordering, user_id, room_id, notify, highlight, thread_id, actions
    FROM event_push_actions;
DROP TABLE event_push_actions;
