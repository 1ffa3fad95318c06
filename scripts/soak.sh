#!/usr/bin/env bash
# Soak: the whole fleet (release build, N replicas of each worker) under a
# steady load for a long while, sampling every replica's RSS and the outbox
# and inbox sizes. Passes when every order ended exactly once, no replica's
# RSS grew more than 10% after warm-up, and the tables stayed bounded by
# retention (shortened here so that a 10-minute run shows it).
#
#   scripts/soak.sh                                   # RabbitMQ, 10 min at 100 orders/s
#   scripts/soak.sh --transport redis --minutes 10 --rate 100 --replicas 2
#
# Samples: $CARGO_TARGET_DIR/soak/<transport>/samples.csv; verdict on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

transport=rabbitmq minutes=10 rate=100 replicas=2 warmup_s=120
while [ $# -gt 0 ]; do
  case "$1" in
    --transport) transport=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# shellcheck source=services.sh
source scripts/services.sh >/dev/null
target=${CARGO_TARGET_DIR:-target}
log "building the workers (release)"
cargo build --release --quiet -p fleet-workers --bins

out=$target/soak/$transport
rm -rf "$out" && mkdir -p "$out"
database=fleet_soak_$transport
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)"
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $database"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$database
export FLEET__TRANSPORT=$transport FLEET__NAMESPACE=soak$(date +%s) FLEET__HTTP__PORT=0
export RUST_LOG=${RUST_LOG:-warn}
# Retention short enough to be seen working within the run: published
# outbox rows after 3 minutes, inbox ids after 4 (beyond the retry horizon
# of these delays), cleaned every 15 seconds.
export FLEET__OUTBOX__RETENTION_HOURS=0.05 FLEET__INBOX__DEDUP_RETENTION_HOURS=0.0667
export FLEET__OUTBOX__CLEANUP_INTERVAL_MS=15000 FLEET__RETRY__DELAYS_MS=1000,2000,5000

pids=() names=()
stop_fleet() {
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}
trap stop_fleet EXIT
for worker in order-worker inventory-worker payment-worker notification-worker; do
  for n in $(seq "$replicas"); do
    "$target/release/$worker" >"$out/$worker-$n.log" 2>&1 &
    pids+=($!) names+=("$worker-$n")
  done
done
sleep 3

orders=$(awk -v r="$rate" -v m="$minutes" 'BEGIN { printf "%d", r * m * 60 }')
log "soak: $orders orders at $rate/s for $minutes min on $transport, $replicas replicas per worker"
"$target/release/loadgen" --orders "$orders" --rate "$rate" --customers 20000 --timeout 180 --json \
  >"$out/summary.json" 2>"$out/loadgen.log" &
loadgen=$!

echo "seconds,replica,rss_kib,outbox_rows,inbox_rows" >"$out/samples.csv"
tables() {
  psql -h 127.0.0.1 -U postgres -d "$database" -Atc "
    SELECT (SELECT count(*) FROM order_worker.outbox) + (SELECT count(*) FROM inventory_worker.outbox)
         + (SELECT count(*) FROM payment_worker.outbox) + (SELECT count(*) FROM notification_worker.outbox),
           (SELECT count(*) FROM order_worker.inbox) + (SELECT count(*) FROM inventory_worker.inbox)
         + (SELECT count(*) FROM payment_worker.inbox) + (SELECT count(*) FROM notification_worker.inbox)" \
    | tr '|' ','
}
started=$(date +%s)
while kill -0 "$loadgen" 2>/dev/null; do
  now=$(( $(date +%s) - started ))
  rows=$(tables 2>/dev/null || echo ",")
  for i in "${!pids[@]}"; do
    rss=$(ps -o rss= -p "${pids[$i]}" 2>/dev/null | tr -d ' ' || true)
    echo "$now,${names[$i]},${rss:-0},$rows" >>"$out/samples.csv"
  done
  sleep 15
done
wait "$loadgen" && loadgen_status=0 || loadgen_status=$?
python3 - "$out/samples.csv" "$warmup_s" "$out/summary.json" "$loadgen_status" <<'PY'
import csv, json, sys
path, warmup, summary_path, status = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rows = list(csv.DictReader(open(path)))
ok = status == 0
by_replica = {}
for r in rows:
    by_replica.setdefault(r["replica"], []).append((int(r["seconds"]), int(r["rss_kib"])))
print(f"{'replica':<24} {'rss after warm-up':>18} {'rss max after':>14} {'growth':>7}")
for name, samples in sorted(by_replica.items()):
    after = [rss for t, rss in samples if t >= warmup and rss > 0]
    if len(after) < 2:
        print(f"{name:<24} too few samples after warm-up"); ok = False; continue
    base, peak = after[0], max(after)
    growth = (peak - base) / base * 100
    ok &= growth < 10
    print(f"{name:<24} {base/1024:>15.1f} MiB {peak/1024:>10.1f} MiB {growth:>6.1f}%")
seen = {}
for r in rows:
    if r["outbox_rows"]:
        seen[int(r["seconds"])] = (int(r["outbox_rows"]), int(r["inbox_rows"]))
times = sorted(seen)
# Bounded: in the last half of the run the tables no longer grow with the
# orders published (they would double without retention).
half = [seen[t] for t in times if t >= times[-1] / 2] if times else []
if half:
    grow_out = half[-1][0] / max(half[0][0], 1)
    grow_in = half[-1][1] / max(half[0][1], 1)
    print(f"outbox rows over the second half: {half[0][0]} -> {half[-1][0]} (x{grow_out:.2f}); "
          f"inbox rows: {half[0][1]} -> {half[-1][1]} (x{grow_in:.2f}); peak outbox {max(o for o, _ in seen.values())}")
    ok &= grow_out < 1.3 and grow_in < 1.3
summary = json.load(open(summary_path)) if status in (0, 1) else {}
print("loadgen:", json.dumps({k: summary.get(k) for k in ("orders", "exactly_once", "sagas_per_s", "latency_ms", "violations")}))
print("SOAK", "PASSED" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
