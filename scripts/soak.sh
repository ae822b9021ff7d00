#!/usr/bin/env bash
# Long runs against the local broker, not part of the test command (rmq-bus/tests/soak.rs):
# orders and billing under a steady load with every connection cut periodically, sampled every
# 10 s (RSS, FDs, tasks, threads, queue depths; lost and duplicated at the end), then a backlog
# consumed in bounded memory.
#   SOAK_SECONDS   duration of the load run          (default 600)
#   SOAK_RATE      orders a second                   (default 200)
#   SOAK_CUT_EVERY seconds between connection cuts   (default 30)
#   SOAK_BACKLOG   messages in the backlog run       (default 1000000; 0 skips it)
# Output goes to the terminal and to target/soak-<date>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-rabbitmq.sh
log="target/soak-$(date -u +%Y%m%dT%H%M%SZ).log"
mkdir -p target
cargo build --release -p rmq-bus --test soak
tests=(orders_and_billing_under_load_with_cuts)
[ "${SOAK_BACKLOG:-1000000}" != 0 ] && tests+=(a_backlog_is_consumed_in_bounded_memory)
for test in "${tests[@]}"; do
  # Shared lock: the soak uses its own queues and a proxy, it does not fault the whole broker.
  flock -s /tmp/rmq-broker.lock cargo test --release -p rmq-bus --test soak -- \
    --ignored --exact "$test" --nocapture --test-threads 1 2>&1 | tee -a "$log"
done
echo "soak: log in $log"
