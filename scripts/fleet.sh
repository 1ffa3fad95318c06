#!/usr/bin/env bash
# Runs the whole fleet on this machine, without Docker, against the local
# PostgreSQL, Redis and RabbitMQ: N replicas of each of the four workers, then
# a demo load from loadgen and its JSON summary, then a graceful stop (SIGTERM).
#
#   scripts/fleet.sh                          # RabbitMQ, 2 replicas each, 2,000 orders
#   scripts/fleet.sh --transport redis --replicas 3 --orders 5000 --rate 500
#   scripts/fleet.sh --keep-running           # leave the fleet up after the demo (Ctrl-C stops it)
#   scripts/fleet.sh --fresh --orders 20000   # benchmark: start from an empty database and broker namespace
#   scripts/fleet.sh --bin-dir /tmp/build-a   # run binaries built elsewhere (A/B comparisons), build nothing
#   scripts/fleet.sh --idle-seconds 10        # after the demo, measure the idle fleet's CPU for 10 s
#   scripts/fleet.sh --settle 10              # let the started fleet run idle 10 s before loadgen starts
#
# Logs go to target/fleet-logs/<worker>-<n>.log, loadgen's JSON summary to
# summary.json beside them, each replica's peak RSS (and idle CPU, when
# measured) to replicas.json, and the idle measurement to idle.json. The exit code is loadgen's: 0 when every order
# ended exactly once as the contract predicts.
set -euo pipefail
cd "$(dirname "$0")/.."

transport=rabbitmq replicas=2 orders=2000 rate=0 keep=false fresh=false idle_seconds=0 settle=0 bin_dir= namespace=${FLEET__NAMESPACE:-fleet}
while [ $# -gt 0 ]; do
  case "$1" in
    --transport) transport=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    --orders) orders=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --keep-running) keep=true; shift ;;
    --fresh) fresh=true; shift ;;
    --idle-seconds) idle_seconds=$2; shift 2 ;;
    --settle) settle=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $idle_seconds =~ ^[0-9]+$ ]] || { echo "--idle-seconds takes whole seconds, not '$idle_seconds'" >&2; exit 2; }
[[ $settle =~ ^[0-9]+$ ]] || { echo "--settle takes whole seconds, not '$settle'" >&2; exit 2; }

# shellcheck source=services.sh
source scripts/services.sh >/dev/null
target=${CARGO_TARGET_DIR:-target}
if [ -z "$bin_dir" ]; then
  log "building the workers (release)"
  cargo build --release --quiet -p fleet-workers --bins
  bin_dir=$target/release
fi
for binary in order-worker inventory-worker payment-worker notification-worker loadgen; do
  [ -x "$bin_dir/$binary" ] || { echo "$bin_dir/$binary: no such executable" >&2; exit 2; }
done

if $fresh; then
  # Every run otherwise finds the tables, queues and streams of the runs
  # before it; a benchmark should not depend on how many there were.
  log "dropping the fleet database and the $namespace namespace on both brokers"
  psql -h 127.0.0.1 -U postgres -d postgres -qc 'DROP DATABASE IF EXISTS fleet WITH (FORCE)'
  api=${RABBITMQ_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}/api
  for queue in $(curl -sf "$api/queues/%2f?columns=name" | python3 -c '
import json, sys
prefix = sys.argv[1] + "."
print(" ".join(q["name"] for q in json.load(sys.stdin) if q["name"].startswith(prefix)))' "$namespace"); do
    curl -sf -X DELETE "$api/queues/%2f/$queue" >/dev/null
  done
  redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$namespace:*" | xargs -r redis-cli -h 127.0.0.1 -p 6379 del >/dev/null
  # Write back what earlier work (a build, the dropped database) left in
  # the page cache now, not mid-run: the kernel flushes it in one burst
  # that stalls every fsync behind it (a 460 MB flush after a release
  # build cost one run's p99 a second of 290 ms on 2026-12-07).
  sync
fi

# The fleet's own database; each worker owns a schema in it.
psql -h 127.0.0.1 -U postgres -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'fleet'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE fleet'
# Loopback: no TLS (the server offers it, and sslmode=prefer would spend
# CPU on both ends encrypting traffic that never leaves the machine).
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/fleet?sslmode=disable
export FLEET__TRANSPORT=$transport FLEET__NAMESPACE=$namespace FLEET__HTTP__PORT=0
export RUST_LOG=${RUST_LOG:-info,lapin=warn}
# One tokio worker thread per process: eight replicas, Postgres and the
# brokers share two cores here, and a runtime thread per core in every
# replica only adds cross-thread wake-ups (13% more sagas/s over 20,000
# RabbitMQ orders with one, alternating runs on 2026-12-07). Tokio reads it;
# give more on a host where a replica has cores to itself.
export TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1}

logs=$target/fleet-logs
mkdir -p "$logs"
pids=() names=() idle_cpu=()
# Peak RSS (VmHWM) of every replica, read while they still run.
record_replicas() { # record_replicas [IDLE_CPU_SECONDS...]
  local idle=("$@") i first=true
  {
    echo "["
    for i in "${!pids[@]}"; do
      local hwm
      hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/${pids[$i]}/status" 2>/dev/null || true)
      $first || echo ","
      first=false
      printf '  {"replica": "%s", "peak_rss_kib": %s, "idle_cpu_s_per_s": %s}' \
        "${names[$i]}" "${hwm:-null}" "${idle[$i]:-null}"
    done
    echo
    echo "]"
  } >"$logs/replicas.json"
}
# CPU seconds (user + system) a process has used so far.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); print ($12 + $13) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}
# Busy and total jiffies of the whole machine, and its core count.
machine_ticks() {
  awk -v cores="$(nproc)" '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8, cores}' /proc/stat
}
stop_fleet() {
  [ ${#pids[@]} -gt 0 ] || return 0
  record_replicas "${idle_cpu[@]}"
  log "stopping ${#pids[@]} replicas (SIGTERM: drain, then exit 0)"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  pids=()
  [ "$failed" -eq 0 ] && echo "every replica exited 0" || echo "$failed replicas exited non-zero (see $logs)" >&2
}
trap stop_fleet EXIT
trap 'exit 130' INT TERM

log "starting $replicas replicas of each worker on $transport, namespace $namespace"
for worker in order-worker inventory-worker payment-worker notification-worker; do
  for n in $(seq "$replicas"); do
    "$bin_dir/$worker" >"$logs/$worker-$n.log" 2>&1 &
    pids+=($!) names+=("$worker-$n")
  done
done
for file in "$logs"/*-worker-*.log; do
  for _ in $(seq 60); do
    grep -q "worker started" "$file" && break
    grep -q "failed to start" "$file" && { cat "$file" >&2; exit 1; }
    sleep 0.5
  done
  grep -q "worker started" "$file" || { echo "$file: not started after 30 s" >&2; exit 1; }
done
grep -ho 'http=[0-9.:]*' "$logs"/*-worker-*.log | sed 's/http=/  metrics and probes: http:\/\//' | sort -u | head -n 4 || true
echo "  ... (every replica logs its own port; RabbitMQ UI: http://127.0.0.1:15672, guest/guest)"

if [ "$settle" -gt 0 ]; then
  # A benchmark measures the running fleet, not its start: replicas that
  # have just logged "worker started" share the machine with what --fresh
  # and their own start left behind (a dropped database's files, quorum
  # queues just deleted and declared, pools still opening connections).
  log "letting the fleet run idle for $settle s before the load"
  sleep "$settle"
fi
log "loadgen: $orders orders${rate:+ at $rate/s}"
status=0
"$bin_dir/loadgen" --orders "$orders" --rate "$rate" --json | tee "$logs/summary.json" || status=$?

if [ "$idle_seconds" -gt 0 ]; then
  # Let the last acknowledgements and relay marks settle first.
  sleep 2
  before=()
  for pid in "${pids[@]}"; do before+=("$(cpu_seconds "$pid")"); done
  machine_before=$(machine_ticks)
  sleep "$idle_seconds"
  machine_after=$(machine_ticks)
  for i in "${!pids[@]}"; do
    idle_cpu+=("$(awk -v a="${before[$i]}" -v b="$(cpu_seconds "${pids[$i]}")" -v s="$idle_seconds" 'BEGIN {printf "%.4f", (b - a) / s}')")
  done
  replicas_cpu=$(printf '%s\n' "${idle_cpu[@]}" | awk '{t += $1} END {printf "%.4f", t}')
  # Everything the machine did meanwhile: brokers and Postgres included.
  machine_cores=$(awk -v a="$machine_before" -v b="$machine_after" 'BEGIN {
    split(a, x); split(b, y); printf "%.3f", (y[1] - x[1]) / (y[2] - x[2]) * y[3] }')
  printf '{"seconds": %s, "replicas_cpu_s_per_s": %s, "machine_busy_cores": %s}\n' \
    "$idle_seconds" "$replicas_cpu" "$machine_cores" >"$logs/idle.json"
  log "idle for $idle_seconds s: the ${#pids[@]} replicas used $replicas_cpu CPU-s per s; the whole machine $machine_cores busy cores"
fi

if $keep; then
  log "the fleet keeps running; Ctrl-C stops it"
  wait "${pids[@]}" || true
fi
exit "$status"
