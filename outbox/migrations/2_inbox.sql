-- Ids of events a consumer has handled, claimed in the handler's own
-- transaction: a redelivered event finds its id here and changes nothing.
CREATE TABLE IF NOT EXISTS inbox (
    consumer     TEXT        NOT NULL,
    event_id     UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- What retention deletes.
CREATE INDEX IF NOT EXISTS inbox_processed_at ON inbox (processed_at);
