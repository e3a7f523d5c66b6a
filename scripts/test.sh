#!/usr/bin/env bash
# The one command that runs Horizon's whole test suite, as CI runs it (.ci/run calls this and
# nothing else).
#
# 1. Makes sure a RabbitMQ broker answers at HORIZON_TEST_AMQP_URL
#    (default amqp://guest:guest@127.0.0.1:5672/%2f): starts an installed but stopped local broker
#    with `rabbitmq-server -detached`, installs one with apt when it is missing and we are root,
#    and otherwise stops with a message saying what to do. Integration tests need the real broker;
#    they fail, never skip, without it.
# 2. Makes sure PostgreSQL answers at HORIZON_TEST_POSTGRES_URL (default
#    postgres://postgres@127.0.0.1:5432, database `test`) for the webhook tests: starts an
#    installed but stopped local server, installs one with apt when it is missing and we are root,
#    and otherwise stops with a message. The webhook tests fail, never skip, without it.
# 3. Makes sure the test-only tools are installed: Chromium for the console's browser test
#    (HORIZON_TEST_CHROMIUM, default /usr/bin/chromium), nginx (with its stream module) and HAProxy for the proxy
#    configurations in contrib/proxy, openssl for test certificates. Each is installed from
#    Debian's packages with apt when it is missing and we are root; otherwise the script stops
#    with a message. The tests that need them fail, never skip, without them.
# 4. Starts the three-node RabbitMQ cluster of scripts/rabbitmq-cluster.sh beside that broker (the
#    broker-failover tests kill its nodes), and stops it again at the end if it was not running.
# 5. Checks formatting, runs every test of the workspace, and runs clippy on every target with
#    warnings denied.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export HORIZON_TEST_AMQP_URL="${HORIZON_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export HORIZON_TEST_POSTGRES_URL="${HORIZON_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"

say() { printf '== %s\n' "$*"; }
die() { printf 'scripts/test.sh: %s\n' "$*" >&2; exit 1; }

# "host port" out of scheme://user:pass@host:port/path ($2: the port when the URL has none)
host_port() {
    local authority="${1#*://}"
    authority="${authority#*@}"
    authority="${authority%%/*}"
    local port="${authority##*:}"
    [ "$port" != "$authority" ] || port=$2
    echo "${authority%:*} $port"
}

# Something accepts TCP connections at host $1, port $2.
answers() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# Waits up to $3 seconds for host $1, port $2 to accept connections.
await_port() {
    local deadline=$((SECONDS + $3))
    until answers "$1" "$2"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
}

read -r amqp_host amqp_port <<<"$(host_port "$HORIZON_TEST_AMQP_URL" 5672)"
broker_answers() { answers "$amqp_host" "$amqp_port"; }

wait_for_broker() {
    if command -v rabbitmqctl >/dev/null 2>&1; then
        timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || true
    fi
    await_port "$amqp_host" "$amqp_port" 120
}

ensure_broker() {
    if broker_answers; then
        say "RabbitMQ answers at ${amqp_host}:${amqp_port}"
        return
    fi
    case "$amqp_host" in
        127.*|localhost|::1) ;;
        *) die "no RabbitMQ broker answers at ${amqp_host}:${amqp_port} (HORIZON_TEST_AMQP_URL); start it and run again" ;;
    esac
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "RabbitMQ is not installed: installing it with apt-get"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq rabbitmq-server >/dev/null
        else
            die "RabbitMQ is not installed and this is not a root shell with apt-get.
Install it (Debian/Ubuntu: sudo apt-get install rabbitmq-server) or set HORIZON_TEST_AMQP_URL
to a running broker, then run scripts/test.sh again."
        fi
    fi
    if ! broker_answers; then
        say "RabbitMQ is installed but not running: rabbitmq-server -detached"
        rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
    wait_for_broker || die "RabbitMQ did not start listening on ${amqp_host}:${amqp_port} within 120 s (see /var/log/rabbitmq)"
    say "RabbitMQ answers at ${amqp_host}:${amqp_port}"
    remove_leftover_streams
}

# A test that failed leaves its stream (bound to every Kazoo exchange: every later publish is
# written to it too) and its epoch queue behind; they go before the run, while nothing publishes.
remove_leftover_streams() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    local queue
    timeout 60 rabbitmqctl list_queues -q --no-table-headers name 2>/dev/null |
        grep -E '^horizon\.test\.' | while read -r queue; do
        timeout 30 rabbitmqctl delete_queue "$queue" </dev/null >/dev/null 2>&1 || true
    done || true
}

read -r pg_host pg_port <<<"$(host_port "$HORIZON_TEST_POSTGRES_URL" 5432)"
postgres_answers() { answers "$pg_host" "$pg_port"; }

start_postgres() {
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        for cluster in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do
            pg_ctlcluster "${cluster%/*}" "${cluster#*/}" start >/dev/null 2>&1 || true
        done
    fi
    command -v service >/dev/null 2>&1 && service postgresql start >/dev/null 2>&1 || true
    await_port "$pg_host" "$pg_port" 60
}

ensure_postgres() {
    if postgres_answers; then
        say "PostgreSQL answers at ${pg_host}:${pg_port}"
        return
    fi
    case "$pg_host" in
        127.*|localhost|::1) ;;
        *) die "no PostgreSQL answers at ${pg_host}:${pg_port} (HORIZON_TEST_POSTGRES_URL); start it and run again" ;;
    esac
    local installed_here=0
    if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! command -v postgres >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "PostgreSQL is not installed: installing it with apt-get"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq postgresql >/dev/null
            installed_here=1
        else
            die "PostgreSQL is not installed and this is not a root shell with apt-get.
Install it (Debian/Ubuntu: sudo apt-get install postgresql) or set HORIZON_TEST_POSTGRES_URL
to a running server (a user that may create databases, a database named test), then run
scripts/test.sh again."
        fi
    fi
    say "PostgreSQL is installed but not running: starting it"
    start_postgres || die "PostgreSQL did not start listening on ${pg_host}:${pg_port} within 60 s"
    if [ "$installed_here" -eq 1 ]; then
        # A fresh Debian server asks for a password over TCP: give the tests one, and their
        # database.
        su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
        su postgres -c "createdb test" >/dev/null 2>&1 || true
        export HORIZON_TEST_POSTGRES_URL="postgres://postgres:postgres@${pg_host}:${pg_port}"
    fi
    say "PostgreSQL answers at ${pg_host}:${pg_port}"
}

export HORIZON_TEST_CHROMIUM="${HORIZON_TEST_CHROMIUM:-/usr/bin/chromium}"

# ensure_tool BINARY PACKAGE WHAT-FOR: BINARY exists, or Debian's PACKAGE is installed with apt
# (as root), or the script stops and says what to do.
ensure_tool() {
    if [ -e "$1" ]; then
        say "$2 at $1"
        return
    fi
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "$2 is not installed: installing it with apt-get ($3)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "$2" >/dev/null
        [ -e "$1" ] || die "apt-get installed $2, but $1 is missing"
    else
        die "$2 is not installed and this is not a root shell with apt-get.
Install it (Debian: sudo apt-get install $2), then run scripts/test.sh again ($3)."
    fi
    say "$2 at $1"
}

ensure_tools() {
    ensure_tool "$HORIZON_TEST_CHROMIUM" chromium "the console is tested in a real browser"
    ensure_tool /usr/sbin/nginx nginx-light "the documented nginx configuration is tested"
    ensure_tool /usr/lib/nginx/modules/ngx_stream_module.so libnginx-mod-stream "nginx passes WebSockets through with a PROXY header"
    ensure_tool /usr/sbin/haproxy haproxy "the documented HAProxy configuration is tested"
    command -v openssl >/dev/null 2>&1 || ensure_tool /usr/bin/openssl openssl "test certificates"
}

ensure_cluster() {
    if bash scripts/rabbitmq-cluster.sh status >/dev/null 2>&1; then
        say "three-node RabbitMQ cluster is up"
    else
        say "starting the three-node RabbitMQ cluster (scripts/rabbitmq-cluster.sh start)"
        bash scripts/rabbitmq-cluster.sh start >/dev/null ||
            die "the three-node RabbitMQ cluster did not start (scripts/rabbitmq-cluster.sh start; logs under /tmp/horizon-rabbitmq-cluster)"
        trap 'bash scripts/rabbitmq-cluster.sh stop >/dev/null 2>&1 || true' EXIT
    fi
    say "cluster brokers: $(bash scripts/rabbitmq-cluster.sh urls)"
}

ensure_broker
ensure_postgres
ensure_tools
ensure_cluster

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo test --workspace"
cargo test --workspace --locked

# The suites above run on the default backend (io_uring here: `auto`); run the socket,
# hostile-client and proxy suites, whose bounds must hold on both, again on epoll.
# (tests/wss.rs runs each of its cases on both backends itself.)
say "socket, hostile-client and proxy tests on the epoll backend (HORIZON_IO_BACKEND=epoll)"
# (--workspace: the same feature set as the run above, so nothing is rebuilt.)
HORIZON_IO_BACKEND=epoll cargo test --workspace --locked --test shard_sockets --test hostile --test proxies

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "all checks passed"
