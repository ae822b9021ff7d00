#!/usr/bin/env bash
# The whole test suite on a fresh machine: a local RabbitMQ (installed and started if needed),
# then every test of the workspace against it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-rabbitmq.sh
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
