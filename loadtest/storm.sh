#!/usr/bin/env bash
# A reconnect storm, before and after drain_spread_secs and max_connects_per_sec: two nodes on
# one broker, CLIENTS Monster-UI-style clients on the victim (250 ms first retry, doubling, no
# jitter) and WATCHERS on the survivor receiving RATE events/s; at STORM_AT s the victim is
# drained (SIGTERM) or killed (SIGKILL) and its clients move to the survivor. Three runs:
#   before      SIGTERM, drain_spread_secs=0, no max_connects_per_sec (every socket closed at once)
#   drain       SIGTERM, drain_spread_secs=SPREAD, max_connects_per_sec=CAP on the survivor
#   kill        SIGKILL, max_connects_per_sec=CAP on the survivor (nothing to spread)
# Prints one report per run (peak connects/s on the survivor, 503s, time until every client is
# back, the watchers' latency before and during). Ports 18400-18411; the broker at AMQP_URL.
#
#   cargo build --release -p horizon -p horizon-loadtest && loadtest/storm.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLIENTS="${CLIENTS:-10000}" WATCHERS="${WATCHERS:-500}" RATE="${RATE:-200}"
STORM_AT="${STORM_AT:-15}" DURATION="${DURATION:-50}" SPREAD="${SPREAD:-10}" CAP="${CAP:-1000}"
AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

node() { # name ws api extra...
    local name=$1 ws=$2 api=$3
    shift 3
    target/release/horizon serve --amqp-url "$AMQP_URL" --jwt-hs256-secret loadtest-secret \
        --node "$name" --ws-listen "127.0.0.1:$ws" --api-listen "127.0.0.1:$api" \
        --shutdown-grace-secs 5 --webhooks-enabled false "$@" >>"$work/$name.log" 2>&1 &
    pids+=($!)
    echo $!
}

ready() { until curl -sf "http://127.0.0.1:$1/readyz" >/dev/null; do sleep 0.2; done; }

run() { # label signal spread cap
    local label=$1 signal=$2 spread=$3 cap=$4
    local victim survivor
    victim=$(node "storm-victim-$label" 18401 18400 --drain-spread-secs "$spread")
    survivor=$(node "storm-survivor-$label" 18411 18410 --max-connects-per-sec "$cap")
    ready 18400
    ready 18410
    target/release/horizon-loadtest storm --victim 127.0.0.1:18401 --survivor 127.0.0.1:18411 \
        --clients "$CLIENTS" --watchers "$WATCHERS" --rate "$RATE" --duration "$DURATION" \
        --amqp-url "$AMQP_URL" >"$work/$label.json" &
    local load=$!
    sleep "$STORM_AT"
    echo "$label: SIG$signal to the victim (drain_spread_secs=$spread, survivor max_connects_per_sec=$cap)" >&2
    kill "-$signal" "$victim"
    wait "$load"
    kill -9 "$survivor" "$victim" 2>/dev/null || true
    wait "$survivor" "$victim" 2>/dev/null || true
    printf '{"run":"%s","signal":"%s","drain_spread_secs":%s,"max_connects_per_sec":%s,"report":%s}\n' \
        "$label" "$signal" "$spread" "$cap" "$(cat "$work/$label.json")"
}

run before TERM 0 0
run drain TERM "$SPREAD" "$CAP"
run kill KILL 0 "$CAP"
