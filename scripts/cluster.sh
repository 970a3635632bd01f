#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on loopback, beside the machine's own broker (5672/25672 untouched),
# for the tests of DESIGN.md section 11 (losing a node):
#
#   scripts/cluster.sh start            start the nodes that are not running, join them into one
#                                       cluster, wait until each completes an AMQP handshake
#   scripts/cluster.sh stop             stop every node (SIGKILL after 30 s) and delete the state
#   scripts/cluster.sh status           one line per node; exit 0 only if all three answer
#   scripts/cluster.sh kill-node N      SIGKILL node N's Erlang VM: a crash, not a stop
#   scripts/cluster.sh start-node N     start node N (it rejoins the cluster) and wait for it
#   scripts/cluster.sh restart-node N   stop node N gracefully, then start it
#   scripts/cluster.sh urls             amqp://guest:guest@127.0.0.1:5681/%2f,... (AMQP_URL)
#   scripts/cluster.sh leaders [PREFIX] one line per quorum queue (whose name starts with
#                                       PREFIX): its name, a tab, the number of its leader's node
#   scripts/cluster.sh rebalance        spread the quorum queues' leaders over the running nodes
#   scripts/cluster.sh acquire PID      start, and note that process PID uses the cluster
#   scripts/cluster.sh release PID      PID no longer uses it: stop the cluster if an acquire
#                                       started it and no process that acquired it still runs
#                                       (scripts/test; a cluster started by hand is left alone)
#
# Node N (1..3) is `erasure-cN@localhost`, AMQP on 127.0.0.1:$((5680 + N)), Erlang distribution
# on 127.0.0.1:$((25680 + N)); everything it writes is under $ERASURE_CLUSTER_DIR/cN
# (default /tmp/erasure-rabbit-cluster). The nodes run as the calling user, with an Erlang
# cookie of their own ($ERASURE_CLUSTER_DIR/.erlang.cookie, HOME for every node and every
# rabbitmqctl call), no plugins (nothing binds 15672), and their own config and env files, so
# /etc/rabbitmq (which names the machine's node and its listener) never applies to them.
# The guest user works because every connection comes from loopback. Commands that start or
# stop nodes take a lock ($ERASURE_CLUSTER_DIR.lock), so that two runs never race.
set -euo pipefail

DIR=$(realpath -m "${ERASURE_CLUSTER_DIR:-/tmp/erasure-rabbit-cluster}")
NODES=(1 2 3)
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
RABBIT_BIN=/usr/lib/rabbitmq/bin # the real scripts; /usr/sbin's wrappers switch to user rabbitmq
STARTUP_TIMEOUT=${ERASURE_CLUSTER_TIMEOUT:-120}

log() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "$*"; exit 1; }

node_name() { echo "erasure-c$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }
node_dir() { echo "$DIR/c$1"; }
pid_file() { echo "$DIR/c$1/rabbit.pid"; }

# The environment of node N's server and of every CLI call aimed at it.
node_env() {
  local n=$1 d
  d=$(node_dir "$n")
  export HOME="$DIR"
  export RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT
  RABBITMQ_NODENAME=$(node_name "$n")
  RABBITMQ_NODE_PORT=$(amqp_port "$n")
  RABBITMQ_DIST_PORT=$(dist_port "$n")
  export RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" RABBITMQ_PID_FILE="$d/rabbit.pid"
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
  export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
  # Distribution (node to node, and CLI to node) on loopback only, like the machine's broker.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export ERL_EPMD_ADDRESS=127.0.0.1
}

# rabbitmqctl (or another CLI tool) against node N, in a subshell so the environment stays
# there; bounded by CTL_TIMEOUT seconds, since a wedged node may never answer.
ctl() {
  local n=$1 tool=$2
  shift 2
  (node_env "$n" && timeout "${CTL_TIMEOUT:-$((STARTUP_TIMEOUT + 30))}" \
    "$RABBIT_BIN/$tool" -n "$(node_name "$n")" "$@")
}

# Writes node N's files once: an empty plugin list, a config that only sets what the
# environment cannot, an empty env file (so /etc/rabbitmq/rabbitmq-env.conf is not read).
prepare() {
  local n=$1 d
  d=$(node_dir "$n")
  mkdir -p "$d/mnesia" "$d/log"
  [ -f "$d/enabled_plugins" ] || echo '[].' >"$d/enabled_plugins"
  [ -f "$d/rabbitmq-env.conf" ] || : >"$d/rabbitmq-env.conf"
  if [ ! -f "$d/rabbitmq.conf" ]; then
    cat >"$d/rabbitmq.conf" <<EOF
# Node $n of the test cluster (scripts/cluster.sh). Ports come from the environment.
loopback_users.guest = true
# The disk is shared with everything else on the machine; 50 MB is RabbitMQ's default floor.
disk_free_limit.absolute = 50MB
EOF
  fi
}

ensure_cookie() {
  mkdir -p "$DIR"
  if [ ! -s "$DIR/.erlang.cookie" ]; then
    # Any secret word will do (here 64 hex digits); the nodes and the CLI read it from HOME.
    (umask 077 && head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1 | tr -d '\n' >"$DIR/.erlang.cookie")
    chmod 400 "$DIR/.erlang.cookie"
  fi
}

# The pid of node N's Erlang VM if it is running, else nothing.
node_pid() {
  local f pid
  f=$(pid_file "$1")
  [ -s "$f" ] || return 0
  pid=$(tr -dc '0-9' <"$f")
  # A pid file can outlive its process, and the pid be reused: check it is a BEAM.
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = beam.smp ]; then echo "$pid"; fi
}

# AMQP 0-9-1 handshake (scripts/amqp_probe.py): 0 ok, 1 open but no handshake, 2 closed, 3 refused.
probe() {
  python3 "$SCRIPTS/amqp_probe.py" 127.0.0.1 "$(amqp_port "$1")" --quiet --timeout "${2:-5}"
}

# Someone else's process on a port we need would make the node fail late and obscurely.
check_ports_free() {
  local n=$1 port
  for port in "$(amqp_port "$n")" "$(dist_port "$n")"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port (node $n) is taken by another process: $(ss -Hltnp "sport = :$port" | head -1)"
    fi
  done
}

# Starts node N's VM in the background (-detached), unless it runs already.
launch() {
  local n=$1
  if [ -n "$(node_pid "$n")" ]; then return 0; fi
  check_ports_free "$n"
  prepare "$n"
  rm -f "$(pid_file "$n")"
  log "starting $(node_name "$n") (AMQP $(amqp_port "$n"), distribution $(dist_port "$n"))"
  # 9>&-: the node must not inherit the lock's descriptor (see locked), or it would hold the
  # lock for as long as it runs.
  (node_env "$n" && cd "$(node_dir "$n")" &&
    "$RABBIT_BIN/rabbitmq-server" -detached >"$(node_dir "$n")/log/start.out" 2>&1 9>&-)
}

# Waits until node N has booted: its AMQP listener opens at the end of the boot, so a completed
# handshake is the test (and costs 50 ms, where each rabbitmqctl call costs 1.5-3 s here).
await_node() {
  local n=$1 deadline
  deadline=$((SECONDS + STARTUP_TIMEOUT))
  # -detached writes the pid file a moment after returning.
  until [ -n "$(node_pid "$n")" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "$(node_name "$n") did not start: see $(node_dir "$n")/log"
    sleep 0.2
  done
  await_amqp "$n" "$deadline"
}

# Waits until node N completes an AMQP handshake (until SECONDS reaches $2).
await_amqp() {
  local n=$1 deadline=${2:-$((SECONDS + STARTUP_TIMEOUT))} rc
  while :; do
    rc=0
    probe "$n" 2>/dev/null || rc=$?
    [ "$rc" -eq 0 ] && return 0
    [ -n "$(node_pid "$n")" ] || die "$(node_name "$n") died while booting: see $(node_dir "$n")/log"
    if [ "$SECONDS" -ge "$deadline" ]; then
      probe "$n" || true
      die "$(node_name "$n") booted but does not answer AMQP"
    fi
    sleep 0.3
  done
}

# await_node for several nodes at once.
await_nodes() {
  local n pids=() failed=0
  for n in "$@"; do await_node "$n" & pids+=($!); done
  for n in "${pids[@]}"; do wait "$n" || failed=1; done
  [ "$failed" -eq 0 ] || die "not every node came up"
}

# The nodes node 1 counts as cluster members (running or not), one per line.
members() {
  ctl 1 rabbitmqctl cluster_status --formatter json 2>/dev/null |
    python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["disk_nodes"]))'
}

join() {
  local n=$1
  log "joining $(node_name "$n") to $(node_name 1)"
  ctl "$n" rabbitmqctl stop_app >/dev/null
  # A node that was clustered elsewhere must forget it first; a fresh one joins as it is.
  if ! ctl "$n" rabbitmqctl join_cluster "$(node_name 1)" >/dev/null 2>&1; then
    ctl "$n" rabbitmqctl reset >/dev/null
    ctl "$n" rabbitmqctl join_cluster "$(node_name 1)" >/dev/null
  fi
  ctl "$n" rabbitmqctl start_app >/dev/null
  await_amqp "$n"
}

# Waits until process $1 is gone, SIGKILLing it after $2 seconds (0: at once).
reap() {
  local pid=$1 grace=$2 i
  for ((i = 0; i < grace * 10; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

# Kills node N's VM with SIGKILL and waits until it is gone.
kill_vm() {
  local pid
  pid=$(node_pid "$1")
  [ -z "$pid" ] || reap "$pid" 0
}

# Stops node N: `rabbitmqctl stop` (30 s at most), then waits for its VM to exit, which it
# does a moment after the pid file is gone; SIGKILL if it has not after 10 s more.
stop_node() {
  local n=$1 pid
  pid=$(node_pid "$n")
  [ -n "$pid" ] || return 0
  log "stopping $(node_name "$n")"
  CTL_TIMEOUT=30 ctl "$n" rabbitmqctl stop >/dev/null 2>&1 || log "rabbitmqctl stop failed or timed out"
  reap "$pid" 10
}

valid_node() {
  [[ "${1:-}" =~ ^[123]$ ]] || die "node must be 1, 2 or 3, not '${1:-}'"
}

# Erlang's name server (port 4369) is shared with the machine's broker, which normally started
# it. If nothing runs it yet, start it here (on loopback) and remember to stop it.
ensure_epmd() {
  epmd -names >/dev/null 2>&1 && return 0
  log "starting epmd (no Erlang name server was running)"
  ERL_EPMD_ADDRESS=127.0.0.1 epmd -daemon 9>&-
  touch "$DIR/.started-epmd"
}

cmd_start() {
  command -v python3 >/dev/null || die "python3 is needed (scripts/amqp_probe.py)"
  [ -x "$RABBIT_BIN/rabbitmq-server" ] || die "RabbitMQ is not installed: run scripts/services.sh"
  ensure_cookie
  ensure_epmd
  local n rc
  # A node whose port is open but that no longer completes a handshake is wedged: restart it.
  for n in "${NODES[@]}"; do
    [ -n "$(node_pid "$n")" ] || continue
    rc=0
    probe "$n" 2>/dev/null || rc=$?
    if [ "$rc" -eq 1 ]; then
      log "$(node_name "$n") accepts connections but does not complete an AMQP handshake: restarting it"
      kill_vm "$n"
    fi
  done
  # Started together: a node that was clustered waits at boot for its peers.
  for n in "${NODES[@]}"; do launch "$n"; done
  await_nodes "${NODES[@]}"
  local have joined=0
  have=$(members)
  # One at a time: two nodes joining at once race on the cluster's schema.
  for n in 2 3; do
    grep -qx "$(node_name "$n")" <<<"$have" || { join "$n"; joined=1; }
  done
  [ "$joined" -eq 0 ] || have=$(members)
  have=$(sort <<<"$have" | tr '\n' ' ')
  [ "$have" = "erasure-c1@localhost erasure-c2@localhost erasure-c3@localhost " ] ||
    die "the cluster has members '$have'"
  log "cluster up: $(cmd_urls)"
}

cmd_stop() {
  local n pids=()
  # All at once: the state is deleted below, so the order of leaving does not matter.
  for n in "${NODES[@]}"; do stop_node "$n" & pids+=($!); done
  for n in "${pids[@]}"; do wait "$n" || true; done
  # epmd, if we started it and no other node (the machine's broker) has registered since.
  if [ -f "$DIR/.started-epmd" ] && ! epmd -names 2>/dev/null | grep -q '^name '; then
    epmd -kill >/dev/null 2>&1 || true
  fi
  # Safety: only ever delete a directory that looks like ours.
  if [ -d "$DIR" ]; then
    [ -f "$DIR/.erlang.cookie" ] || [ -z "$(ls -A "$DIR")" ] || die "$DIR is not a cluster directory; not deleting it"
    rm -rf "$DIR"
  fi
  log "stopped; $DIR removed"
}

cmd_status() {
  local n pid rc all=0 state
  for n in "${NODES[@]}"; do
    pid=$(node_pid "$n")
    if [ -z "$pid" ]; then
      state="down"
      all=1
    else
      rc=0
      probe "$n" 2>/dev/null || rc=$?
      case "$rc" in
        0) state="up (pid $pid, AMQP handshake ok)" ;;
        *) state="running (pid $pid) but no AMQP handshake (probe exit $rc)"; all=1 ;;
      esac
    fi
    printf '%s\t127.0.0.1:%s\t%s\n' "$(node_name "$n")" "$(amqp_port "$n")" "$state"
  done
  for n in "${NODES[@]}"; do
    [ -n "$(node_pid "$n")" ] || continue
    printf 'running members seen by %s: %s\n' "$(node_name "$n")" "$(ctl "$n" rabbitmqctl cluster_status \
      --formatter json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["running_nodes"]))' ||
      echo '?')"
    break
  done
  return "$all"
}

# Quorum queues and the node number of each one's leader, asked of the first running node.
cmd_leaders() {
  local prefix=${1:-} n
  for n in "${NODES[@]}"; do
    [ -n "$(node_pid "$n")" ] || continue
    CTL_TIMEOUT=30 ctl "$n" rabbitmqctl list_queues name type leader --formatter json -q |
      PREFIX="$prefix" python3 -c '
import json, os, sys
for q in json.load(sys.stdin):
    if q.get("type") == "quorum" and q["name"].startswith(os.environ["PREFIX"]):
        node = q.get("leader") or ""
        # erasure-cN@localhost -> N
        print(q["name"], node[len("erasure-c"):].split("@")[0] if node.startswith("erasure-c") else "?", sep="\t")'
    return 0
  done
  die "no node is running"
}

cmd_rebalance() {
  local n
  for n in "${NODES[@]}"; do
    [ -n "$(node_pid "$n")" ] || continue
    CTL_TIMEOUT=60 ctl "$n" rabbitmq-queues rebalance quorum >/dev/null
    log "leaders rebalanced"
    return 0
  done
  die "no node is running"
}

# Holders: one file per process that acquired the cluster; .started-by-acquire when an
# acquire found it down and started it (only then may a release stop it).
cmd_acquire() {
  local pid=$1 was_up=1 n
  for n in "${NODES[@]}"; do [ -n "$(node_pid "$n")" ] || was_up=0; done
  cmd_start
  mkdir -p "$DIR/.holders"
  : >"$DIR/.holders/$pid"
  [ "$was_up" -eq 1 ] || : >"$DIR/.started-by-acquire"
}

cmd_release() {
  local pid=$1 other f
  rm -f "$DIR/.holders/$pid"
  [ -f "$DIR/.started-by-acquire" ] || { log "left running: it was not started by an acquire"; return 0; }
  for f in "$DIR"/.holders/*; do
    [ -e "$f" ] || continue
    other=$(basename "$f")
    if kill -0 "$other" 2>/dev/null; then log "left running: process $other still uses it"; return 0; fi
    rm -f "$f"
  done
  cmd_stop
}

# Runs a command under the cluster's lock: held by descriptor 9 of this shell, released when
# it exits. Daemons started under it must close that descriptor.
locked() {
  mkdir -p "$(dirname "$DIR")"
  exec 9>"$DIR.lock"
  flock 9
  "$@"
}

cmd_urls() {
  local n urls=()
  for n in "${NODES[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"); done
  (IFS=,; echo "${urls[*]}")
}

cmd_kill_node() {
  [ -n "$(node_pid "$1")" ] || die "$(node_name "$1") is not running"
  log "SIGKILL $(node_name "$1") (pid $(node_pid "$1"))"
  kill_vm "$1"
}

cmd_start_node() {
  [ -f "$DIR/.erlang.cookie" ] || die "no cluster in $DIR: run scripts/cluster.sh start"
  launch "$1"
  await_node "$1"
  log "$(node_name "$1") is up"
}

cmd_restart_node() {
  [ -f "$DIR/.erlang.cookie" ] || die "no cluster in $DIR: run scripts/cluster.sh start"
  stop_node "$1"
  launch "$1"
  await_node "$1"
  log "$(node_name "$1") is up"
}

valid_pid() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] || die "a process id is needed, not '${1:-}'"
}

case "${1:-}" in
  start) locked cmd_start ;;
  stop) locked cmd_stop ;;
  status) cmd_status ;;
  urls) cmd_urls ;;
  leaders) cmd_leaders "${2:-}" ;;
  rebalance) cmd_rebalance ;;
  acquire) valid_pid "${2:-}"; locked cmd_acquire "$2" ;;
  release) valid_pid "${2:-}"; locked cmd_release "$2" ;;
  kill-node) valid_node "${2:-}"; locked cmd_kill_node "$2" ;;
  start-node) valid_node "${2:-}"; locked cmd_start_node "$2" ;;
  restart-node) valid_node "${2:-}"; locked cmd_restart_node "$2" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2 ;;
esac
