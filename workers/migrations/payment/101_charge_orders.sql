-- Charges several orders in one call, in the order given: payment-worker
-- calls it once per batch (and once for a single event), so a busy
-- customer's row stays locked for one round trip, not five per order.
--
-- First the batch's new customers are created with `credit_limit`, and all
-- its customers' rows are locked in id order, so two batches charging the
-- same customers queue instead of deadlocking. Then, per order: one that
-- already has a payment row changes nothing (`claimed` is false: a
-- redelivery); otherwise it is captured if the customer's remaining credit
-- covers it (compared without adding, so no amount can overflow), else
-- declined, and the payment row records which.
CREATE OR REPLACE FUNCTION charge_orders(
    order_ids uuid[],
    payment_ids uuid[],
    customer_ids text[],
    amounts bigint[],
    credit_limit bigint
) RETURNS TABLE (order_id uuid, claimed boolean, captured boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    position int;
    took boolean;
BEGIN
    INSERT INTO customers (customer_id, credit_limit_cents)
    SELECT DISTINCT id, credit_limit FROM unnest(customer_ids) AS ids(id) ORDER BY id
    ON CONFLICT (customer_id) DO NOTHING;
    PERFORM 1 FROM customers WHERE customer_id = ANY(customer_ids) ORDER BY customer_id FOR UPDATE;

    FOR position IN 1 .. coalesce(array_length(order_ids, 1), 0) LOOP
        order_id := order_ids[position];
        IF EXISTS (SELECT 1 FROM payments p WHERE p.order_id = order_ids[position]) THEN
            claimed := false;
            captured := false;
            RETURN NEXT;
            CONTINUE;
        END IF;
        UPDATE customers c SET captured_cents = c.captured_cents + amounts[position]
        WHERE c.customer_id = customer_ids[position]
          AND amounts[position] <= c.credit_limit_cents - c.captured_cents;
        took := FOUND;
        INSERT INTO payments (order_id, payment_id, customer_id, amount_cents, status)
        VALUES (order_ids[position], payment_ids[position], customer_ids[position], amounts[position],
                CASE WHEN took THEN 'captured' ELSE 'declined' END);
        claimed := true;
        captured := took;
        RETURN NEXT;
    END LOOP;
END
$$;
