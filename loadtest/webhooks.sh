#!/usr/bin/env bash
# Webhooks through a receiver outage and a node restart: one `horizon serve` node (SQLite, or
# PostgreSQL with WEBHOOKS_DB=postgres://...), `horizon-loadtest webhooks` publishing for
# DURATION seconds with the receiver's port closed for OUTAGE seconds from OUTAGE_AT, and the
# node killed (SIGKILL) and started again at KILL_AT. Prints the load generator's report: lost
# must be 0; duplicates are counted (at least once: a delivery in flight when the node dies is
# made again, with the same webhook-id).
#
#   cargo build --release -p horizon -p horizon-loadtest && loadtest/webhooks.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
HOOKS="${HOOKS:-10}" RATE="${RATE:-100}" DURATION="${DURATION:-20}"
OUTAGE_AT="${OUTAGE_AT:-5}" OUTAGE="${OUTAGE:-5}" KILL_AT="${KILL_AT:-12}"
AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
work="$(mktemp -d)"
WEBHOOKS_DB="${WEBHOOKS_DB:-$work/hooks.db}"
cat > "$work/auth.toml" <<TOML
[[accounts]]
id = "lt-account"
[[tokens]]
token = "lt-token"
account_id = "lt-account"
TOML
queue="horizon.webhooks.loadtest.$$"
node_args=(serve --amqp-url "$AMQP_URL" --auth-file "$work/auth.toml" --api-listen 127.0.0.1:18200
    --ws-listen 127.0.0.1:18201 --webhooks-db "$WEBHOOKS_DB" --webhooks-queue "$queue"
    --webhooks-allow-private-targets true --cluster-secret loadtest
    --webhooks-attempt-failure-count 1000000)
start_node() { target/release/horizon "${node_args[@]}" >>"$work/node.log" 2>&1 & node=$!; }
start_node
trap 'kill -9 $node 2>/dev/null || true; rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
until curl -sf http://127.0.0.1:18200/healthz >/dev/null; do sleep 0.1; done
target/release/horizon-loadtest webhooks --api 127.0.0.1:18200 --token lt-token --account lt-account \
    --hooks "$HOOKS" --rate "$RATE" --duration "$DURATION" --outage-at "$OUTAGE_AT" --outage-secs "$OUTAGE" \
    --drain 120 --amqp-url "$AMQP_URL" > "$work/report.json" &
load=$!
sleep "$KILL_AT"
echo "killing the node (SIGKILL) and starting it again" >&2
kill -9 "$node"; wait "$node" 2>/dev/null || true
start_node
wait "$load"
cat "$work/report.json"
