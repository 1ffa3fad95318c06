-- Exactly one notification per terminal order: the primary key.
CREATE TABLE IF NOT EXISTS notifications (
    order_id UUID PRIMARY KEY,
    template TEXT        NOT NULL CHECK (template IN ('order_confirmed', 'order_cancelled')),
    sent_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
