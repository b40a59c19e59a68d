-- The outbound queue's EDU rows say what they are, so a destination that is down for long has
-- its queue trimmed by kind (federation::sender): `edu_type` (NULL for PDUs), and
-- `supersede_key`, equal for EDUs of which only the newest matters (one user's typing in one
-- room, presence, a receipt, one device's list update, a user's signing keys); NULL for
-- to-device messages, which nothing supersedes.
ALTER TABLE federation_outbound ADD COLUMN edu_type TEXT;
ALTER TABLE federation_outbound ADD COLUMN supersede_key TEXT;
CREATE INDEX federation_outbound_by_key ON federation_outbound (destination, supersede_key, id);

-- Received redactions of an event not (yet) here whose sender lacked the redact level: they
-- apply if the target arrives and was sent by a user of the redaction sender's server (room
-- versions 3+, "Handling redactions").
CREATE TABLE redactions_awaiting_target (
    target_id      TEXT NOT NULL,
    redaction_id   TEXT NOT NULL,
    room_id        TEXT NOT NULL,
    sender_server  TEXT NOT NULL,
    PRIMARY KEY (target_id, redaction_id)
);
