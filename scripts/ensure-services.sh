#!/usr/bin/env bash
# Make sure the servers the test suite talks to answer on 127.0.0.1, starting any that do not.
# The suite needs NATS with JetStream and Redis (the distributed backends' tests run against the
# real servers) and PostgreSQL (delivery state). HEADWATER_TEST_SERVICES overrides the list.
set -euo pipefail

SERVICES=(${HEADWATER_TEST_SERVICES-nats redis postgres})

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  case "$1" in
    redis) redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no ;;
    nats) start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
            -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log ;;
    postgres) pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start ;;
    *) echo "unknown service $1" >&2; return 1 ;;
  esac
}

port_of() {
  case "$1" in redis) echo 6379 ;; nats) echo 4222 ;; postgres) echo 5432 ;; esac
}

for svc in "${SERVICES[@]}"; do
  port=$(port_of "$svc")
  if answers "$port"; then continue; fi
  echo "starting $svc (127.0.0.1:$port did not answer)"
  start "$svc"
  for _ in $(seq 1 50); do answers "$port" && break; sleep 0.2; done
  answers "$port" || { echo "$svc did not come up on port $port" >&2; exit 1; }
done
