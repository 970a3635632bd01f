#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ are running on 127.0.0.1 with the service's default
# settings: starts them if they are installed but stopped, installs them with apt-get (Debian)
# if they are missing, and restarts a RabbitMQ that accepts connections but no longer completes
# an AMQP handshake. With --tools (scripts/test), also installs what the tests run, never as
# daemons: pgbouncer and promtool (Debian's `pgbouncer` and `prometheus`), kubernetes-validate,
# the API fuzzer schemathesis and the JOSE library jwcrypto (PyPI). Safe to run again.
set -euo pipefail

PG_PORT=5432
AMQP_PORT=5672
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
# The version tests/it/fuzz.rs was written against; a newer one may add checks.
SCHEMATHESIS_VERSION=4.32.5
# The JOSE library tests/it/receipt.rs verifies receipts with: Python's, on OpenSSL's Ed25519,
# so that a receipt is checked by an implementation that shares nothing with the signer.
JWCRYPTO_VERSION=1.6.1

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

# Installs packages whose daemons we do not want (we need their binaries only): Debian's
# maintainer scripts start a package's service unless /usr/sbin/policy-rc.d answers 101
# ("action forbidden"), so one is put in place for the install when the machine has none.
apt_install_tool() {
  local policy=/usr/sbin/policy-rc.d ours=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Placed by scripts/services.sh for one apt-get install.\nexit 101\n' |
      as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    ours=1
  fi
  local rc=0
  apt_install --no-install-recommends "$@" || rc=$?
  if [ "$ours" -eq 1 ]; then as_root rm -f "$policy"; fi
  return "$rc"
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

# A real AMQP 0-9-1 handshake as guest/guest (scripts/amqp_probe.py): 0 completed, 1 the port
# is open but the handshake did not complete, 2 nothing listens, 3 the broker refuses guest.
amqp_probe() {
  python3 "$SCRIPTS/amqp_probe.py" 127.0.0.1 "$AMQP_PORT" --quiet --timeout "${1:-10}"
}

# The pid of the broker's Erlang VM: its pid file, else whoever listens on the AMQP port.
rabbit_pid() {
  local node pid
  node=$(sed -n 's/^NODENAME=//p' /etc/rabbitmq/rabbitmq-env.conf 2>/dev/null | tail -1)
  node=${node:-rabbit@$(hostname -s)}
  pid=$(as_root cat "/var/lib/rabbitmq/mnesia/$node.pid" 2>/dev/null || true)
  if [ -z "$pid" ]; then
    pid=$(ss -Hltnp "sport = :$AMQP_PORT" 2>/dev/null | sed -n 's/.*beam[^,]*,pid=\([0-9]*\).*/\1/p' | head -1)
  fi
  echo "$pid"
}

# Restarts a broker that no longer answers: a graceful stop first, bounded, since a wedged node
# may not answer rabbitmqctl either; then SIGKILL of its Erlang VM if it is still there.
restart_rabbitmq() {
  local pid
  pid=$(rabbit_pid)
  log "stopping RabbitMQ (rabbitmqctl stop, 60 s at most)"
  as_root timeout 60 rabbitmqctl stop >/dev/null 2>&1 || log "rabbitmqctl stop failed or timed out"
  if [ -n "$pid" ]; then
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      log "RabbitMQ's Erlang VM (pid $pid) is still running: killing it"
      as_root kill -KILL "$pid" || true
    fi
  fi
  for _ in $(seq 1 40); do port_open "$AMQP_PORT" || break; sleep 0.5; done
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached || true
}

# Waits (up to 120 s) until the broker completes a handshake.
await_rabbitmq() {
  as_root rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
  wait_port "$AMQP_PORT" RabbitMQ
  local rc=1
  for _ in $(seq 1 24); do
    rc=0; amqp_probe 5 2>/dev/null || rc=$?
    [ "$rc" -eq 0 ] && return 0
    [ "$rc" -eq 3 ] && break
    sleep 1
  done
  amqp_probe 5 || true
  log "RabbitMQ on port $AMQP_PORT does not complete an AMQP handshake"
  exit 1
}

ensure_rabbitmq() {
  if port_open "$AMQP_PORT"; then
    local rc=0
    amqp_probe || rc=$?
    case "$rc" in
      0) log "RabbitMQ is running (AMQP handshake completed)"; return ;;
      3) log "RabbitMQ answers but refuses guest/guest: fix its users, restarting would not help"
         exit 1 ;;
      1) log "RabbitMQ accepts connections on port $AMQP_PORT but does not complete an AMQP" \
           "handshake (wedged): restarting it"
         restart_rabbitmq
         await_rabbitmq
         log "RabbitMQ restarted and answers the AMQP handshake"
         return ;;
    esac
    # 2: it stopped listening since port_open: start it below.
  fi
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing RabbitMQ (apt-get)"
    apt_install rabbitmq-server
  fi
  # The package may have started it already.
  if ! port_open "$AMQP_PORT"; then
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached || true
  fi
  await_rabbitmq
  log "RabbitMQ is running (AMQP handshake completed)"
}

# Binaries the tests run (tests/it/fleet.rs, tests/it/pgbouncer.rs); never left running.
ensure_tools() {
  local missing=()
  [ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null || missing+=(pgbouncer)
  command -v promtool >/dev/null || missing+=(prometheus)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt-get; their daemons are not started)"
    apt_install_tool "${missing[@]}"
  fi
  if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    log "installing kubernetes-validate (pip)"
    local out rc=0
    out=$(python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate 2>&1) || rc=$?
    if [ "$rc" -ne 0 ] && grep -q externally-managed <<<"$out"; then
      # Debian's own python3 refuses pip installs (PEP 668) unless told.
      rc=0
      out=$(python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
        kubernetes-validate 2>&1) || rc=$?
    fi
    if [ "$rc" -ne 0 ]; then log "pip failed: $out"; exit 1; fi
  fi
}

ensure_schemathesis() {
  if command -v schemathesis >/dev/null; then log "schemathesis is installed"; return; fi
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  log "installing schemathesis (pip)"
  # Debian's own Python refuses pip outside a virtualenv (PEP 668) unless told to; a user
  # install leaves the system's packages alone (scripts/test puts its bin on PATH).
  python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION" 2>/dev/null ||
    python3 -m pip install --quiet --user --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION"
}

ensure_jwcrypto() {
  if python3 -c 'import jwcrypto' 2>/dev/null; then log "jwcrypto is installed"; return; fi
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  log "installing jwcrypto (pip)"
  python3 -m pip install --quiet "jwcrypto==$JWCRYPTO_VERSION" 2>/dev/null ||
    python3 -m pip install --quiet --user --break-system-packages "jwcrypto==$JWCRYPTO_VERSION"
}

command -v python3 >/dev/null || apt_install python3
ensure_postgres
ensure_rabbitmq
if [ "${1:-}" = "--tools" ]; then
  ensure_tools
  ensure_schemathesis
  ensure_jwcrypto
fi
