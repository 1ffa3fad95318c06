#!/usr/bin/env bash
# The database ceiling of one worker transaction, for comparison with the
# fleet's figures: pgbench runs the shape every handled event commits (inbox
# insert, state upsert, outbox insert) with N clients for S seconds.
#
#   scripts/bench-pgbench.sh [clients] [seconds]     (default 8 clients, 20 s)
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-8} seconds=${2:-20}
# shellcheck source=services.sh
source scripts/services.sh >/dev/null
database=fleet_pgbench
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)"
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $database"
psql -h 127.0.0.1 -U postgres -d "$database" -q <<'SQL'
CREATE TABLE inbox (consumer TEXT, event_id UUID, processed_at TIMESTAMPTZ DEFAULT now(), PRIMARY KEY (consumer, event_id));
CREATE TABLE orders (order_id UUID PRIMARY KEY, status TEXT, total_cents BIGINT, updated_at TIMESTAMPTZ DEFAULT now());
CREATE TABLE outbox (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id UUID UNIQUE, event_type TEXT,
                     payload BYTEA, created_at TIMESTAMPTZ DEFAULT clock_timestamp(), published_at TIMESTAMPTZ);
CREATE INDEX ON outbox (id) WHERE published_at IS NULL;
SQL
script=$(mktemp)
cat >"$script" <<'SQL'
BEGIN;
INSERT INTO inbox (consumer, event_id) VALUES ('order-worker', gen_random_uuid());
INSERT INTO orders (order_id, status, total_cents) VALUES (gen_random_uuid(), 'placed', 300)
  ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, updated_at = now();
INSERT INTO outbox (event_id, event_type, payload) VALUES (gen_random_uuid(), 'order.placed', convert_to(repeat('x', 400), 'UTF8'));
COMMIT;
SQL
pgbench -h 127.0.0.1 -U postgres -n -M prepared -c "$clients" -j 2 -T "$seconds" -f "$script" "$database" | grep -E "clients|tps|latency"
rm -f "$script"
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE $database WITH (FORCE)"
