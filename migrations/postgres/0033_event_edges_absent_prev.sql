-- event_edges_by_prev (0032) indexed every edge for one reader: a backfilled event looks for the
-- events already here that name it as a prev event. Only an edge whose prev event was not in
-- the DAG when it was stored can be such a child's (a DAG event is never removed, and an event
-- in the DAG is never backfilled), so an edge now records that (`prev_absent`, computed as it is
-- stored) and only those edges are indexed. A local message's prev events are the room's forward
-- extremities: it adds nothing to the index.
ALTER TABLE event_edges ADD COLUMN prev_absent BIGINT NOT NULL DEFAULT 0;
UPDATE event_edges d SET prev_absent = 1
    WHERE NOT EXISTS (SELECT 1 FROM events p WHERE p.event_id = d.prev_event_id AND p.outlier IN (0, 2));
ALTER TABLE event_edges ALTER COLUMN prev_absent DROP DEFAULT;
DROP INDEX event_edges_by_prev;
CREATE INDEX event_edges_by_absent_prev ON event_edges (prev_event_id) WHERE prev_absent = 1;
