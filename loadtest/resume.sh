#!/usr/bin/env bash
# Resume under a node's death (docs/resume.md): NODES gateway nodes with history = "stream" read
# one RabbitMQ stream; CLIENTS clients start on the first (the victim), each subscribed with
# resume_from and checking its account's numbered events; WATCHERS clients on the second node
# measure delivery latency. RATE events/s are published (confirmed) through the broker; at
# KILL_AT s the victim is SIGKILLed and every client resumes from its last position on one of
# the survivors. The report (JSON): events lost, duplicated and out of order (all must be 0),
# resumes not recovered, the time from the kill until every client is live again, the watchers'
# latency before and during (end to end, through the load process), and the first survivor's own
# delivery latency histogram over the storm (arrival to frames queued: the load process's CPU
# does not count in it). Ports 18500-18531; the broker at AMQP_URL (several URLs,
# comma-separated, for the three-node cluster: scripts/rabbitmq-cluster.sh urls, with
# RABBITMQCTL="scripts/rabbitmq-cluster.sh ctl 1").
#
#   cargo build --release -p horizon -p horizon-loadtest && loadtest/resume.sh
#   CLIENTS=19000 WATCHERS=400 NODES=2 loadtest/resume.sh     # the storm of BENCHMARKS.md
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLIENTS="${CLIENTS:-1000}" WATCHERS="${WATCHERS:-100}" RATE="${RATE:-200}" NODES="${NODES:-3}"
KILL_AT="${KILL_AT:-15}" DURATION="${DURATION:-45}" ACCOUNTS="${ACCOUNTS:-100}"
ADMISSIONS="${ADMISSIONS:-2000}"
AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# How the stream is deleted at the end (the three-node cluster: "scripts/rabbitmq-cluster.sh ctl 1").
RABBITMQCTL="${RABBITMQCTL:-rabbitmqctl}"
SOURCE_IPS="${SOURCE_IPS:-127.0.0.2-127.0.0.9}"
stream="horizon.loadtest.resume.$RANDOM$RANDOM"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    $RABBITMQCTL delete_queue "$stream" </dev/null >/dev/null 2>&1 || true
    $RABBITMQCTL delete_queue "$stream.epoch" </dev/null >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
if ((NODES < 2 || NODES > 16)); then
    echo "resume.sh: NODES must be 2..16" >&2
    exit 2
fi

start_node() { # index -> pid
    local i=$1
    target/release/horizon serve --amqp-url "$AMQP_URL" --jwt-hs256-secret loadtest-secret \
        --node "resume-$i" --ws-listen "127.0.0.1:$((18501 + i * 2))" \
        --api-listen "127.0.0.1:$((18500 + i * 2))" --webhooks-enabled false \
        --history stream --history-stream "$stream" \
        --resume-admissions-per-sec "$ADMISSIONS" >>"$work/node-$i.log" 2>&1 &
    pids+=($!)
    echo $!
}
ready() { until curl -sf "http://127.0.0.1:$1/readyz" >/dev/null; do sleep 0.2; done; }

victim=$(start_node 0)
survivors=()
for ((i = 1; i < NODES; i++)); do
    start_node "$i" >/dev/null
    survivors+=("127.0.0.1:$((18501 + i * 2))")
done
for ((i = 0; i < NODES; i++)); do ready $((18500 + i * 2)); done
list=$(IFS=,; echo "${survivors[*]}")
target/release/horizon-loadtest resume --victim 127.0.0.1:18501 --survivor "$list" \
    --clients "$CLIENTS" --watchers "$WATCHERS" --rate "$RATE" --duration "$DURATION" \
    --accounts "$ACCOUNTS" --amqp-url "${AMQP_URL%%,*}" --source-ips "$SOURCE_IPS" \
    >"$work/report.json" &
load=$!
sleep "$((KILL_AT - 1))"
# The first survivor's own view: its metrics every 250 ms from just before the kill.
(
    while kill -0 "$load" 2>/dev/null; do
        curl -s "http://127.0.0.1:18502/metrics" >"$work/scrape-$(date +%s%3N).txt" || true
        sleep 0.25
    done
) &
scraper=$!
sleep 1
killed_ms=$(date +%s%3N)
echo "resume.sh: SIGKILL to the victim (pid $victim) at ${KILL_AT} s" >&2
kill -9 "$victim"
wait "$load"
wait "$scraper" 2>/dev/null || true
# The survivor's delivery latency (arrival to frames queued, its own histogram) between the
# kill and the scrape where its resumes stopped growing: the others' latency during the storm.
survivor_ms=$(python3 - "$work" "$killed_ms" <<'PY'
import glob, os, re, sys
work, killed = sys.argv[1], int(sys.argv[2])
scrapes = sorted((int(re.findall(r"(\d+)", os.path.basename(f))[0]), open(f).read())
                 for f in glob.glob(f"{work}/scrape-*.txt"))
def resumes(text):
    return sum(int(v) for v in re.findall(r"^horizon_resumes_total\{[^}]*\} (\d+)", text, re.M))
def buckets(text):
    return {float(le) if le != "+Inf" else float("inf"): int(v) for le, v in
            re.findall(r'^horizon_delivery_latency_seconds_bucket\{le="([^"]+)"\} (\d+)', text, re.M)}
before = [s for s in scrapes if s[0] <= killed and buckets(s[1])]
after = [s for s in scrapes if s[0] > killed and buckets(s[1])]
if not before or not after:
    print("null"); sys.exit()
final = resumes(after[-1][1])
end = next(s for s in after if resumes(s[1]) >= final)
b0, b1 = buckets(before[-1][1]), buckets(end[1])
delta = {le: b1.get(le, 0) - b0.get(le, 0) for le in b1}
total = delta.get(float("inf"), 0)
p99 = next((le for le in sorted(delta) if total and delta[le] >= 0.99 * total), None)
p50 = next((le for le in sorted(delta) if total and delta[le] >= 0.5 * total), None)
ms = lambda le: "null" if le is None or le == float("inf") else f"{le * 1000:g}"
print(f'{{"events_per_shard":{total},"window_ms":{end[0] - killed},"p50_at_most_ms":{ms(p50)},"p99_at_most_ms":{ms(p99)}}}')
PY
)
for ((i = 1; i < NODES; i++)); do
    grep -h "resume:" "$work/node-$i.log" | tail -3 >&2 || true
done
curl -s "http://127.0.0.1:18502/metrics" | grep -E "^horizon_resume" >&2 || true
printf '{"nodes":%s,"resume_admissions_per_sec":%s,"survivor_delivery_during_storm":%s,"report":%s}\n' \
    "$NODES" "$ADMISSIONS" "$survivor_ms" "$(cat "$work/report.json")"
