-- OpenID tokens (`POST /user/{userId}/openid/request_token`): a third party hands one to
-- `GET /_matrix/federation/v1/openid/userinfo` to learn who the user is. Stored as SHA-256,
-- like access tokens; useless after `expires_ts`, deleted when later tokens are made.

CREATE TABLE openid_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    expires_ts  BIGINT NOT NULL
);
CREATE INDEX openid_tokens_by_expiry ON openid_tokens (expires_ts);
