#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each):
#   bash scripts/fuzz.sh [seconds-per-target]
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`); run RUSTUP_TOOLCHAIN=nightly if nightly is not default.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
for t in challenge metadata token_response; do
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run "$t" -- -max_total_time="$secs" -max_len=65536 2>&1 | tail -n 3
done
