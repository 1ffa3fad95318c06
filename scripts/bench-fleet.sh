#!/usr/bin/env bash
# The fleet benchmark in one command: every figure the workers' targets name,
# measured on this machine, beside pgbench on the same transaction shape.
#
#   scripts/bench-fleet.sh                          # RabbitMQ, 1 replica per worker, 3 runs each
#   scripts/bench-fleet.sh --transport redis --runs 5
#   scripts/bench-fleet.sh --replicas 2 --bin-dir /tmp/build-a
#   scripts/bench-fleet.sh --settle 0                # start loadgen as soon as the replicas are up
#
# 1. pgbench: `scripts/bench-pgbench.sh 8 15`, the database's ceiling for one
#    worker transaction (inbox insert, state upsert, outbox insert).
# 2. Sustained: --runs runs of `scripts/fleet.sh --fresh` with --orders
#    orders as fast as loadgen can publish; sagas/s and each replica's peak RSS.
#    Each run lets the started fleet idle --settle seconds (default 10)
#    before loadgen starts: the figures are the running fleet's, not its
#    start's (see docs/benchmarks.md).
# 3. Half rate: --runs paced runs at half the median sustained rate; saga
#    latency p50 and p99.
# 4. Idle: after the last paced run, the fleet's CPU over 30 s with nothing
#    to do (the replicas' own, and the whole machine's).
#
# Prints one table with the targets, and writes it as JSON to
# target/fleet-logs/bench-fleet.json. Exit 0 when every run ended every order
# exactly once (targets missed are reported, not failures: the figures
# depend on the machine, which is why pgbench sits beside them).
set -euo pipefail
cd "$(dirname "$0")/.."

transport=rabbitmq runs=3 replicas=1 orders=20000 settle=10 bin_dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --transport) transport=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    --orders) orders=$2; shift 2 ;;
    --settle) settle=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for number in runs replicas orders; do
  [[ ${!number} =~ ^[1-9][0-9]*$ ]] || { echo "--$number takes a whole number ≥ 1, not '${!number}'" >&2; exit 2; }
done
[[ $settle =~ ^[0-9]+$ ]] || { echo "--settle takes whole seconds, not '$settle'" >&2; exit 2; }

# shellcheck source=services.sh
source scripts/services.sh >/dev/null
target=${CARGO_TARGET_DIR:-target}
if [ -z "$bin_dir" ]; then
  log "building the workers (release)"
  cargo build --release --quiet -p fleet-workers --bins
  bin_dir=$target/release
fi
logs=$target/fleet-logs
results=$logs/bench-runs
rm -rf "$results"
mkdir -p "$results"

# Queues of other namespaces share the broker's CPU: a test run leaves
# some 370 quorum queues behind until the next run sweeps them 20 minutes
# later. With them on the broker (2026-12-07) the idle machine used 0.10
# cores instead of 0.03, and RabbitMQ sustained 410-518 sagas/s against
# 665-730 an hour later without them (pgbench 1,537 against 2,141: not all
# of that difference is theirs).
api=${RABBITMQ_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}/api
# fleet.sh runs the fleet in FLEET__NAMESPACE (default fleet).
foreign=$(curl -sf "$api/queues/%2f?columns=name" | python3 -c '
import json, sys
prefix = sys.argv[1] + "."
print(sum(not q["name"].startswith(prefix) for q in json.load(sys.stdin)))' "${FLEET__NAMESPACE:-fleet}" 2>/dev/null || echo unknown)
if [ "$foreign" = unknown ]; then
  echo "warning: could not list the broker's queues at ${api#*@} (is the management plugin on?)" >&2
elif [ "$foreign" != 0 ]; then
  echo "warning: $foreign queues of other namespaces are on the broker; they take its CPU and lower these figures (delete them, or wait for the tests' sweep)" >&2
fi

log "pgbench, 8 clients, 15 s"
scripts/bench-pgbench.sh 8 15 | tee "$results/pgbench.txt" | grep -E '^tps' || true

fleet() { # fleet NAME [fleet.sh options...]
  local name=$1; shift
  local status=0
  rm -f "$logs/summary.json" "$logs/replicas.json"
  scripts/fleet.sh --fresh --bin-dir "$bin_dir" --transport "$transport" \
    --replicas "$replicas" --orders "$orders" --settle "$settle" "$@" >"$results/$name.log" 2>&1 || status=$?
  if [ ! -s "$logs/summary.json" ] || [ ! -s "$logs/replicas.json" ]; then
    echo "$name: the fleet run ended without a summary (exit $status); see $results/$name.log" >&2
    exit 1
  fi
  cp "$logs/summary.json" "$results/$name.summary.json"
  cp "$logs/replicas.json" "$results/$name.replicas.json"
  python3 - "$results/$name.summary.json" "$name" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
l = s["latency_ms"]
print(f"  {sys.argv[2]}: {s['sagas_per_s']:.0f} sagas/s, p50 {l['p50']:.0f} ms, p99 {l['p99']:.0f} ms, "
      f"exactly once: {'yes' if s['exactly_once'] else 'NO'}")
PY
  return "$status"
}

failed=0
log "sustained: $runs runs of $orders orders on $transport, $replicas replica(s) per worker"
for n in $(seq "$runs"); do fleet "sustained-$n" || failed=$((failed + 1)); done

half=$(python3 - "$results" "$runs" <<'PY'
import json, statistics, sys
rates = [json.load(open(f"{sys.argv[1]}/sustained-{n}.summary.json"))["sagas_per_s"]
         for n in range(1, int(sys.argv[2]) + 1)]
print(max(1, round(statistics.median(rates) / 2)))
PY
)
log "half rate: $runs runs at $half/s"
for n in $(seq "$runs"); do
  idle=()
  [ "$n" -eq "$runs" ] && idle=(--idle-seconds 30)
  fleet "half-$n" --rate "$half" "${idle[@]}" || failed=$((failed + 1))
done
cp "$logs/idle.json" "$results/idle.json"

python3 - "$results" "$runs" "$transport" "$replicas" "$orders" "$half" "$settle" "$logs/bench-fleet.json" <<'PY'
import json, re, statistics, sys
results, runs, transport, replicas, orders, half, settle, out = sys.argv[1:]
runs = int(runs)
load = lambda name: json.load(open(f"{results}/{name}"))
sustained = [load(f"sustained-{n}.summary.json") for n in range(1, runs + 1)]
paced = [load(f"half-{n}.summary.json") for n in range(1, runs + 1)]
rss = [r["peak_rss_kib"] for n in range(1, runs + 1) for kind in ("sustained", "half")
       for r in load(f"{kind}-{n}.replicas.json") if r["peak_rss_kib"] is not None]
idle = load("idle.json")
tps = re.findall(r"^tps = ([0-9.]+)", open(f"{results}/pgbench.txt").read(), re.M)
rates = [s["sagas_per_s"] for s in sustained]
p99s = [s["latency_ms"]["p99"] for s in paced]
report = {
    "transport": transport, "replicas_per_worker": int(replicas), "orders": int(orders),
    "settle_s": int(settle),
    "pgbench_tps": float(tps[0]) if tps else None,
    "sustained_sagas_per_s": rates,
    "half_rate": int(half),
    "half_rate_p50_ms": [s["latency_ms"]["p50"] for s in paced],
    "half_rate_p99_ms": p99s,
    "peak_rss_mib": round(max(rss) / 1024, 1) if rss else None,
    "idle_replicas_cpu_s_per_s": idle["replicas_cpu_s_per_s"],
    "idle_machine_busy_cores": idle["machine_busy_cores"],
    "every_order_exactly_once": all(s["exactly_once"] for s in sustained + paced),
}
json.dump(report, open(out, "w"), indent=2)

def verdict(ok, count=None):
    if count is None:
        return "met" if ok else "NOT met"
    return f"met in {count} of {runs}" if count < runs else "met"
met_rate = sum(r >= 1000 for r in rates)
# The replicas of the last run: four workers times --replicas.
per_replica = idle["replicas_cpu_s_per_s"] / (4 * int(replicas))
met_p99 = sum(p <= 150 for p in p99s)
rows = [
    ("pgbench, 8 clients (worker transaction shape)", f"{report['pgbench_tps']:.0f} tps" if tps else "n/a", ""),
    (f"sustained sagas/s over {orders} orders", ", ".join(f"{r:.0f}" for r in rates), "≥ 1,000: " + (verdict(True, met_rate) if met_rate else "NOT met")),
    (f"saga latency at half ({half}/s), p50 / p99 ms", ", ".join(f"{s['latency_ms']['p50']:.0f} / {s['latency_ms']['p99']:.0f}" for s in paced), "p99 ≤ 150: " + (verdict(True, met_p99) if met_p99 else "NOT met")),
    ("peak RSS of any replica", f"{report['peak_rss_mib']} MiB", "≤ 40 MiB: " + verdict(report["peak_rss_mib"] is not None and report["peak_rss_mib"] <= 40)),
    ("idle fleet CPU over 30 s", f"replicas {idle['replicas_cpu_s_per_s']} CPU-s/s in all ({per_replica:.2%} of a core each), machine {idle['machine_busy_cores']} cores", "near zero (each replica < 0.25% of a core): " + verdict(per_replica < 0.0025)),
    ("every order ended exactly once", "yes" if report["every_order_exactly_once"] else "NO", ""),
]
width = max(len(r[0]) for r in rows)
print(f"\n{transport}, {replicas} replica(s) per worker, {runs} run(s) each, {settle} s idle before each load")
for name, figure, target in rows:
    print(f"  {name:<{width}}  {figure}{'   (' + target + ')' if target else ''}")
print(f"  (JSON: {out}; per-run logs and summaries: {results})")
PY
[ "$failed" -eq 0 ] || { echo "$failed runs did not end every order exactly once (see $results)" >&2; exit 1; }
