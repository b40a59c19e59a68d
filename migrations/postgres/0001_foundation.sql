-- Foundation schema: accounts, the event log with its DAG and state, and per-user data.
-- Event content is opaque (the `json` column holds the PDU exactly as federated); whatever a
-- query needs is in a column of its own.

CREATE TABLE server_signing_keys (
    key_id      TEXT PRIMARY KEY,
    pkcs8       TEXT NOT NULL,          -- base64 PKCS#8 document
    created_ts  BIGINT NOT NULL
);

CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    password_hash  TEXT,
    displayname    TEXT,
    avatar_url     TEXT,
    deactivated    BIGINT NOT NULL DEFAULT 0,
    created_ts     BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    display_name  TEXT,
    last_seen_ts  BIGINT,
    last_seen_ip  TEXT,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE access_tokens (
    token_hash  TEXT PRIMARY KEY,       -- SHA-256 of the token; the token itself is never stored
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX access_tokens_by_device ON access_tokens (user_id, device_id);

CREATE TABLE uia_sessions (
    session_id  TEXT PRIMARY KEY,
    user_id     TEXT,                   -- who it belongs to, when authenticated
    completed   TEXT NOT NULL,          -- JSON array of completed stage types
    created_ts  BIGINT NOT NULL
);

CREATE TABLE rooms (
    room_id       TEXT PRIMARY KEY,
    room_version  TEXT NOT NULL,
    creator       TEXT NOT NULL,
    is_public     BIGINT NOT NULL DEFAULT 0,
    created_ts    BIGINT NOT NULL
);

-- The append-only event log. stream_ordering is the global order sync tokens count in.
CREATE TABLE events (
    stream_ordering   BIGSERIAL PRIMARY KEY,
    event_id          TEXT NOT NULL UNIQUE,
    room_id           TEXT NOT NULL,
    type              TEXT NOT NULL,
    state_key         TEXT,
    sender            TEXT NOT NULL,
    depth             BIGINT NOT NULL,
    origin_server_ts  BIGINT NOT NULL,
    redacts           TEXT,
    rel_type          TEXT,
    relates_to        TEXT,
    state_group       BIGINT NOT NULL,  -- room state after this event
    replaces_state    TEXT,             -- the state event this one replaced, for prev_content
    txn_device_id     TEXT,             -- set when the sender's device sent it with a txnId
    txn_id            TEXT,
    json              TEXT NOT NULL     -- the canonical PDU
);
CREATE INDEX events_by_room ON events (room_id, stream_ordering);
CREATE INDEX events_by_relation ON events (relates_to, rel_type);
CREATE INDEX events_by_redacts ON events (redacts);

CREATE TABLE event_edges (
    event_id       TEXT NOT NULL,
    prev_event_id  TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);

CREATE TABLE forward_extremities (
    room_id   TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- Room state at every event, as deltas: a group lists what changed since prev_group; a group
-- with no prev_group is a full snapshot. Chains are cut short so reading state stays cheap.
CREATE TABLE state_groups (
    id          BIGSERIAL PRIMARY KEY,
    room_id     TEXT NOT NULL,
    prev_group  BIGINT,
    chain_len   BIGINT NOT NULL
);
CREATE TABLE state_group_entries (
    state_group  BIGINT NOT NULL,
    type         TEXT NOT NULL,
    state_key    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    PRIMARY KEY (state_group, type, state_key)
);

CREATE TABLE current_state (
    room_id          TEXT NOT NULL,
    type             TEXT NOT NULL,
    state_key        TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    membership       TEXT,              -- for m.room.member events
    stream_ordering  BIGINT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_by_member ON current_state (state_key, type);

-- Every membership change, so sync can tell when a user joined or left.
CREATE TABLE room_memberships (
    event_id         TEXT PRIMARY KEY,
    room_id          TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    sender           TEXT NOT NULL,
    membership       TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL
);
CREATE INDEX room_memberships_by_user ON room_memberships (user_id, stream_ordering);

CREATE TABLE forgotten_rooms (
    user_id  TEXT NOT NULL,
    room_id  TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

CREATE TABLE transaction_ids (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    created_ts  BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE room_aliases (
    alias    TEXT PRIMARY KEY,
    room_id  TEXT NOT NULL,
    creator  TEXT NOT NULL
);
CREATE INDEX room_aliases_by_room ON room_aliases (room_id);

CREATE TABLE filters (
    filter_id  BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL,
    json       TEXT NOT NULL
);

CREATE TABLE account_data (
    user_id    TEXT NOT NULL,
    room_id    TEXT NOT NULL,           -- '' for global account data
    type       TEXT NOT NULL,
    content    TEXT NOT NULL,
    stream_id  BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_by_stream ON account_data (user_id, stream_id);

-- Source of account data stream positions.
CREATE TABLE account_data_stream (
    stream_id  BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL
);
