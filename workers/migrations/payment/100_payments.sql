CREATE TABLE IF NOT EXISTS customers (
    customer_id        TEXT PRIMARY KEY,
    credit_limit_cents BIGINT NOT NULL CHECK (credit_limit_cents >= 0),
    captured_cents     BIGINT NOT NULL DEFAULT 0,
    CHECK (captured_cents BETWEEN 0 AND credit_limit_cents)
);

-- One row per order: a redelivered stock.reserved finds it and does nothing.
CREATE TABLE IF NOT EXISTS payments (
    order_id     UUID PRIMARY KEY,
    payment_id   UUID        NOT NULL UNIQUE,
    customer_id  TEXT        NOT NULL REFERENCES customers (customer_id),
    amount_cents BIGINT      NOT NULL CHECK (amount_cents >= 0),
    status       TEXT        NOT NULL CHECK (status IN ('captured', 'declined')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
