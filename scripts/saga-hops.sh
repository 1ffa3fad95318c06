#!/usr/bin/env bash
# Where a saga's time goes, hop by hop, read from the workers' own tables after
# a fleet run (scripts/fleet.sh leaves its `fleet` database behind):
#
#   scripts/fleet.sh --fresh --orders 6000 --rate 350 && scripts/saga-hops.sh
#
# Per event type, from the emitter's outbox insert (`created_at`, inside its
# transaction) to
#   published: the relay's mark, after the broker confirmed it, and
#   consumed:  the start of the consuming worker's transaction (its inbox
#              entry's `processed_at` is that transaction's `now()`).
# Consumers often start before the mark: the broker delivers before the
# relay hears the confirm. Milliseconds, p50 and p99.
#
#   DATABASE=fleet scripts/saga-hops.sh      (the default database)
set -euo pipefail
database=${DATABASE:-fleet}
psql -h 127.0.0.1 -U postgres -d "$database" -P footer=off <<'SQL'
WITH outbox AS (
    SELECT 'order-worker' AS emitter, event_type, event_id, created_at, published_at FROM order_worker.outbox
    UNION ALL SELECT 'inventory-worker', event_type, event_id, created_at, published_at FROM inventory_worker.outbox
    UNION ALL SELECT 'payment-worker', event_type, event_id, created_at, published_at FROM payment_worker.outbox
    UNION ALL SELECT 'notification-worker', event_type, event_id, created_at, published_at FROM notification_worker.outbox
), inbox AS (
    SELECT event_id, processed_at FROM order_worker.inbox
    UNION ALL SELECT event_id, processed_at FROM inventory_worker.inbox
    UNION ALL SELECT event_id, processed_at FROM payment_worker.inbox
    UNION ALL SELECT event_id, processed_at FROM notification_worker.inbox
), hops AS (
    SELECT o.emitter, o.event_type,
           extract(epoch FROM o.published_at - o.created_at) * 1000 AS published_ms,
           extract(epoch FROM i.processed_at - o.created_at) * 1000 AS consumed_ms
    FROM outbox o LEFT JOIN inbox i USING (event_id)
)
SELECT emitter, event_type, count(*) AS events,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY published_ms)::numeric, 1) AS published_p50,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY published_ms)::numeric, 1) AS published_p99,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY consumed_ms)::numeric, 1) AS consumed_p50,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY consumed_ms)::numeric, 1) AS consumed_p99
FROM hops
GROUP BY emitter, event_type
ORDER BY emitter, event_type;
SQL
