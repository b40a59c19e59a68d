-- event_edges_by_prev (0032) indexed every edge for one reader: a backfilled event looks for the
-- events already here that name it as a prev event. Only an edge whose prev event was not in
-- the DAG when it was stored can be such a child's (a DAG event is never removed, and an event
-- in the DAG is never backfilled), so an edge now records that (`prev_absent`, computed as it is
-- stored) and only those edges are indexed. A local message's prev events are the room's forward
-- extremities: it adds nothing to the index (the full index cost the send path ~6%).
--
-- The table also drops its rowid: its key is how it is read, and a rowid table kept every edge
-- twice (the table and the key's index), each insert touching a page of both.
CREATE TABLE event_edges_keyed (
    event_id       TEXT NOT NULL,
    prev_event_id  TEXT NOT NULL,
    prev_absent    BIGINT NOT NULL,  -- 1: the prev event was not in the DAG here when stored
    PRIMARY KEY (event_id, prev_event_id)
) WITHOUT ROWID;
INSERT INTO event_edges_keyed (event_id, prev_event_id, prev_absent)
    SELECT d.event_id, d.prev_event_id,
        CASE WHEN EXISTS (SELECT 1 FROM events p WHERE p.event_id = d.prev_event_id AND p.outlier IN (0, 2))
        THEN 0 ELSE 1 END
    FROM event_edges d;
DROP TABLE event_edges;
ALTER TABLE event_edges_keyed RENAME TO event_edges;
CREATE INDEX event_edges_by_absent_prev ON event_edges (prev_event_id) WHERE prev_absent = 1;

-- The same for sent transaction IDs: read by their key only.
CREATE TABLE transaction_ids_keyed (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    created_ts  BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
) WITHOUT ROWID;
INSERT INTO transaction_ids_keyed SELECT user_id, device_id, txn_id, event_id, created_ts FROM transaction_ids;
DROP TABLE transaction_ids;
ALTER TABLE transaction_ids_keyed RENAME TO transaction_ids;
