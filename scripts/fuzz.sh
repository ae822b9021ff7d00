#!/usr/bin/env bash
# Fuzzes rmq-bus with cargo-fuzz (fuzz/): each target for FUZZ_SECONDS (default 60), from its
# committed corpus (fuzz/corpus/<target>), which the run adds to. A crash stops the script, with
# the input in fuzz/artifacts/<target>/; copy it into fuzz/corpus/<target>/ once fixed, so that
# the replay test (rmq-bus/tests/fuzz_corpus.rs, part of the test command) keeps it fixed.
#   FUZZ_SECONDS  seconds per target                (default 60)
#   FUZZ_TARGETS  targets to run                    (default: all four)
# cargo-fuzz is installed from crates.io if missing. libFuzzer's sanitizer flags need a nightly
# compiler; RUSTC_BOOTSTRAP=1 lets the stable one take them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-decode_differential topic_match object_pattern delivery}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in $targets; do
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run -O "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -dict=fuzz/json.dict -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1
done
