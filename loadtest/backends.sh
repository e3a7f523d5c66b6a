#!/usr/bin/env bash
# The io_uring and epoll backends side by side, in one run, same binaries:
#
#   0. latency (`benches/latency.rs`): handshake and command round trip (300 sequential each),
#      publish -> receive at 10,000 and 100,000 deliveries/s (in process, 100 subscribers);
#   1. wide fan-out: 10,000 sockets x 1 KiB events, in process (`benches/fanout.rs`, the
#      publisher the embedded bus feeds, as fast as the rings take): deliveries per gateway
#      CPU-second and TCP segments per delivery (RUNS runs each, alternating), the physical floor
#      of each backend (the same clients served by a loop that only writes a pre-encoded frame;
#      RUNS runs each, alternating), and system calls per 1,000 deliveries (one more run under
#      `perf stat -e raw_syscalls:sys_enter`, which slows the process: its CPU figure is not used);
#   2. user-space memory per idle socket, 15,000 sockets (`benches/idle_connections.rs`);
#   3. narrow fan-out at saturation, 20 subscribers per event, 1 KiB: `horizon serve` and
#      `horizon-loadtest fanout` at SAT_RATE events/s (more than this machine sustains), through
#      the embedded bus (REST publisher) and through RabbitMQ (AMQP publisher with confirms);
#   4. publish -> receive latency at 10,000 deliveries per second through RabbitMQ (500 events/s x
#      20 subscribers).
#
#   loadtest/backends.sh            # results in target/loadtest/backends/
#
# Needs the broker (rows 3-4) and perf (syscall counts). On a 2-core machine the load generators
# share the cores with the gateway; CPU figures are the gateway process's own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${OUT:-target/loadtest/backends}
AMQP=${HORIZON_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
SAT_RATE=${SAT_RATE:-6000}
SECRET=backends-$RANDOM
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "backends.sh: perf is needed for the syscall counts (apt-get install linux-perf)" >&2; exit 2; }
if ss -ltn 'sport = :5555' | grep -q LISTEN; then
    echo "backends.sh: port 5555 is taken; stop the gateway that holds it" >&2
    exit 2
fi

cargo build --release -p horizon -p horizon-loadtest
cargo bench --no-run --bench fanout --bench idle_connections --bench latency
rm -f "$OUT"/*.txt

gateway=""
API=127.0.0.1:18017
# start_horizon BACKEND embedded|rabbitmq
start_horizon() {
    local source=()
    [ "$2" = rabbitmq ] && source=(--amqp-url "$AMQP")
    HORIZON_IO_BACKEND=$1 target/release/horizon serve "${source[@]}" --jwt-hs256-secret "$SECRET" \
        --api-listen "$API" >"$OUT/gateway-$1-$2.log" 2>&1 &
    gateway=$!
    for _ in $(seq 1 100); do
        grep -q "api: listening" "$OUT/gateway-$1-$2.log" 2>/dev/null &&
            { [ "$2" = embedded ] || grep -q "amqp: consuming" "$OUT/gateway-$1-$2.log"; } && return 0
        sleep 0.1
    done
    echo "the gateway did not start: $(cat "$OUT/gateway-$1-$2.log")" >&2
    exit 1
}
stop_horizon() { [ -n "$gateway" ] && { kill -TERM "$gateway" 2>/dev/null || true; wait "$gateway" 2>/dev/null || true; }; gateway=""; }
trap stop_horizon EXIT

for backend in io_uring epoll; do
    echo "== $backend: latency (handshake, command, publish -> receive)"
    HORIZON_IO_BACKEND=$backend cargo bench --bench latency 2>/dev/null |
        grep '^latency/' | tee "$OUT/latency-$backend.txt"
done
RUNS=${RUNS:-5}
for run in $(seq 1 "$RUNS"); do
    for backend in io_uring epoll; do
        echo "== $backend: wide fan-out (10,000 x 200 events, 1 KiB), run $run"
        HORIZON_IO_BACKEND=$backend cargo bench --bench fanout 2>/dev/null |
            grep '^fanout/' | tee -a "$OUT/wide-$backend.txt"
        echo "== $backend: the floor (the same clients, a loop that only writes), run $run"
        HORIZON_FANOUT_FLOOR=$backend cargo bench --bench fanout 2>/dev/null |
            grep '^fanout-floor/' | tee -a "$OUT/floor-$backend.txt"
    done
done
for backend in io_uring epoll; do
    echo "== $backend: system calls at wide fan-out"
    HORIZON_IO_BACKEND=$backend HORIZON_FANOUT_SYSCALLS=1 cargo bench --bench fanout 2>/dev/null |
        grep 'system calls' | tee "$OUT/syscalls-$backend.txt"
    echo "== $backend: idle memory (15,000 sockets)"
    HORIZON_IO_BACKEND=$backend cargo bench --bench idle_connections 2>/dev/null |
        grep '^idle_connections/' | tee "$OUT/idle-$backend.txt"
done

for backend in io_uring epoll; do
    start_horizon "$backend" embedded
    echo "== $backend: narrow fan-out through the embedded bus at $SAT_RATE events/s x 20 subscribers"
    target/release/horizon-loadtest fanout --jwt-secret "$SECRET" --connections 1000 --accounts 50 \
        --rate "$SAT_RATE" --duration 10 --warmup 2 --publish rest --api "$API" \
        --out "$OUT/embedded-saturated-$backend" | tee "$OUT/embedded-saturated-$backend.txt" || true
    stop_horizon
    start_horizon "$backend" rabbitmq
    echo "== $backend: narrow fan-out through RabbitMQ at $SAT_RATE events/s x 20 subscribers"
    target/release/horizon-loadtest fanout --jwt-secret "$SECRET" --connections 1000 --accounts 50 \
        --rate "$SAT_RATE" --duration 10 --warmup 2 --out "$OUT/rabbit-saturated-$backend" |
        tee "$OUT/rabbit-saturated-$backend.txt" || true
    echo "== $backend: latency through RabbitMQ at 500 events/s x 20 subscribers (10,000 deliveries/s)"
    target/release/horizon-loadtest fanout --jwt-secret "$SECRET" --connections 1000 --accounts 50 \
        --rate 500 --duration 10 --warmup 2 --out "$OUT/rabbit-10k-$backend" |
        tee "$OUT/rabbit-10k-$backend.txt" || true
    stop_horizon
done

echo
echo "== summary"
for backend in io_uring epoll; do
    echo "-- $backend"
    cat "$OUT/latency-$backend.txt"
    sed 's/.*driver=/wide: driver=/' "$OUT/wide-$backend.txt"
    sed 's/.*driver=/floor: driver=/' "$OUT/floor-$backend.txt"
    cat "$OUT/syscalls-$backend.txt" "$OUT/idle-$backend.txt"
    for row in embedded-saturated rabbit-saturated rabbit-10k; do
        printf '%s: %s | %s | %s\n' "$row" \
            "$(grep -o 'deliveries: .*' "$OUT/$row-$backend.txt" || echo 'no delivery rate')" \
            "$(grep -o 'gateway CPU: .*' "$OUT/$row-$backend.txt" || echo 'no CPU figure')" \
            "$(grep -o 'latency (publish -> receive).*' "$OUT/$row-$backend.txt" || echo 'no latency figure')"
    done
done
echo "reports in $OUT/"
