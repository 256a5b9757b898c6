#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each):
#   bash scripts/fuzz.sh [seconds-per-target]
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). A crash stops the script with a non-zero status and
# leaves its input under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTUP_TOOLCHAIN=${RUSTUP_TOOLCHAIN:-nightly}
secs=${1:-60}
for t in challenge metadata token_response; do
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run "$t" -- -max_total_time="$secs" -max_len=65536 -print_final_stats=1 2>&1 |
    grep -E '^Done|stat::number_of_executed_units|stat::peak_rss_mb|DONE|ERROR|SUMMARY'
done
