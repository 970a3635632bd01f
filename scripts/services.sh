#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ are running on 127.0.0.1 with the service's default
# settings: starts them if they are installed but stopped, installs them with apt-get (Debian)
# if they are missing. With --fuzzer (scripts/test), also installs schemathesis with pip if it
# is missing: tests/it/fuzz.rs runs it against the intake. Safe to run again.
set -euo pipefail

PG_PORT=5432
AMQP_PORT=5672
# The version tests/it/fuzz.rs was written against; a newer one may add checks.
SCHEMATHESIS_VERSION=4.32.5

log() { printf '[services] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root (or sudo) to run: $*"; exit 1
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 120); do port_open "$port" && return 0; sleep 0.5; done
  log "$name did not open port $port"; exit 1
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open "$PG_PORT"; then log "PostgreSQL is running"; return; fi
  local fresh=0
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    log "installing PostgreSQL (apt-get)"
    apt_install postgresql
    fresh=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -1)
  if [ "$fresh" -eq 1 ]; then
    # A fresh Debian cluster asks for passwords on TCP; the defaults connect as `postgres`
    # without one, from this machine only.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
      log "allowing trust auth for user postgres from 127.0.0.1 in $hba"
      as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    fi
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port "$PG_PORT" PostgreSQL
}

ensure_rabbitmq() {
  if port_open "$AMQP_PORT"; then log "RabbitMQ is running"; return; fi
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing RabbitMQ (apt-get)"
    apt_install rabbitmq-server
  fi
  # The package may have started it already.
  if ! port_open "$AMQP_PORT"; then
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached || true
  fi
  as_root rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
  wait_port "$AMQP_PORT" RabbitMQ
}

ensure_schemathesis() {
  if command -v schemathesis >/dev/null; then log "schemathesis is installed"; return; fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    log "installing pip (apt-get)"
    apt_install python3-pip
  fi
  log "installing schemathesis (pip)"
  # Debian's own Python refuses pip outside a virtualenv (PEP 668) unless told to; a user
  # install leaves the system's packages alone (scripts/test puts its bin on PATH).
  python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION" 2>/dev/null ||
    python3 -m pip install --quiet --user --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION"
}

ensure_postgres
ensure_rabbitmq
if [ "${1:-}" = "--fuzzer" ]; then ensure_schemathesis; fi
