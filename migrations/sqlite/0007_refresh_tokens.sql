-- Refresh tokens (spec: "Refreshing access tokens"). Like access tokens, stored only as SHA-256.
-- An access token issued with a refresh token expires, and dies with that refresh token.
ALTER TABLE access_tokens ADD COLUMN expires_ts BIGINT;          -- NULL: never expires
ALTER TABLE access_tokens ADD COLUMN refresh_token_hash TEXT;    -- the refresh token issued with it
CREATE INDEX access_tokens_by_refresh ON access_tokens (refresh_token_hash);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,       -- SHA-256 of the token; the token itself is never stored
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    expires_ts  BIGINT,                 -- NULL: valid until used up or logged out
    -- The refresh token this one was exchanged for. That one stays valid (so a client that lost
    -- the answer can refresh again) until this token or its access token is first used.
    replaces    TEXT,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_by_device ON refresh_tokens (user_id, device_id);
CREATE INDEX refresh_tokens_by_replaces ON refresh_tokens (replaces);
