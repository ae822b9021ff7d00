#!/usr/bin/env bash
# The whole test suite on a fresh machine: a local RabbitMQ and PostgreSQL (each installed and
# started if needed; PostgreSQL for the outbox and inbox tests),
# the NestJS fixture of the interop tests (interop/nestjs), the AsyncAPI parser that checks the
# generated documents (interop/asyncapi), a second local RabbitMQ node with TLS (the TLS tests),
# then every test of the workspace (the fuzz corpora replayed included; fuzzing itself is
# scripts/fuzz.sh, the long runs scripts/soak.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-rabbitmq.sh
scripts/ensure-postgres.sh
# Test queues (all named test-*) expire if a failing test leaves them behind, those rmq-bus
# declares itself (retry and dead-letter queues) included.
case "${RABBIT_MQ_URI:-amqp://127.0.0.1}" in
  *@127.0.0.1*|*@localhost*|amqp://127.0.0.1*|amqp://localhost*)
    rabbitmqctl -q set_policy --apply-to queues rmq-bus-tests '^test-' '{"expires":120000}' >/dev/null
    export RMQ_BUS_TEST_POLICY=set ;;
esac
# The TLS tests' second node (a TLS listener, certificates made now), stopped again at the end.
scripts/tls-broker.sh start
trap 'scripts/tls-broker.sh stop >/dev/null 2>&1 || true' EXIT

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1 \
  || ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)'; then
  echo "test.sh: the NestJS interop and AsyncAPI tests need node and npm: install Node.js 20+" >&2
  exit 1
fi
npm ci --no-audit --no-fund --loglevel=error --prefix interop/nestjs >/dev/null
npm ci --no-audit --no-fund --loglevel=error --prefix interop/asyncapi >/dev/null
# The observability tests read the metrics with Prometheus's Python parser.
python3 -c 'import prometheus_client' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check prometheus-client
cargo test --workspace --all-targets --locked
# Trace continuation across services needs the feature `opentelemetry` (off by default).
cargo test -p rmq-bus --features opentelemetry --test observability --locked -- one_trace
cargo test --workspace --doc --locked
