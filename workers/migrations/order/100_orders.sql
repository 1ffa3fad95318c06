-- One row per order_id: the primary key is what makes a second submission
-- of the same order start no second saga.
CREATE TABLE IF NOT EXISTS orders (
    order_id     UUID PRIMARY KEY,
    customer_id  TEXT        NOT NULL,
    status       TEXT        NOT NULL CHECK (status IN ('placed', 'confirmed', 'cancelled', 'rejected')),
    total_cents  BIGINT      NOT NULL,
    items        JSONB       NOT NULL,
    reason       TEXT,
    submitted_by UUID        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
