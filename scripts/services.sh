#!/usr/bin/env bash
# Make sure Redis and Mosquitto answer at the URLs the tests and the demo use by default
# (127.0.0.1:6379 and 127.0.0.1:1883). Starts them when they are down, installing Debian's
# packages first when they are missing. Leaves running servers alone.
set -euo pipefail

port_open() {  # host port
  python3 - "$1" "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

wait_port() {  # host port name
  for _ in $(seq 1 50); do port_open "$1" "$2" && return 0; sleep 0.2; done
  echo "services: $3 did not start on $1:$2" >&2
  return 1
}

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "services: $1 is missing and there is no apt-get: install $1 and start it on its default port" >&2
    exit 1
  fi
  [ -n "${_APT_UPDATED:-}" ] || { apt-get update -qq; _APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

here=$(cd "$(dirname "$0")/.." && pwd)

# The tests also start servers of their own (a restarted Redis, the six nodes of a local Redis
# Cluster made with redis-cli --cluster create), even when a Redis already answers on 6379.
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server redis-tools

if port_open 127.0.0.1 6379; then
  echo "services: Redis answers on 127.0.0.1:6379"
else
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/volcast-redis.log
  wait_port 127.0.0.1 6379 Redis
  echo "services: started Redis on 127.0.0.1:6379"
fi

if port_open 127.0.0.1 1883; then
  echo "services: Mosquitto answers on 127.0.0.1:1883"
else
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto mosquitto-clients
  mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  # set_tcp_nodelay and a deep queue: see findings.md (42 ms stalls, dropped QoS 1 bursts).
  "$mosquitto_bin" -d -c "$here/scripts/mosquitto-test.conf"
  wait_port 127.0.0.1 1883 Mosquitto
  echo "services: started Mosquitto on 127.0.0.1:1883"
fi

# Debian's docker-compose (1.29) validates docker-compose.yml without a Docker engine; the compose
# tests use it when present. Best effort: the YAML checks run without it.
if ! command -v docker-compose >/dev/null && command -v apt-get >/dev/null; then
  apt_install docker-compose || echo "services: docker-compose not installed; compose validation tests will skip" >&2
fi
