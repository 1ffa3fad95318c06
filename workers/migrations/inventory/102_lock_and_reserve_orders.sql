-- reserve_orders (migration 101) after locking every stock row the batch
-- names, in SKU order, so two batches over the same SKUs queue instead of
-- deadlocking. Inventory-worker calls this instead of locking in a
-- statement of its own first: a round trip fewer while the hot rows are
-- locked.
CREATE OR REPLACE FUNCTION lock_and_reserve_orders(
    order_ids uuid[],
    line_order int[],
    line_skus text[],
    line_quantities bigint[]
) RETURNS TABLE (order_id uuid, claimed boolean, unknown_sku text, short_sku text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM stock WHERE sku = ANY(line_skus) ORDER BY sku FOR UPDATE;
    RETURN QUERY SELECT * FROM reserve_orders(order_ids, line_order, line_skus, line_quantities);
END
$$;
