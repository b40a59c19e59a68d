-- Encryption at rest (spec/privacy-modes.md): each search-enabled room's data key, wrapped by
-- the server key (which is never stored). Which event rows are encrypted is told by the value
-- of events.json itself: an encrypted row starts with "~hearth-aead1:", which JSON never does.
CREATE TABLE room_data_keys (
    room_id     TEXT PRIMARY KEY,
    wrapped_key TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);

-- Server admins granted with `hearth admin grant` (config.admins adds more).
CREATE TABLE server_admins (
    user_id    TEXT PRIMARY KEY,
    granted_ts BIGINT NOT NULL
);

-- Every admin read of a room's messages (spec/admin.md), written before the data is returned.
-- Append-only: no code path updates or deletes these rows.
CREATE TABLE admin_audit_log (
    audit_id    BIGSERIAL PRIMARY KEY,
    admin_id    TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    range_from  TEXT,
    range_limit BIGINT NOT NULL,
    ts          BIGINT NOT NULL
);
CREATE INDEX admin_audit_log_by_room ON admin_audit_log (room_id, audit_id);
