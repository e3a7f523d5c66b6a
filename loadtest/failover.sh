#!/usr/bin/env bash
# A broker node's death under load: the three-node cluster of scripts/rabbitmq-cluster.sh, one
# `horizon serve` node given all three brokers (it lands on broker 1), `horizon-loadtest fanout`
# publishing through broker 3 at RATE events/s for DURATION seconds, and broker 1 killed
# (SIGKILL of its Erlang VM) at KILL_AT seconds. Prints the load generator's report: with the
# per-node queue of today, events published while the node moves broker are lost (counted in
# `lost`); none may be duplicated or cross a tenant. Broker 1 is started again at the end.
#
#   cargo build --release -p horizon -p horizon-loadtest && loadtest/failover.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CONNECTIONS="${CONNECTIONS:-1000}" RATE="${RATE:-500}" DURATION="${DURATION:-10}" KILL_AT="${KILL_AT:-4}"
scripts/rabbitmq-cluster.sh start >&2
for n in 1 2 3; do scripts/rabbitmq-cluster.sh start-node "$n" >&2; done
urls="$(scripts/rabbitmq-cluster.sh urls)"
broker3="${urls##*,}"
work="$(mktemp -d)"
target/release/horizon serve --amqp-url "$urls" --jwt-hs256-secret loadtest-secret \
    --ws-listen 127.0.0.1:18301 --api-listen 127.0.0.1:18300 >"$work/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null || true; scripts/rabbitmq-cluster.sh start-node 1 >&2; rm -rf "$work"' EXIT
until curl -sf http://127.0.0.1:18300/readyz >/dev/null; do sleep 0.1; done
target/release/horizon-loadtest fanout --url ws://127.0.0.1:18301/ --amqp-url "$broker3" \
    --connections "$CONNECTIONS" --rate "$RATE" --duration "$DURATION" --warmup 1 --drain 10 \
    --out "$work/report" >&2 &
load=$!
# Kill once publishing has run KILL_AT seconds (the subscribers connect first).
until grep -q "amqp: consuming" "$work/node.log"; do sleep 0.1; done
sleep $((KILL_AT + 3))
echo "killing broker 1 (SIGKILL)" >&2
scripts/rabbitmq-cluster.sh kill 1
wait "$load" || true
grep -E "amqp: (connection|consuming)" "$work/node.log" >&2 || true
cat "$work/report/report.json"
