-- PDUs refused because a prev event could not be had (its origin and the room's other servers
-- did not answer, or the fetch limit was reached). The /send result carries the error; the PDU
-- is kept here and tried again when the room's next PDU arrives and on a timer (backing off),
-- until it enters the DAG, is rejected, or runs out of attempts.
CREATE TABLE federation_pending_pdus (
    event_id     TEXT PRIMARY KEY,
    room_id      TEXT NOT NULL,
    origin       TEXT NOT NULL,
    json         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    attempts     BIGINT NOT NULL,
    next_try_ts  BIGINT NOT NULL,
    received_ts  BIGINT NOT NULL
);
CREATE INDEX federation_pending_pdus_by_room ON federation_pending_pdus (room_id);
CREATE INDEX federation_pending_pdus_by_time ON federation_pending_pdus (next_try_ts);
