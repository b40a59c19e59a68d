-- Other servers' media, cached here. An original is a `media` row under its own server's name
-- (`uploader` is that server's name); its thumbnails, fetched from that server per configured
-- size, are rows here. The bytes of both live in the content store, named by their SHA-256, and
-- each file exists before its row.

CREATE TABLE remote_thumbnails (
    server_name   TEXT NOT NULL,
    media_id      TEXT NOT NULL,
    width         BIGINT NOT NULL,
    height        BIGINT NOT NULL,
    method        TEXT NOT NULL,     -- crop | scale
    animated      BIGINT NOT NULL,   -- 0 | 1
    content_type  TEXT NOT NULL,
    size          BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    created_ts    BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method, animated)
);
