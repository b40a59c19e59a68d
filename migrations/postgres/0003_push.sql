-- Push notifications: the outcome of evaluating each user's push rules against each new event
-- (only events that notify are stored), and the user's pushers.

-- One row per (user, notifying event). The send path writes one row per notified member, and
-- each lands on a different page (keys are per user), so the table is one B-tree: its key
-- serves the unread counts (user, room, after a position); /notifications reads a user's rows
-- across rooms from it too.
CREATE TABLE event_push_actions (
    user_id          TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,   -- the event's position (events.stream_ordering)
    room_id          TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    notify           BIGINT NOT NULL,   -- 1 when the actions contain "notify"
    highlight        BIGINT NOT NULL,   -- 1 when the highlight tweak is set
    thread_id        TEXT,              -- thread root for m.thread relations; NULL = main timeline
    actions          TEXT NOT NULL,     -- the matched rule's actions, JSON
    PRIMARY KEY (user_id, room_id, stream_ordering)
);

CREATE TABLE pushers (
    user_id              TEXT NOT NULL,
    app_id               TEXT NOT NULL,
    pushkey              TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    app_display_name     TEXT NOT NULL,
    device_display_name  TEXT NOT NULL,
    profile_tag          TEXT,
    lang                 TEXT NOT NULL,
    data                 TEXT NOT NULL,  -- PusherData JSON (url, format, custom keys)
    pushkey_ts           BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_app_pushkey ON pushers (app_id, pushkey);
