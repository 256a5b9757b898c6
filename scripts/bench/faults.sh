#!/usr/bin/env bash
# The fault-injection suite's long form (issue 8): the matrix of
# crates/latchkey-gateway/tests/it/faults.rs (authorization server down, slow, garbage,
# redirecting; JWKS down; upstream resets mid-stream; oversize and malformed bodies on
# every endpoint) repeated N times, each round with bursts of concurrent calls:
#   bash scripts/bench/faults.sh [rounds]        # default 50 (about 10 minutes)
# The short form (one round) runs in CI as part of `cargo test`. The full output is
# kept in target/faults/<timestamp>.log; the summary lists each test's rounds, time and
# mismatches. The exit status is non-zero if any case was answered untyped, anything
# panicked or anything was lost.
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=${1:-${LATCHKEY_FAULT_ROUNDS:-50}}
case $rounds in
  '' | *[!0-9]* | 0)
    echo "usage: $0 [rounds]   (a positive integer, default 50)" >&2
    exit 2
    ;;
esac

log_dir=target/faults
mkdir -p "$log_dir"
log="$log_dir/$(date -u +%Y%m%dT%H%M%SZ).log"

echo "== building the gateway's integration tests"
cargo test -p latchkey-gateway --test it --no-run

echo "== fault-injection suite: $rounds round(s), log in $log"
start=$(date +%s)
status=0
LATCHKEY_FAULT_ROUNDS=$rounds cargo test -p latchkey-gateway --test it faults -- --nocapture \
  >"$log" 2>&1 || status=$?
elapsed=$(($(date +%s) - start))

echo "== summary"
grep -E '^faults: ' "$log" || true
grep -E '^test .* \.\.\. (ok|FAILED|ignored)$' "$log" || true
grep -E '^test result: ' "$log" || echo "no test result (see $log)"
echo "panic messages in the log: $(grep -c 'panicked at' "$log" || true)"
echo "wall time: ${elapsed} s"
if [ "$status" -ne 0 ]; then
  echo "== FAILED (status $status); first mismatches:"
  grep -E '^round [0-9]+: |mismatch\(es\):|panicked at' "$log" | head -n 40 || true
fi
exit "$status"
