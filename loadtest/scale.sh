#!/usr/bin/env bash
# Holds SUBSCRIBERS concurrent WebSocket subscribers on this one machine, with events flowing,
# and checks that none is lost or crosses tenants.
#
#   loadtest/scale.sh                      # 200,000 subscribers (the default)
#   SUBSCRIBERS=50000 NODES=4 loadtest/scale.sh
#
# A process may open only `ulimit -n` files (20000 on the development machines), so the gateway
# runs as NODES processes sharing one port with SO_REUSEPORT (the kernel spreads connections
# over them), and the load generator as PROCESSES worker processes whose sockets bind to
# 127.0.0.2, 127.0.0.3, ... in turn (one address per 5,000 subscribers), each source address
# having its own ephemeral ports.
# Needs a RabbitMQ broker (HORIZON_TEST_AMQP_URL, default local guest). Bounded: the connect ramp,
# DURATION seconds of events, then everything is stopped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUBSCRIBERS=${SUBSCRIBERS:-200000}
NODES=${NODES:-12}
PROCESSES=${PROCESSES:-12}
ACCOUNTS=${ACCOUNTS:-1000}
# Kazoo call events for ACCOUNTS accounts under RESELLERS resellers: every 10th connection is a
# reseller console subscribed for each of its children's accounts.
RESELLERS=${RESELLERS:-20}
EVENTS=${EVENTS:-CHANNEL_CREATE,CHANNEL_DESTROY}
RATE=${RATE:-100}
DURATION=${DURATION:-30}
RAMP=${RAMP:-2000}
PORT=${PORT:-5555}
AMQP=${HORIZON_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
SECRET=scale-$RANDOM$RANDOM
OUT=${OUT:-target/loadtest/scale}

per_node=$(( (SUBSCRIBERS + NODES - 1) / NODES ))
per_worker=$(( (SUBSCRIBERS + PROCESSES - 1) / PROCESSES ))
limit=$(ulimit -n)
if [ $(( per_node + per_node / 10 + 200 )) -gt "$limit" ] || [ $(( per_worker + 200 )) -gt "$limit" ]; then
    echo "scale.sh: $per_node sockets per node / $per_worker per worker is too close to ulimit -n $limit; raise NODES/PROCESSES" >&2
    exit 2
fi
if ss -ltn "sport = :$PORT" | grep -q LISTEN; then
    echo "scale.sh: something already listens on port $PORT (a gateway would share it via SO_REUSEPORT); stop it first" >&2
    exit 2
fi

cargo build --release -p horizon -p horizon-loadtest
mkdir -p "$OUT"
target/release/horizon-loadtest auth-file --accounts "$ACCOUNTS" --resellers "$RESELLERS" >"$OUT/tree.toml"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

echo "scale.sh: $NODES gateway nodes on 127.0.0.1:$PORT, $PROCESSES load processes, $SUBSCRIBERS subscribers"
for i in $(seq 1 "$NODES"); do
    target/release/horizon serve --ws-listen "127.0.0.1:$PORT" --api-listen 127.0.0.1:0 --shards 1 \
        --amqp-url "$AMQP" --jwt-hs256-secret "$SECRET" --auth-file "$OUT/tree.toml" --node "scale-$i" \
        --idle-timeout-secs 600 --ping-interval-secs 60 >"$OUT/node-$i.log" 2>&1 &
    pids+=($!)
done
for i in $(seq 1 "$NODES"); do
    for _ in $(seq 1 100); do
        grep -q "amqp: consuming" "$OUT/node-$i.log" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "amqp: consuming" "$OUT/node-$i.log" || { echo "node $i did not start: $(cat "$OUT/node-$i.log")" >&2; exit 1; }
done

# About 5,000 connections per source address: connect() uses only part of each address's
# ephemeral port range towards one destination.
ips=$(( (SUBSCRIBERS + 4999) / 5000 ))
[ "$ips" -gt 250 ] && ips=250
last=$((ips + 1))
target/release/horizon-loadtest fanout \
    --url "ws://127.0.0.1:$PORT/" --amqp-url "$AMQP" --jwt-secret "$SECRET" \
    --connections "$SUBSCRIBERS" --processes "$PROCESSES" --threads 1 \
    --source-ips "127.0.0.2-127.0.0.$last" --accounts "$ACCOUNTS" --resellers "$RESELLERS" --events "$EVENTS" \
    --rate "$RATE" --duration "$DURATION" --ramp-rate "$RAMP" --drain 30 \
    --gateway-match "horizon serve --ws-listen 127.0.0.1:$PORT" --out "$OUT" | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
