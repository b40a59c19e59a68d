-- Federation identity: rotated signing keys stay published in old_verify_keys; other servers'
-- keys are cached (the verified response too, so this server can act as a notary).

-- NULL: the current key (the newest one); else when it stopped being used.
ALTER TABLE server_signing_keys ADD COLUMN expired_ts BIGINT;

-- Other servers' public keys, from verified key responses.
CREATE TABLE remote_server_keys (
    server_name     TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    public_key      TEXT NOT NULL,      -- unpadded base64
    valid_until_ts  BIGINT NOT NULL,    -- of the response that listed it in verify_keys
    expired_ts      BIGINT,             -- set when listed in old_verify_keys
    PRIMARY KEY (server_name, key_id)
);

-- The newest verified key response of each server, exactly as its origin signed it.
CREATE TABLE remote_server_key_responses (
    server_name     TEXT PRIMARY KEY,
    response        TEXT NOT NULL,
    valid_until_ts  BIGINT NOT NULL,
    fetched_ts      BIGINT NOT NULL
);
