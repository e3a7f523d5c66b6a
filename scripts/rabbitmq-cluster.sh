#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for the broker-failover tests and the load
# generator. It runs beside (and never touches) the machine's own broker.
#
#   scripts/rabbitmq-cluster.sh start        start the three nodes (joining them the first time)
#   scripts/rabbitmq-cluster.sh stop         stop them (their data stays for the next start)
#   scripts/rabbitmq-cluster.sh kill N       SIGKILL node N's Erlang VM (N = 1, 2 or 3)
#   scripts/rabbitmq-cluster.sh start-node N start node N again (after a kill), back in the cluster
#   scripts/rabbitmq-cluster.sh urls         the nodes' AMQP URLs, comma-separated (an amqp_url)
#   scripts/rabbitmq-cluster.sh status       the cluster as the first running node sees it
#   scripts/rabbitmq-cluster.sh ctl N ARGS   rabbitmqctl ARGS against node N
#   scripts/rabbitmq-cluster.sh wipe         stop the nodes and delete their data
#
# Node N is `horizon-N@localhost`, AMQP on 127.0.0.1:(HORIZON_CLUSTER_PORT + N - 1) (default 5681,
# 5682, 5683), Erlang distribution on 25681..25683, data and logs under HORIZON_CLUSTER_DIR
# (default /tmp/horizon-rabbitmq-cluster). As root the nodes run as the `rabbitmq` user (runuser)
# and share its Erlang cookie; otherwise they run as the caller with the caller's cookie.
# Needs Debian's rabbitmq-server package (scripts/test.sh installs it).
set -euo pipefail

BASE_PORT="${HORIZON_CLUSTER_PORT:-5681}"
DIR="${HORIZON_CLUSTER_DIR:-/tmp/horizon-rabbitmq-cluster}"
BIN=/usr/lib/rabbitmq/bin
NODES=(1 2 3)

die() { printf 'rabbitmq-cluster.sh: %s\n' "$*" >&2; exit 1; }
[ -x "$BIN/rabbitmq-server" ] || die "RabbitMQ is not installed ($BIN/rabbitmq-server is missing)"

if [ "$(id -u)" -eq 0 ]; then
    RUN_AS=(runuser -u rabbitmq --)
    COOKIE_HOME=/var/lib/rabbitmq
else
    RUN_AS=()
    COOKIE_HOME="$HOME"
fi

name() { echo "horizon-$1@localhost"; }
port() { echo $((BASE_PORT + $1 - 1)); }
node_dir() { echo "$DIR/node$1"; }

# as_node N CMD...: runs CMD with node N's environment, as the nodes' user.
as_node() {
    local n=$1
    shift
    local d
    d=$(node_dir "$n")
    "${RUN_AS[@]}" env HOME="$COOKIE_HOME" \
        RABBITMQ_NODENAME="$(name "$n")" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$(port "$n")" \
        RABBITMQ_DIST_PORT=$((20000 + $(port "$n"))) \
        RABBITMQ_MNESIA_BASE="$d/mnesia" \
        RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_PID_FILE="$d/pid" \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
        "$@"
}

ctl() {
    local n=$1
    shift
    as_node "$n" "$BIN/rabbitmqctl" -n "$(name "$n")" "$@"
}

running() { ctl "$1" status >/dev/null 2>&1; }

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

prepare() {
    local n=$1 d
    d=$(node_dir "$n")
    mkdir -p "$d/mnesia" "$d/log"
    cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$(port "$n")
loopback_users = none
# A killed peer is noticed at once on loopback; keep partitions from pausing the survivors.
cluster_partition_handling = ignore
EOF
    echo '[].' >"$d/advanced.config"
    echo '[].' >"$d/enabled_plugins"
    : >"$d/rabbitmq-env.conf"
    [ "${#RUN_AS[@]}" -eq 0 ] || chown -R rabbitmq:rabbitmq "$DIR"
}

start_node() {
    local n=$1
    if running "$n"; then
        ensure_pid_file "$n"
        return
    fi
    prepare "$n"
    # A SIGKILLed node leaves its pid file behind; the server refuses to start over it.
    rm -f "$(node_dir "$n")/pid"
    as_node "$n" "$BIN/rabbitmq-server" -detached >/dev/null 2>&1 || true
    # Waits only for this node to boot: a restarted member waits for its peers inside the app.
    local deadline=$((SECONDS + 120))
    until ctl "$n" await_startup --timeout 5 >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "node $n did not start within 120 s (see $(node_dir "$n")/log)"
        sleep 1
    done
    ensure_pid_file "$n"
}

# Makes sure node N's pid file names its VM (`kill` reads it: instant, where asking the node
# takes about 2 s); the server does not always leave one behind.
ensure_pid_file() {
    local n=$1 pid_file pid
    pid_file="$(node_dir "$n")/pid"
    pid=""
    [ ! -r "$pid_file" ] || pid=$(tr -cd '0-9' <"$pid_file")
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        pid=$(ctl "$n" eval 'os:getpid().' 2>/dev/null | tr -cd '0-9')
        [ -z "$pid" ] || echo "$pid" >"$pid_file"
    fi
}

join() {
    local n=$1
    if ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "\"$(name "$n")\""; then
        return
    fi
    ctl "$n" stop_app >/dev/null 2>&1
    ctl "$n" reset >/dev/null 2>&1
    ctl "$n" join_cluster "$(name 1)" >/dev/null 2>&1
    ctl "$n" start_app >/dev/null 2>&1
}

urls() {
    local out="" n
    for n in "${NODES[@]}"; do
        out="${out:+$out,}amqp://guest:guest@127.0.0.1:$(port "$n")/%2f"
    done
    echo "$out"
}

check_node() {
    case "${1:-}" in
        1|2|3) ;;
        *) die "node must be 1, 2 or 3 (got '${1:-}')" ;;
    esac
}

case "${1:-}" in
    start)
        mkdir -p "$DIR"
        for n in "${NODES[@]}"; do start_node "$n" & done
        wait
        join 2
        join 3
        for n in "${NODES[@]}"; do
            answers "$(port "$n")" || die "node $n does not accept AMQP on $(port "$n")"
        done
        echo "cluster up: $(urls)"
        ;;
    stop)
        for n in "${NODES[@]}"; do
            if running "$n"; then ctl "$n" stop >/dev/null 2>&1 || true; fi
        done
        ;;
    kill)
        check_node "${2:-}"
        # The pid file first: it is instant, and failover tests time from this moment. A node
        # started without one is asked for its pid (`os:getpid()` prints a quoted string, so
        # the digits only; rabbitmqctl takes about 2 s to answer).
        pid_file="$(node_dir "$2")/pid"
        pid=""
        [ ! -r "$pid_file" ] || pid=$(tr -cd '0-9' <"$pid_file")
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
            pid=$(ctl "$2" eval 'os:getpid().' 2>/dev/null | tr -cd '0-9')
        fi
        [ -n "$pid" ] || die "node $2 is not running (no pid file, no answer)"
        kill -KILL "$pid" 2>/dev/null || true
        # Dead means dead: the test that follows counts on it. A zombie is dead (its parent
        # reaps it about a second later).
        for _ in $(seq 1 200); do
            state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
            case "$state" in '' | Z) exit 0 ;; esac
            sleep 0.05
        done
        die "node $2 (pid $pid) survived SIGKILL for 10 s"
        ;;
    start-node)
        check_node "${2:-}"
        start_node "$2"
        ;;
    urls)
        urls
        ;;
    status)
        for n in "${NODES[@]}"; do
            if running "$n"; then
                ctl "$n" cluster_status
                exit 0
            fi
        done
        die "no node of the cluster is running"
        ;;
    ctl)
        check_node "${2:-}"
        n=$2
        shift 2
        ctl "$n" "$@"
        ;;
    wipe)
        "$0" stop
        rm -rf "$DIR"
        ;;
    *)
        sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
