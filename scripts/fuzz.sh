#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each):
#   bash scripts/fuzz.sh [seconds-per-target] [target ...]
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). Each target starts from its committed seeds
# (fuzz/seeds/<target>) plus what earlier runs kept in fuzz/corpus/<target>. A crash
# stops the script with a non-zero status and leaves its input under
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTUP_TOOLCHAIN=${RUSTUP_TOOLCHAIN:-nightly}
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(challenge metadata token_response jwt sse jsonrpc)
fi
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  mkdir -p "corpus/$t"
  cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -max_len=65536 -print_final_stats=1 2>&1 |
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done|stat::number_of_executed_units|stat::peak_rss_mb|ERROR|SUMMARY|panicked'
  # Coverage of everything kept so far (edges and features after replaying the corpus).
  cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -runs=0 -max_len=65536 2>&1 |
    grep -E 'INITED' | sed 's/^/corpus replay: /'
done
