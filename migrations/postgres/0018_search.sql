-- Server-side search: how far the indexer has followed the event log (stream_ordering), and
-- which tantivy index that position belongs to (the ID is also in the index's commit payload,
-- so a deleted or replaced index directory is rebuilt from the start instead of trusted).
CREATE TABLE search_index_position (
    id          BIGINT PRIMARY KEY,     -- always 1
    index_id    TEXT NOT NULL,
    position    BIGINT NOT NULL
);
