-- Federated rooms: events that are known but not part of the timeline, and events that are
-- stored but never served.

-- Outliers (auth chains and state received with a join, events fetched to check another): in
-- the event log, servable by ID, but every timeline, sync and state-group query skips them.
ALTER TABLE events ADD COLUMN outlier BIGINT NOT NULL DEFAULT 0;

-- Rejected events (failed auth against their auth events) and soft-failed ones (passed auth but
-- not against the room's current state): kept so they are not fetched and checked again, never
-- served, never a prev or auth event, never a forward extremity.
CREATE TABLE unserved_events (
    event_id     TEXT PRIMARY KEY,
    room_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,        -- 'rejected' or 'soft_failed'
    reason       TEXT NOT NULL,
    json         TEXT NOT NULL,
    received_ts  BIGINT NOT NULL
);

-- Invites of local users into rooms this server is not in: the invite (an outlier) and the
-- stripped state the inviting server sent, shown in the invitee's /sync.
CREATE TABLE remote_invites (
    event_id      TEXT PRIMARY KEY,
    room_id       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    room_version  TEXT NOT NULL,
    invite_state  TEXT NOT NULL,        -- JSON array of stripped state events
    received_ts   BIGINT NOT NULL
);
CREATE INDEX remote_invites_by_user ON remote_invites (user_id, room_id);
