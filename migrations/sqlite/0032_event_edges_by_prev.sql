-- A backfilled event is placed below every event already here that names it as a prev event
-- (store/backfill.rs); finding those read every edge on the server, once per backfilled event.
CREATE INDEX event_edges_by_prev ON event_edges (prev_event_id);
