#!/usr/bin/env bash
# What reading the cluster's stream costs (history = stream) against per-node queues
# (history = off), at each RATE platform events/s (default: 1000 10000 50000): NODES gateway
# nodes (default 1) on one broker, each with CONNECTIONS subscribers of ACCOUNTS accounts of its
# own (disjoint from the other nodes': the case where the stream costs most, since a node's
# queue then carries only its own accounts' events while the stream carries everyone's), events
# of 1 KiB published at RATE/NODES per node's accounts for DURATION s. Prints one line per run:
# mode, platform rate, events published, deliveries, the gateways' CPU seconds (all nodes) and
# per platform event per node, the largest node's peak RSS (VmHWM), the broker's CPU seconds, lost and
# duplicated, with the rate the publishers reached (this machine may not reach RATE). Ports 18500-18531; the broker at AMQP_URL; the stream is deleted after.
#
#   cargo build --release -p horizon -p horizon-loadtest && loadtest/history.sh
#   NODES=3 RATES="1000 10000" loadtest/history.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RATES="${RATES:-1000 10000 50000}" CONNECTIONS="${CONNECTIONS:-100}" ACCOUNTS="${ACCOUNTS:-20}"
DURATION="${DURATION:-10}" NODES="${NODES:-1}"
AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
STREAM="horizon.loadtest.history.$$"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rabbitmqctl delete_queue "$STREAM" >/dev/null 2>&1 || true
    rabbitmqctl delete_queue "$STREAM.epoch" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

for mode in off stream; do
    for rate in $RATES; do
        pids=()
        for ((i = 0; i < NODES; i++)); do
            target/release/horizon serve --amqp-url "$AMQP_URL" --jwt-hs256-secret loadtest-secret \
                --node "hist-$mode-$rate-n$i" --ws-listen "127.0.0.1:$((18501 + i * 2))" \
                --api-listen "127.0.0.1:$((18500 + i * 2))" --webhooks-enabled false \
                --history "$mode" --history-stream "$STREAM" >>"$work/serve-$mode-$rate-$i.log" 2>&1 &
            pids+=($!)
        done
        for ((i = 0; i < NODES; i++)); do
            until curl -sf "http://127.0.0.1:$((18500 + i * 2))/readyz" >/dev/null; do sleep 0.2; done
        done
        loads=()
        for ((i = 0; i < NODES; i++)); do
            LOADTEST_ACCOUNT_BASE=$((i * ACCOUNTS)) target/release/horizon-loadtest fanout \
                --url "ws://127.0.0.1:$((18501 + i * 2))/" --amqp-url "$AMQP_URL" \
                --connections "$CONNECTIONS" --accounts "$ACCOUNTS" --rate $((rate / NODES)) \
                --duration "$DURATION" --drain 5 --gateway-match "hist-$mode-$rate-n$i " \
                --out "$work/$mode-$rate-$i" >/dev/null 2>&1 &
            loads+=($!)
        done
        for load in "${loads[@]}"; do wait "$load" || true; done
        # Peak resident memory of each node over the run (the history fills as events flow).
        hwm=0
        for p in "${pids[@]}"; do
            kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
            ((kb > hwm)) && hwm=$kb
        done
        for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
        pids=()
        python3 - "$work" "$mode" "$rate" "$NODES" "$hwm" <<'PY'
import json, sys
work, mode, rate, nodes, hwm = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
reports = [json.load(open(f"{work}/{mode}-{rate}-{i}/report.json")) for i in range(nodes)]
events = sum(r.get("published", 0) for r in reports)
received = sum(r.get("received", 0) for r in reports)
cpu = sum(r.get("gateway_cpu_seconds", 0.0) for r in reports)
seconds = max(r.get("publish_seconds", 0.0) for r in reports) or float("nan")
# Every report samples the broker over the same run: the first one's share is the broker's.
broker = reports[0].get("system_cpu_seconds", 0.0) - reports[0].get("gateway_cpu_seconds", 0.0)
per = cpu / nodes / events * 1e6 if events else float("nan")
lost = sum(r.get("lost", 0) or 0 for r in reports)
dup = sum(r.get("duplicated", 0) or 0 for r in reports)
print(f"{mode:6} {rate:>6}/s x{nodes} published {events} in {seconds:.1f} s ({events / seconds:.0f}/s) "
      f"received {received} gateways {cpu:.2f} CPU-s = {per:.1f} us per platform event per node; "
      f"peak RSS {hwm / 1024:.0f} MiB; broker {broker:.2f} CPU-s = {broker / events * 1e6:.1f} us per event; "
      f"lost {lost} dup {dup}")
PY
    done
done
