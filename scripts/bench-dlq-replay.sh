#!/usr/bin/env bash
# Replays N (default 100,000) dead letters with dlq-tool at full speed and
# reports the rate and the process's maximum RSS, beside a raw confirmed
# publish of the same messages.
#
#   scripts/bench-dlq-replay.sh                    # rabbitmq, release build
#   TRANSPORT=redis PROFILE=debug N=20000 scripts/bench-dlq-replay.sh
#
# Needs the services (DATABASE_URL, AMQP_URL, REDIS_URL as for the tests) and
# GNU time (/usr/bin/time). Runs in a fresh namespace and removes its queues
# or streams afterwards (RabbitMQ through the management API at
# RABBITMQ_MANAGEMENT_URL, Redis with redis-cli when installed).
#
# Steps, each a real dlq-tool run:
#   1. fill:   `import` of N generated dead letters (pipelined XADD / confirmed
#              publishes into the dead-letter queue);
#   2. raw:    `import --replay` of the same N: confirmed publishes straight to
#              the worker (window 500, nothing read or removed): the reference;
#   3. replay: `replay --all`: browse once to fix the selection, then fetch,
#              republish, wait for the confirm, remove; streamed, so its RSS
#              must stay small (target: at most 50 MiB).
set -euo pipefail

N=${N:-100000}
TRANSPORT=${TRANSPORT:-rabbitmq}
PROFILE=${PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-target}
WORKER=inventory-worker
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [[ $PROFILE == release ]]; then
  cargo build --manifest-path "$ROOT/Cargo.toml" -p dlq-tool --release >&2
  BIN=$TARGET/release/dlq-tool
else
  cargo build --manifest-path "$ROOT/Cargo.toml" -p dlq-tool >&2
  BIN=$TARGET/debug/dlq-tool
fi

NS=bench$(date +%s)
export FLEET__NAMESPACE=$NS FLEET__TRANSPORT=$TRANSPORT
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [[ $TRANSPORT == redis ]]; then
  SOURCE="$NS:events:order.placed"
else
  SOURCE="order.placed"
fi

awk -v n="$N" -v source="$SOURCE" -v worker="$WORKER" -v transport="$TRANSPORT" 'BEGIN {
  srand();
  prefix = sprintf("%08x", int(rand() * 4294967295));
  for (i = 0; i < n; i++) {
    id = sprintf("%s-0000-7000-8000-%012d", prefix, i);
    printf "{\"id\":\"%s\",\"worker\":\"%s\",\"transport\":\"%s\",\"type\":\"order.placed\",", id, worker, transport;
    printf "\"source\":\"%s\",\"error_kind\":\"handler\",\"error\":\"bench failure %d\",\"attempts\":1,\"replays\":0,", source, i % 7;
    printf "\"body\":\"{\\\"specversion\\\":\\\"1.0\\\",\\\"id\\\":\\\"%s\\\",\\\"type\\\":\\\"order.placed\\\",\\\"n\\\":%d}\",\"body_encoding\":\"utf8\"}\n", id, i;
  }
}' > "$WORK/letters.jsonl"

# Runs dlq-tool under GNU time; prints "<elapsed seconds> <max RSS KiB>".
timed() {
  local log=$1; shift
  /usr/bin/time -v -o "$WORK/$log.time" "$BIN" "$@" > "$WORK/$log.out" 2> "$WORK/$log.err" || {
    echo "dlq-tool $* failed:" >&2; cat "$WORK/$log.err" "$WORK/$log.out" >&2; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {
    n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$WORK/$log.time")
  rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$WORK/$log.time")
  echo "$wall $rss"
}

read -r fill_s fill_kb < <(timed fill import "$WORK/letters.jsonl" --worker "$WORKER" --reason bench)
read -r raw_s raw_kb < <(timed raw import "$WORK/letters.jsonl" --worker "$WORKER" --replay --reason bench)
read -r replay_s replay_kb < <(timed replay replay "$WORKER" --all --stop-after-failures 0 --json --reason bench)

replayed=$(sed -E 's/.*"replayed":([0-9]+).*/\1/' "$WORK/replay.out")
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "inf" }'; }

printf '\n%s, %s dead letters, %s build (namespace %s)\n' "$TRANSPORT" "$N" "$PROFILE" "$NS"
printf '%-34s %10s %12s %12s\n' "step" "seconds" "msgs/s" "max RSS MiB"
printf '%-34s %10s %12s %12.1f\n' "fill (import into the DLQ)" "$fill_s" "$(rate "$N" "$fill_s")" "$(awk -v k="$fill_kb" 'BEGIN{print k/1024}')"
printf '%-34s %10s %12s %12.1f\n' "raw confirmed publish (import --replay)" "$raw_s" "$(rate "$N" "$raw_s")" "$(awk -v k="$raw_kb" 'BEGIN{print k/1024}')"
printf '%-34s %10s %12s %12.1f\n' "replay --all (confirmed, removed)" "$replay_s" "$(rate "$replayed" "$replay_s")" "$(awk -v k="$replay_kb" 'BEGIN{print k/1024}')"
echo "replay output: $(cat "$WORK/replay.out")"
if (( replay_kb > 50 * 1024 )); then
  echo "FAIL: replay used more than 50 MiB" >&2
fi

# Clean up the namespace's queues or streams (best effort).
if [[ $TRANSPORT == rabbitmq ]]; then
  MGMT=${RABBITMQ_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}
  for queue in $(curl -sS "$MGMT/api/queues/%2f?columns=name" | grep -o "\"$NS\.[^\"]*\"" | tr -d '"'); do
    curl -sS -X DELETE "$MGMT/api/queues/%2f/$queue" > /dev/null || true
  done
elif command -v redis-cli > /dev/null; then
  redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" --scan --pattern "$NS:*" | xargs -r redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" DEL > /dev/null
fi
