-- Push notifications: the outcome of evaluating each user's push rules against each new event
-- (only events that notify are stored), and the user's pushers.

CREATE TABLE event_push_actions (
    event_id         TEXT NOT NULL,
    room_id          TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    notify           BIGINT NOT NULL,   -- 1 when the actions contain "notify"
    highlight        BIGINT NOT NULL,   -- 1 when the highlight tweak is set
    thread_id        TEXT,              -- thread root for m.thread relations; NULL = main timeline
    actions          TEXT NOT NULL,     -- the matched rule's actions, JSON
    ts               BIGINT NOT NULL,   -- origin_server_ts of the event
    PRIMARY KEY (user_id, event_id)
);
CREATE INDEX event_push_actions_user_room ON event_push_actions (user_id, room_id, stream_ordering);
CREATE INDEX event_push_actions_user_stream ON event_push_actions (user_id, stream_ordering);

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
