#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis and RabbitMQ (with its management plugin) are
# installed from Debian's packages and answering on their standard local ports,
# then exports DATABASE_URL, AMQP_URL, REDIS_URL and RABBITMQ_MANAGEMENT_URL.
#
#   source scripts/services.sh     # in your shell, before cargo nextest run
#
# Safe to run again: it only installs or starts what is missing or stopped.

_fleet_log() { printf '==> %s\n' "$*"; }
log() { _fleet_log "$@"; }

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v rabbitmq-server >/dev/null 2>&1 || need_apt+=(rabbitmq-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

wait_for() { # wait_for NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then echo "$name is up"; return 0; fi
    sleep 1
  done
  echo "$name did not come up within ${seconds}s" >&2
  return 1
}

log "PostgreSQL"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
fi
wait_for PostgreSQL 60 pg_isready -q -h 127.0.0.1 -p 5432
# The tests connect as postgres over local TCP without a password, as on the
# developer machines; a fresh Debian install wants one, so trust loopback.
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf | sort -V | tail -n1)
  log "trusting loopback connections in $hba"
  sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1\/32|::1\/128)[[:space:]]+)[a-z0-9-]+/\1trust/' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main reload
  wait_for "PostgreSQL (trust)" 30 psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1'
fi

# Fleet tests run many replicas at once (each with a pool, a LISTEN
# connection and a relay); the Debian default of 100 connections is too few.
if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'show max_connections')" -lt 400 ]; then
  log "raising PostgreSQL max_connections to 400 (restart)"
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'ALTER SYSTEM SET max_connections = 400' >/dev/null
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main restart
  wait_for PostgreSQL 60 psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1'
fi

log "Redis"
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
wait_for Redis 30 redis-cli -h 127.0.0.1 -p 6379 ping

log "RabbitMQ"
# Every quorum queue holds files open: the default limit of about a thousand
# descriptors runs out long before a fleet with retry tiers per worker does.
rabbitmq_fd_limit() {
  rabbitmqctl status 2>/dev/null | sed -n 's/.*Total: [0-9]*, limit: \([0-9]*\).*/\1/p' | head -n1
}
if rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  limit=$(rabbitmq_fd_limit)
  if [ -n "$limit" ] && [ "$limit" -lt 16000 ]; then
    log "restarting RabbitMQ with more file descriptors (limit was $limit)"
    rabbitmqctl stop >/dev/null 2>&1 || true
    sleep 2
  fi
fi
# Debian's rabbitmq-server starts the node through `su rabbitmq`, whose PAM
# session (pam_limits) sets the limit: raise it there.
# (It cannot go above the hard limit this shell inherited.)
if [ -d /etc/security/limits.d ]; then
  nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=65536
  [ "$nofile" -gt 65536 ] && nofile=65536
  printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' "$nofile" "$nofile" > /etc/security/limits.d/rabbitmq.conf
fi
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  rabbitmq-server -detached || true
fi
wait_for RabbitMQ 120 rabbitmq-diagnostics -q ping
rabbitmqctl await_startup >/dev/null
if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
  rabbitmq-plugins enable rabbitmq_management >/dev/null
fi
wait_for "RabbitMQ management API" 60 curl -sf -u guest:guest http://127.0.0.1:15672/api/overview

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export RABBITMQ_MANAGEMENT_URL=${RABBITMQ_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}
