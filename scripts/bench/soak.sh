#!/usr/bin/env bash
# The soak (issue 8): 10 minutes of `tools/call` at a fixed rate through `/mcp/{server}`
# while the slot's access token expires every 30 s, against a release `latchkey serve`
# with an embedded SQLite database, the scripted authorization server (rotating refresh
# tokens) and the scripted MCP resource (crates/latchkey-bench/src/soak.rs):
#   bash scripts/bench/soak.sh [latchkey-bench soak arguments]
#   bash scripts/bench/soak.sh --seconds 70 --expiry-seconds 10     # a short run
# Defaults: --seconds 600 --rate 200 --expiry-seconds 30 --clients 8. The output (a
# memory table every 30 s, then the summary line) is also kept in
# target/soak/<timestamp>.log. The exit status is non-zero if any request failed, the
# refresh grants do not match the expiries (one each, ±1), or the resident memory of
# `latchkey serve` grew by more than 10 % after the warm-up.
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "== building latchkey and latchkey-bench (release)"
cargo build --release -p latchkey-cli -p latchkey-bench

log_dir=target/soak
mkdir -p "$log_dir"
log="$log_dir/$(date -u +%Y%m%dT%H%M%SZ).log"

echo "== soak, log in $log"
status=0
# A failed check is reported in one line, without anyhow's backtrace.
export RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE:-0}
./target/release/latchkey-bench soak "$@" 2>&1 | tee "$log" || status=$?
exit "$status"
