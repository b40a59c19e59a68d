-- Read receipts and presence, each with a stream of its own for sync tokens.

CREATE TABLE receipts_stream (
    stream_id  BIGSERIAL PRIMARY KEY,
    room_id    TEXT NOT NULL
);

CREATE TABLE receipts (
    room_id       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    receipt_type  TEXT NOT NULL,
    thread_id     TEXT NOT NULL,        -- '' for an unthreaded receipt
    event_id      TEXT NOT NULL,
    ts            BIGINT NOT NULL,
    stream_id     BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_by_stream ON receipts (room_id, stream_id);

CREATE TABLE presence_stream (
    stream_id  BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL
);

CREATE TABLE presence (
    user_id         TEXT PRIMARY KEY,
    presence        TEXT NOT NULL,
    status_msg      TEXT,
    last_active_ts  BIGINT NOT NULL,
    stream_id       BIGINT NOT NULL
);
CREATE INDEX presence_by_stream ON presence (stream_id);
