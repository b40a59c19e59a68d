-- End-to-end encryption: device keys, one-time and fallback keys, cross-signing keys and
-- signatures, the device list stream and queued to-device messages.

CREATE TABLE device_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    key_json   TEXT NOT NULL,           -- the signed object as uploaded
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE one_time_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

CREATE TABLE fallback_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    used       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- key_type: master, self_signing, user_signing.
CREATE TABLE cross_signing_keys (
    user_id    TEXT NOT NULL,
    key_type   TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded through /keys/signatures/upload: on a device (target_key = device ID)
-- or on a cross-signing key (target_key = its public key).
CREATE TABLE e2e_signatures (
    target_user    TEXT NOT NULL,
    target_key     TEXT NOT NULL,
    signer_user    TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key, signer_user, signer_key_id)
);

-- One row per change of a user's devices or keys; sync tokens count its positions.
CREATE TABLE device_lists_stream (
    stream_id  BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL
);
CREATE INDEX device_lists_stream_by_user ON device_lists_stream (user_id, stream_id);

-- Queued to-device messages; deleted once the device syncs with a token past them.
CREATE TABLE to_device_messages (
    stream_id  BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    sender     TEXT NOT NULL,
    type       TEXT NOT NULL,
    content    TEXT NOT NULL
);
CREATE INDEX to_device_by_device ON to_device_messages (user_id, device_id, stream_id);

-- Transaction IDs of sendToDevice requests already handled, per sending device.
CREATE TABLE to_device_txns (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    ts         BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
