-- Federation transactions: the outbound queue per destination, and the inbound transactions
-- already handled (so a retried transaction is answered without being processed again).

-- PDUs and EDUs waiting for a destination, in the order they go out. A row is deleted only
-- after the destination answered 200 to the transaction that carried it.
CREATE TABLE federation_outbound (
    id           BIGSERIAL PRIMARY KEY,
    destination  TEXT NOT NULL,
    kind         TEXT NOT NULL,      -- 'pdu' or 'edu'
    json         TEXT NOT NULL,
    created_ts   BIGINT NOT NULL
);
CREATE INDEX federation_outbound_by_destination ON federation_outbound (destination, id);

-- Inbound transactions handled: the response to repeat when the origin retries one.
CREATE TABLE federation_inbound_txns (
    origin      TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    response    TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
