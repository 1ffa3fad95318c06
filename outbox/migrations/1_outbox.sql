-- Events written in the same transaction as the state change that caused
-- them, published by the relay after commit.
CREATE TABLE IF NOT EXISTS outbox (
    -- Claim order only: never used as a "published up to" cursor, because
    -- identity values commit out of order and a cursor would skip rows.
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    event_type      TEXT        NOT NULL,
    payload         BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    published_at    TIMESTAMPTZ,
    -- Refusals by the broker (unroutable, nacked), with backoff, then parking.
    attempts        INT         NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    last_error      TEXT,
    parked_at       TIMESTAMPTZ
);

-- What the relay claims: small, because published rows leave it.
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id)
    WHERE published_at IS NULL AND parked_at IS NULL;
-- What retention deletes.
CREATE INDEX IF NOT EXISTS outbox_published ON outbox (published_at)
    WHERE published_at IS NOT NULL;
-- What operators look at.
CREATE INDEX IF NOT EXISTS outbox_parked ON outbox (parked_at)
    WHERE parked_at IS NOT NULL AND published_at IS NULL;

-- One row: whether a relay is waiting for a wake-up. Writers NOTIFY only
-- when it is set, so a busy fleet does not NOTIFY on every commit (NOTIFY
-- takes a global lock at commit and would serialize all commits).
CREATE TABLE IF NOT EXISTS outbox_relay (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    sleeping  BOOLEAN NOT NULL DEFAULT false
);
INSERT INTO outbox_relay (singleton, sleeping) VALUES (true, false) ON CONFLICT DO NOTHING;
