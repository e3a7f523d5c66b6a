#!/usr/bin/env bash
# What reading the cluster's stream costs a gateway (history = stream) against its own node
# queue (history = off), at RATE events/s each (default: 1000 and 10000): one node, CONNECTIONS
# subscribers over ACCOUNTS accounts (every event goes to CONNECTIONS/ACCOUNTS sockets), events
# of 1 KiB through RabbitMQ for DURATION s. Prints one line per run: mode, rate, events
# published, deliveries received, gateway CPU seconds, CPU per platform event, the broker's CPU
# seconds, lost. Ports 18500-18501; the broker at AMQP_URL; the stream is deleted after.
#
#   cargo build --release -p horizon -p horizon-loadtest && loadtest/history.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RATES="${RATES:-1000 10000}" CONNECTIONS="${CONNECTIONS:-100}" ACCOUNTS="${ACCOUNTS:-20}"
DURATION="${DURATION:-10}"
AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
STREAM="horizon.loadtest.history.$$"
work="$(mktemp -d)"
pid=""
trap '[ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true; rabbitmqctl delete_queue "$STREAM" >/dev/null 2>&1 || true; rabbitmqctl delete_queue "$STREAM.epoch" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

for mode in off stream; do
    for rate in $RATES; do
        target/release/horizon serve --amqp-url "$AMQP_URL" --jwt-hs256-secret loadtest-secret \
            --node "history-$mode" --ws-listen 127.0.0.1:18501 --api-listen 127.0.0.1:18500 \
            --webhooks-enabled false --history "$mode" --history-stream "$STREAM" \
            >>"$work/serve-$mode-$rate.log" 2>&1 &
        pid=$!
        until curl -sf http://127.0.0.1:18500/readyz >/dev/null; do sleep 0.2; done
        target/release/horizon-loadtest fanout --url ws://127.0.0.1:18501/ --amqp-url "$AMQP_URL" \
            --connections "$CONNECTIONS" --accounts "$ACCOUNTS" --rate "$rate" \
            --duration "$DURATION" --drain 5 --out "$work/$mode-$rate" >/dev/null 2>&1 || true
        kill -TERM "$pid"
        wait "$pid" 2>/dev/null || true
        pid=""
        python3 - "$work/$mode-$rate/report.json" "$mode" "$rate" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
events = r.get("published", 0)
cpu = r.get("gateway_cpu_seconds", 0.0)
broker = r.get("system_cpu_seconds", 0.0) - cpu
per = cpu / events * 1e6 if events else float("nan")
print(f"{sys.argv[2]:6} {sys.argv[3]:>6}/s published {events} received {r.get('received')} "
      f"gateway {cpu:.2f} CPU-s = {per:.1f} us per event; broker {broker:.2f} CPU-s; "
      f"lost {r.get('lost')} dup {r.get('duplicated')}")
PY
    done
done
