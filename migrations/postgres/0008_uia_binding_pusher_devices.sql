-- A user-interactive auth session is bound to the request that started it (method, path and a
-- hash of the body without `auth`), and expires: rows older than the timeout are pruned.
ALTER TABLE uia_sessions ADD COLUMN operation TEXT NOT NULL DEFAULT '';
CREATE INDEX uia_sessions_by_created ON uia_sessions (created_ts);

-- A pusher belongs to the device whose access token set it and is deleted with that device
-- (logout, device deletion, password change). NULL for pushers set before this migration.
ALTER TABLE pushers ADD COLUMN device_id TEXT;
CREATE INDEX pushers_by_device ON pushers (user_id, device_id);
