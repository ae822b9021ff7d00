#!/usr/bin/env bash
# The ordering app end to end on a fresh machine: a local RabbitMQ (installed and started if
# needed), the billing and orders services in the background, then three orders placed over HTTP
# (one of them fraudulent) and their statuses followed until billing has processed them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-rabbitmq.sh

export PORT="${PORT:-3000}"
export RUST_LOG="${RUST_LOG:-info}"
api="http://127.0.0.1:$PORT"

echo "demo: building the examples"
cargo build --quiet --examples
logs=$(mktemp -d)
target="${CARGO_TARGET_DIR:-target}/debug/examples"
"$target/billing" >"$logs/billing.log" 2>&1 &
billing=$!
"$target/orders" >"$logs/orders.log" 2>&1 &
orders=$!
stop() {
  kill -TERM "$orders" "$billing" 2>/dev/null || true
  wait "$orders" "$billing" 2>/dev/null || true
  echo "demo: services stopped; their logs are in $logs"
}
trap stop EXIT

for _ in $(seq 1 100); do
  curl -fs "$api/orders" >/dev/null 2>&1 && break
  kill -0 "$orders" 2>/dev/null || { cat "$logs/orders.log"; exit 1; }
  sleep 0.1
done

place() {
  echo "demo: POST /orders $1" >&2
  curl -fsS -X POST "$api/orders" -H 'content-type: application/json' -d "$1"
  echo >&2
}
ids=()
for body in \
  '{"productName":"Keyboard","price":49.9,"buyer":"ada@example.com"}' \
  '{"productName":"Server rack","price":50000,"buyer":"mallory@example.com"}' \
  '{"productName":"Monitor","price":299,"buyer":"grace@example.com"}'; do
  reply=$(place "$body")
  echo "  -> 201 $reply"
  ids+=("$(printf '%s' "$reply" | sed -E 's/.*"orderId":"([^"]+)".*/\1/')")
done

echo "demo: an invalid order is refused:"
curl -sS -o /dev/stdout -w '  -> HTTP %{http_code}\n' -X POST "$api/orders" -H 'content-type: application/json' -d '{"productName":"x"}'

echo "demo: waiting for billing"
for id in "${ids[@]}"; do
  for _ in $(seq 1 100); do
    order=$(curl -fsS "$api/orders/$id")
    case "$order" in *'"PENDING"'*) sleep 0.1 ;; *) break ;; esac
  done
  echo "  GET /orders/$id -> $order"
done
