-- Reserves stock for several orders in one call, in the order given, each
-- all-or-nothing: inventory-worker calls it once per batch, so the hot SKU
-- rows it locks stay locked for one round trip however many orders the
-- batch holds. Line n of the arrays belongs to order line_order[n] (a
-- 1-based index into order_ids), one line per SKU per order.
--
-- Per order: lock the order's stock rows (in SKU order, so two orders
-- never deadlock), judge all-or-nothing (SKUs compare byte-wise, COLLATE
-- "C", as Rust strings do), record the reservation with its verdict (a
-- redelivery finds it and changes nothing), take the stock, record the
-- lines. `claimed` is false when the order already had a reservation.
CREATE OR REPLACE FUNCTION reserve_orders(
    order_ids uuid[],
    line_order int[],
    line_skus text[],
    line_quantities bigint[]
) RETURNS TABLE (order_id uuid, claimed boolean, unknown_sku text, short_sku text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    position int;
    this_order uuid;
    claimed_count bigint;
    unknown text;
    short text;
BEGIN
    FOR position IN 1 .. coalesce(array_length(order_ids, 1), 0) LOOP
        this_order := order_ids[position];
        WITH wanted AS (
            SELECT l.sku, l.quantity
            FROM unnest(line_order, line_skus, line_quantities) AS l(order_index, sku, quantity)
            WHERE l.order_index = position
        ),
        locked AS (
            SELECT s.sku, s.available, w.quantity
            FROM stock s JOIN wanted w USING (sku)
            ORDER BY s.sku
            FOR UPDATE OF s
        ),
        verdict AS (
            SELECT (SELECT min(w.sku COLLATE "C") FROM wanted w
                    WHERE NOT EXISTS (SELECT 1 FROM locked l WHERE l.sku = w.sku)) AS unknown_sku,
                   (SELECT min(sku COLLATE "C") FROM locked WHERE available < quantity) AS short_sku
        ),
        judged AS (
            SELECT CASE
                       WHEN unknown_sku IS NOT NULL
                            AND (short_sku IS NULL OR unknown_sku < short_sku) THEN 'unknown_sku'
                       WHEN short_sku IS NOT NULL THEN 'insufficient_stock'
                   END AS reason
            FROM verdict
        ),
        inserted AS (
            INSERT INTO reservations (order_id, status, reason)
            SELECT this_order, CASE WHEN reason IS NULL THEN 'reserved' ELSE 'rejected' END, reason
            FROM judged
            ON CONFLICT (order_id) DO NOTHING
            RETURNING status
        ),
        taken AS (
            UPDATE stock s SET available = s.available - l.quantity
            FROM locked l
            WHERE s.sku = l.sku AND EXISTS (SELECT 1 FROM inserted WHERE status = 'reserved')
            RETURNING s.sku, l.quantity
        ),
        lines AS (
            INSERT INTO reservation_lines (order_id, sku, quantity)
            SELECT this_order, sku, quantity FROM taken
        )
        SELECT (SELECT count(*) FROM inserted), v.unknown_sku, v.short_sku
        INTO claimed_count, unknown, short
        FROM verdict v;
        order_id := this_order;
        claimed := claimed_count > 0;
        unknown_sku := unknown;
        short_sku := short;
        RETURN NEXT;
    END LOOP;
END
$$;
