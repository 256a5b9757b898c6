#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests, the web UI in
# headless Chromium, the official MCP conformance suite against
# `latchkey conformance-client`, and the interop matrix against unmodified third-party
# peers (scripts/interop.sh). Installs what it needs (Node 22, the suite,
# playwright-core into .cache/; Debian's chromium) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0
# Each stage is timed; the times are printed as each one ends and together at the end.
stage= stage_began=$SECONDS timings=()
end_stage() {
  [ -n "$stage" ] || return 0
  timings+=("$(printf '%5ds  %s' $((SECONDS - stage_began)) "$stage")")
  printf '==> %s: %ds\n' "$stage" $((SECONDS - stage_began))
  stage=
}
step() {
  end_stage
  stage="$*" stage_began=$SECONDS
  printf '\n==> %s\n' "$*"
}
report() {
  local rc=$?
  end_stage
  printf '\nstage times (total %ds):\n' "$SECONDS"
  printf '%s\n' "${timings[@]}"
  # The closing line, last.
  [ -z "${summary:-}" ] || printf '\n%s\n' "$summary"
  return $rc
}
trap report EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked 2>&1 | tee .cache-test.log || { rm -f .cache-test.log; exit 1; }
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' .cache-test.log | awk '{s+=$4} END {print s+0}')
# The hostile group (issue 15): every attack that once got through, by name.
hostile=$(grep -Ec '^test .*hostile.* \.\.\. ok$' .cache-test.log || true)
printf 'hostile group: %s tests passed\n' "$hostile"
rm -f .cache-test.log

step "web UI end-to-end (Playwright, headless Chromium)"
bash scripts/e2e.sh

step "sign-in: latchkey login, logout and api-keys in jwt mode against oidc-provider (headless Chromium)"
bash scripts/signin.sh

step "MCP conformance suites"
bash scripts/conformance.sh

step "interop matrix: unmodified third-party authorization servers"
bash scripts/interop.sh

step "interop matrix: unmodified third-party MCP clients against Latchkey in jwt mode"
bash scripts/interop-clients.sh

summary="tests: $passed passed, 0 failed"
