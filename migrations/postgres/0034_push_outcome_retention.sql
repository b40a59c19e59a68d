-- Stored push outcomes are kept for `push.outcome_retention` (push/retention.rs). What a member
-- had not read of the outcomes pruned is kept here as counts, so unread counts stay exact: a
-- summary counts the pruned notifying events after the member's read position `read_upto` (their
-- newest unthreaded m.read / m.read.private receipt when the events were pruned, 0 for none),
-- and applies while their read position is still no further (a later receipt reads it all).
CREATE TABLE push_count_summaries (
    user_id        TEXT NOT NULL,
    room_id        TEXT NOT NULL,
    thread_id      TEXT NOT NULL,       -- '' for the main timeline
    read_upto      BIGINT NOT NULL,
    notifications  BIGINT NOT NULL,
    highlights     BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);

-- Where the event stream was at a time: outcomes at or below the position of the newest mark
-- older than the retention were stored before it (marks use this server's clock, never an
-- event's claimed origin_server_ts).
CREATE TABLE push_prune_marks (
    marked_ts        BIGINT PRIMARY KEY,
    stream_ordering  BIGINT NOT NULL
);
