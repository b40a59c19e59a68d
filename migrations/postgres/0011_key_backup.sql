-- Server-side key backups (spec: "Server-side key backups"). Versions are numbered per user and
-- never reused: a deleted version keeps its row (deleted = 1) so the next one counts on, and its
-- keys are deleted with it. `etag` changes whenever the version's keys change.
CREATE TABLE key_backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

-- One backed-up Megolm session key: the metadata the replacement rule compares in columns,
-- the encrypted key (opaque to the server) as JSON text.
CREATE TABLE key_backup_sessions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BIGINT NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
