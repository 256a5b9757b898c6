#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests, the web UI in
# headless Chromium, and the official MCP conformance suite against
# `latchkey conformance-client`. Installs what it needs (Node 22, the suite,
# playwright-core into .cache/; Debian's chromium) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0
step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked 2>&1 | tee .cache-test.log || { rm -f .cache-test.log; exit 1; }
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' .cache-test.log | awk '{s+=$4} END {print s+0}')
rm -f .cache-test.log

step "web UI end-to-end (Playwright, headless Chromium)"
bash scripts/e2e.sh

step "MCP conformance suites"
bash scripts/conformance.sh

printf '\ntests: %s passed, 0 failed\n' "$passed"
