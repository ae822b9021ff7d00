#!/usr/bin/env bash
# A second local RabbitMQ node with a TLS listener, for the TLS tests (rmq-bus/tests/tls.rs):
#   scripts/tls-broker.sh start   makes certificates (a private CA, a server certificate for
#                                 "localhost" only, and an unrelated CA), starts the node, adds a
#                                 user; idempotent, and quick when the node already runs
#   scripts/tls-broker.sh stop    stops the node
# Everything lives in $RMQ_TLS_DIR (default /tmp/rmq-bus-tls): ca.pem, other-ca.pem, port, user.
# The node runs beside the system broker: its own name, ports, data and config, no plugins.
set -euo pipefail

DIR="${RMQ_TLS_DIR:-/tmp/rmq-bus-tls}"
NODE="rmq-bus-tls@localhost"
TLS_PORT="${RMQ_TLS_PORT:-5674}"
AMQP_PORT=5673   # a plain listener too, on loopback, for the CLI's health check
DIST_PORT=25674
USER_NAME="tls-user"

ctl() { rabbitmqctl -q -n "$NODE" "$@"; }

running() { ctl status >/dev/null 2>&1; }

make_certificates() {
  [ -s "$DIR/server.pem" ] && [ -s "$DIR/other-ca.pem" ] && return 0
  cd "$DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=rmq-bus test CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=some other CA" \
    -keyout other-ca.key -out other-ca.pem 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile server.ext -out server.pem 2>/dev/null
  chmod 644 ./*.pem ./*.key
}

start() {
  mkdir -p "$DIR"
  chmod 777 "$DIR"
  make_certificates
  echo "$TLS_PORT" > "$DIR/port"
  if running; then
    echo "tls-broker: $NODE already runs (amqps on $TLS_PORT)"
    return 0
  fi
  mkdir -p "$DIR/mnesia" "$DIR/log"
  chmod 777 "$DIR/mnesia" "$DIR/log"
  cat > "$DIR/rabbitmq.conf" <<CONF
listeners.tcp.local = 127.0.0.1:$AMQP_PORT
listeners.ssl.default = $TLS_PORT
ssl_options.cacertfile = $DIR/ca.pem
ssl_options.certfile = $DIR/server.pem
ssl_options.keyfile = $DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
  echo "[]." > "$DIR/enabled_plugins"
  : > "$DIR/rabbitmq-env.conf"
  echo "tls-broker: starting $NODE (amqps on $TLS_PORT)"
  RABBITMQ_NODENAME="$NODE" RABBITMQ_NODE_PORT="$AMQP_PORT" RABBITMQ_DIST_PORT="$DIST_PORT" \
    RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" RABBITMQ_MNESIA_BASE="$DIR/mnesia" \
    RABBITMQ_LOG_BASE="$DIR/log" RABBITMQ_PID_FILE="$DIR/pid" \
    rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 90); do
    if running && ctl await_startup >/dev/null 2>&1; then
      # A user of its own, whose password the tests look for in logs and errors.
      ctl add_user "$USER_NAME" "$(password)" >/dev/null 2>&1 || true
      ctl set_permissions -p / "$USER_NAME" '.*' '.*' '.*' >/dev/null
      echo "$USER_NAME" > "$DIR/user"
      echo "tls-broker: $NODE is up"
      return 0
    fi
    sleep 1
  done
  echo "tls-broker: $NODE did not come up within 90 s; see $DIR/log" >&2
  exit 1
}

password() {
  [ -s "$DIR/password" ] || head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/password"
  cat "$DIR/password"
}

stop() {
  if running; then
    ctl stop >/dev/null 2>&1 || true
    echo "tls-broker: $NODE stopped"
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
