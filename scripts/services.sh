#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and RabbitMQ answer on 127.0.0.1. Starts any that is
# down; installs it with apt when it is missing and we are root on Debian/Ubuntu.
# Services configured in the environment on another host are left alone.
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # port name seconds
  local deadline=$((SECONDS + ${3:-60}))
  until port_open "$1"; do
    ((SECONDS < deadline)) || die "$2 did not open port $1 within ${3:-60}s"
    sleep 0.5
  done
}

is_local() {  # url
  [[ -z "$1" || "$1" == *"@127.0.0.1"* || "$1" == *"//127.0.0.1"* || "$1" == *"localhost"* ]]
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null || die "$1 is not installed and apt-get is not available; install it and re-run"
  [[ $(id -u) == 0 ]] || die "$1 is not installed; run 'sudo apt-get install $*' and re-run"
  if [[ -z "$APT_UPDATED" ]]; then apt-get update -qq; APT_UPDATED=1; fi
  log "installing $* with apt"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  is_local "${DATABASE_URL:-}" || { log "PostgreSQL is remote (DATABASE_URL); not managing it"; return; }
  port_open 5432 && { log "PostgreSQL up"; return; }
  local fresh=""
  if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; fresh=1; fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -1)
  if [[ -n "$fresh" ]]; then
    # The default URL connects as postgres over TCP without a password: allow
    # that from loopback only, on this freshly installed development server.
    sed -i '1i host all all 127.0.0.1/32 trust' "/etc/postgresql/$version/main/pg_hba.conf"
    log "PostgreSQL installed; loopback connections trusted for local development"
  fi
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL
}

ensure_redis() {
  is_local "${REDIS_URL:-}" || { log "Redis is remote (REDIS_URL); not managing it"; return; }
  port_open 6379 && { log "Redis up"; return; }
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 Redis
}

ensure_rabbitmq() {
  is_local "${CELERY_BROKER_URL:-}" || { log "RabbitMQ is remote (CELERY_BROKER_URL); not managing it"; return; }
  port_open 5672 && { log "RabbitMQ up"; return; }
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  if timeout 20 rabbitmqctl -q status >/dev/null 2>&1; then
    log "RabbitMQ node is running with its app stopped; starting the app"
    rabbitmqctl -q start_app
  else
    log "starting RabbitMQ (takes a few seconds)"
    rabbitmq-server -detached
  fi
  timeout 120 rabbitmqctl await_startup >/dev/null || die "RabbitMQ did not start within 120s"
  wait_port 5672 RabbitMQ
}

ensure_postgres
ensure_redis
ensure_rabbitmq
