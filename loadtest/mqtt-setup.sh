#!/usr/bin/env bash
# Makes the local RabbitMQ serve MQTT over WebSocket (the Web-MQTT plugin) for the side-by-side
# runs of horizon-loadtest (--target mqtt-ws). Idempotent. Needs root (or the rabbitmq user).
#
# The plugin's plain MQTT listener would take port 1883, which Mosquitto often holds; it is moved
# to 127.0.0.1:1884, and Web-MQTT listens on 127.0.0.1:15675. The broker is restarted once if the
# configuration changed.
set -euo pipefail

conf=/etc/rabbitmq/rabbitmq.conf
changed=0
ensure() {
    local key=$1 value=$2
    if ! grep -qE "^${key//./\\.}\s*=" "$conf" 2>/dev/null; then
        echo "$key = $value" >>"$conf"
        changed=1
    fi
}
touch "$conf"
ensure mqtt.listeners.tcp.default 127.0.0.1:1884
ensure web_mqtt.tcp.ip 127.0.0.1
ensure web_mqtt.tcp.port 15675

# Every MQTT client is a socket and a queue process in the broker: a soft limit of 1024 open
# files (the usual default) makes it fail with emfile long before the comparison means anything.
pid=$(pgrep -u rabbitmq -f beam.smp | head -n1 || true)
soft=$(awk '/Max open files/ {print $4}' "/proc/${pid:-self}/limits" 2>/dev/null || echo 0)
if [ -n "$pid" ] && [ "${soft:-0}" -lt 16384 ]; then
    echo "mqtt-setup: the broker may open only $soft files; restarting it with a higher limit"
    changed=1
fi

limits=/etc/security/limits.d/rabbitmq-loadtest.conf
if [ ! -f "$limits" ]; then
    # rabbitmq-server starts the broker through `su rabbitmq`, whose pam_limits sets the limit.
    hard=$(ulimit -H -n)
    printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' "$hard" "$hard" >"$limits"
    changed=1
fi

if [ "$changed" = 1 ]; then
    echo "mqtt-setup: restarting RabbitMQ"
    rabbitmqctl stop >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do
        pgrep -f beam.smp >/dev/null || break
        sleep 1
    done
    rabbitmq-server -detached
fi
# The node takes a few seconds to register before await_startup can talk to it.
for _ in $(seq 1 60); do
    rabbitmqctl await_startup >/dev/null 2>&1 && break
    sleep 1
done
rabbitmqctl await_startup >/dev/null
rabbitmq-plugins enable rabbitmq_web_mqtt >/dev/null
for _ in $(seq 1 30); do
    if (exec 3<>/dev/tcp/127.0.0.1/15675) 2>/dev/null; then
        echo "mqtt-setup: Web-MQTT listening on ws://127.0.0.1:15675/ws"
        exit 0
    fi
    sleep 1
done
echo "mqtt-setup: Web-MQTT did not come up on 127.0.0.1:15675" >&2
exit 1
