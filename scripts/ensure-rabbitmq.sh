#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on this machine: installs Debian's rabbitmq-server if it is
# missing, starts it if it is not running, and waits until it accepts connections.
# Skipped when RABBIT_MQ_URI points at another host: then that broker is yours to run.
set -euo pipefail

case "${RABBIT_MQ_URI:-amqp://127.0.0.1}" in
  *@127.0.0.1*|*@localhost*|amqp://127.0.0.1*|amqp://localhost*) ;;
  *) echo "ensure-rabbitmq: RABBIT_MQ_URI names a remote broker; not starting a local one"; exit 0 ;;
esac

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Partitioned queues (RmqOptions::partitions) need the consistent-hash exchange, a plugin that
# ships with RabbitMQ but is off by default. Enabling it is online (no restart) and idempotent.
enable_plugins() {
  if ! rabbitmq-plugins -q is_enabled rabbitmq_consistent_hash_exchange >/dev/null 2>&1; then
    echo "ensure-rabbitmq: enabling rabbitmq_consistent_hash_exchange"
    rabbitmq-plugins -q enable rabbitmq_consistent_hash_exchange >/dev/null
  fi
}

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "ensure-rabbitmq: installing rabbitmq-server (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi

if rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  enable_plugins
  exit 0
fi

echo "ensure-rabbitmq: starting RabbitMQ"
as_root rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 90); do
  if rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; then
    echo "ensure-rabbitmq: RabbitMQ is up"
    enable_plugins
    exit 0
  fi
  sleep 1
done
echo "ensure-rabbitmq: RabbitMQ did not come up within 90 s; see /var/log/rabbitmq/" >&2
exit 1
