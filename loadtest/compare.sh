#!/usr/bin/env bash
# Side by side, in one run, with the same client code: Horizon on io_uring, Horizon on its epoll
# fallback, and RabbitMQ's Web-MQTT plugin. Rows: memory per idle subscriber and connect rate
# (connect), deliveries per CPU-second and latency at a fixed rate (fanout).
#
# Fair accounting: every event passes through the broker in both set-ups (RabbitMQ -> Horizon ->
# clients; RabbitMQ Web-MQTT -> clients), so each fan-out row also reports deliveries per CPU-second
# of the gateway and the broker together ("system CPU"); compare that column across rows. Before
# each row the broker is left to settle: its connection count back to where the row before began,
# and its CPU quiet (a Web-MQTT row measured nothing while the broker was still tearing down the
# previous row's 10,000 connections).
#
#   loadtest/compare.sh                 # defaults below; results in target/loadtest/compare/
#   CONNECTIONS=5000 RATE=1000 loadtest/compare.sh
#
# Needs the broker, and Web-MQTT enabled once with loadtest/mqtt-setup.sh (as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IDLE=${IDLE:-10000}              # idle connections for the memory row
CONNECTIONS=${CONNECTIONS:-1000} # subscribers for the fan-out rows
ACCOUNTS=${ACCOUNTS:-50}
RATE=${RATE:-500}
DURATION=${DURATION:-10}
AMQP=${HORIZON_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
OUT=${OUT:-target/loadtest/compare}
SECRET=compare-$RANDOM

cargo build --release -p horizon -p horizon-loadtest
mkdir -p "$OUT"
if ss -ltn 'sport = :5555' | grep -q LISTEN; then
    echo "compare.sh: port 5555 is taken; stop the gateway that holds it" >&2
    exit 2
fi

gateway=""
start_horizon() {
    env "$@" target/release/horizon serve --amqp-url "$AMQP" --jwt-hs256-secret "$SECRET" \
        --api-listen 127.0.0.1:0 >"$OUT/gateway.log" 2>&1 &
    gateway=$!
    for _ in $(seq 1 100); do
        grep -q "amqp: consuming" "$OUT/gateway.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the gateway did not start: $(cat "$OUT/gateway.log")" >&2
    exit 1
}
stop_horizon() { kill -TERM "$gateway" 2>/dev/null || true; wait "$gateway" 2>/dev/null || true; }
trap stop_horizon EXIT

# Connections the broker holds now.
broker_connections() { rabbitmqctl list_connections -q --no-table-headers pid 2>/dev/null | wc -l; }

# CPU seconds the broker (beam.smp) has used so far.
broker_cpu() {
    local total=0 pid
    for pid in $(pgrep -f beam.smp); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# Waits (up to 3 min) until the broker holds at most $1 connections and used under 10 % of a core
# over the last second.
settle() {
    local deadline=$((SECONDS + 180)) ticks
    ticks=$(getconf CLK_TCK)
    while [ "$(broker_connections)" -gt "$1" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
    while [ "$SECONDS" -lt "$deadline" ]; do
        local before after
        before=$(broker_cpu); sleep 1; after=$(broker_cpu)
        [ $(((after - before) * 10)) -lt "$ticks" ] && break
    done
    echo "   (broker settled: $(broker_connections) connections)"
}

BASE=$(broker_connections)

run() { # name, then horizon-loadtest arguments
    local name=$1
    shift
    settle "$((BASE + ${EXTRA:-0}))"
    echo "== $name"
    target/release/horizon-loadtest "$@" --out "$OUT/$name" | tee "$OUT/$name.txt" || true
}

for driver in io_uring epoll; do
    EXTRA=0
    settle "$BASE"
    start_horizon HORIZON_IO_BACKEND="$driver"
    sleep 1
    EXTRA=$(($(broker_connections) - BASE)) # the gateway's own connections (ingest, cluster)
    run "horizon-$driver-connect" connect --jwt-secret "$SECRET" --connections "$IDLE" --ramp-rate 3000 --hold 5
    run "horizon-$driver-fanout" fanout --jwt-secret "$SECRET" --connections "$CONNECTIONS" \
        --accounts "$ACCOUNTS" --rate "$RATE" --duration "$DURATION" --warmup 3
    stop_horizon
done
EXTRA=0

if (exec 3<>/dev/tcp/127.0.0.1/15675) 2>/dev/null; then
    run mqtt-connect connect --target mqtt-ws --gateway-match beam.smp --connections "$IDLE" --ramp-rate 3000 --hold 5
    run mqtt-fanout fanout --target mqtt-ws --gateway-match beam.smp --connections "$CONNECTIONS" \
        --accounts "$ACCOUNTS" --rate "$RATE" --duration "$DURATION" --warmup 3
else
    echo "compare.sh: Web-MQTT is not listening on 127.0.0.1:15675; run loadtest/mqtt-setup.sh (as root) for its rows" >&2
fi
echo
echo "== summary (deliveries per CPU-second: gateway alone, and gateway + broker)"
for name in horizon-io_uring-fanout horizon-epoll-fanout mqtt-fanout; do
    [ -f "$OUT/$name.txt" ] || continue
    printf '%-26s %s | %s\n' "$name" \
        "$(grep -o 'gateway CPU: .*' "$OUT/$name.txt" || echo 'no gateway figure')" \
        "$(grep -o 'system CPU (gateway + broker): .*' "$OUT/$name.txt" || echo 'no system figure')"
done
echo "reports in $OUT/"
