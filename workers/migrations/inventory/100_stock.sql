CREATE TABLE IF NOT EXISTS stock (
    sku       TEXT PRIMARY KEY,
    initial   BIGINT NOT NULL CHECK (initial >= 0),
    available BIGINT NOT NULL CHECK (available >= 0)
);

-- One row per order: a redelivered order.placed finds it and does nothing.
CREATE TABLE IF NOT EXISTS reservations (
    order_id   UUID PRIMARY KEY,
    status     TEXT        NOT NULL CHECK (status IN ('reserved', 'released', 'rejected')),
    reason     TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What a reservation took, per SKU: what a release gives back, and what the
-- stock-conservation invariant sums.
CREATE TABLE IF NOT EXISTS reservation_lines (
    order_id UUID   NOT NULL REFERENCES reservations (order_id),
    sku      TEXT   NOT NULL REFERENCES stock (sku),
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);
