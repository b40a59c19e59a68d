-- When a redaction started waiting for its target: rows whose target never comes are pruned
-- after a day (federation::pending's timer).
ALTER TABLE redactions_awaiting_target ADD COLUMN received_ts BIGINT NOT NULL DEFAULT 0;
