#!/usr/bin/env bash
# The whole test suite on a fresh machine: a local RabbitMQ (installed and started if needed),
# the NestJS fixture of the interop tests (interop/nestjs), the AsyncAPI parser that checks the
# generated documents (interop/asyncapi), then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-rabbitmq.sh

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1 \
  || ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)'; then
  echo "test.sh: the NestJS interop and AsyncAPI tests need node and npm: install Node.js 20+" >&2
  exit 1
fi
npm ci --no-audit --no-fund --loglevel=error --prefix interop/nestjs >/dev/null
npm ci --no-audit --no-fund --loglevel=error --prefix interop/asyncapi >/dev/null
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
