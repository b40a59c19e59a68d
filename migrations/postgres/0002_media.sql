-- The media repository: one row per local media ID. The bytes live on disk under
-- `media.path`, named by their SHA-256; a row created by `POST /_matrix/media/v1/create` has no
-- size (nor sha256) until its content is uploaded.

CREATE TABLE media (
    server_name        TEXT NOT NULL,
    media_id           TEXT NOT NULL,
    uploader           TEXT NOT NULL,
    created_ts         BIGINT NOT NULL,
    unused_expires_ts  BIGINT,            -- /create'd IDs: upload deadline; NULL once uploaded
    content_type       TEXT,
    filename           TEXT,
    size               BIGINT,            -- NULL until the content is uploaded
    sha256             TEXT,              -- hex; names the file on disk
    uploaded_ts        BIGINT,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX media_by_uploader ON media (uploader, created_ts);
