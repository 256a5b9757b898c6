#!/usr/bin/env bash
# Runs the official MCP conformance suite (client side) against
# `latchkey conformance-client`: 0.1.16 suites auth, backcompat, draft, extensions;
# 0.2.0-alpha.12 suites auth, backcompat, draft, extensions at --spec-version
# 2025-11-25 and 2026-07-28. Scenarios that cannot pass yet are listed with reasons
# in conformance/expected-failures-*.yml; anything else failing fails this script.
# Then scripts/conformance-server.sh runs the suite's server scenarios against a
# reference server directly, through Latchkey's `/mcp/{server}` proxy and through the
# federated `/mcp`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=scripts/npm-cache.sh
. "$root/scripts/npm-cache.sh"
install v0116 @modelcontextprotocol/conformance@0.1.16
install v0200a12 @modelcontextprotocol/conformance@0.2.0-alpha.12

cargo build --locked -p latchkey-cli --bin latchkey
bin="$root/target/debug/latchkey"
out="$root/ci-results/conformance"
rm -rf "$out"
mkdir -p "$out"

status=0
summary=()
run_suite() { # label package suite [extra args...]
  local label=$1 pkg=$2 suite=$3
  shift 3
  local cli="$cache/$pkg/node_modules/@modelcontextprotocol/conformance/dist/index.js"
  local log="$out/$label.log"
  local args=(client --command "$bin conformance-client" --suite "$suite" -o "$out/$label" "$@")
  local baseline="$root/conformance/expected-failures-$label.yml"
  [ -f "$baseline" ] && args+=(--expected-failures "$baseline")
  set +e
  "$node" "$cli" "${args[@]}" >"$log" 2>&1
  local rc=$?
  set -e
  local total
  total=$(grep -E '^Total: ' "$log" | tail -n 1 || true)
  summary+=("$(printf '%-34s %s (exit %s)' "$label" "${total:-no total printed}" "$rc")")
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "---- $label failed; its log:"
    cat "$log"
  fi
}

run_suite 0.1.16-auth v0116 auth
run_suite 0.1.16-backcompat v0116 backcompat
run_suite 0.1.16-draft v0116 draft
run_suite 0.1.16-extensions v0116 extensions
for v in 2025-11-25 2026-07-28; do
  for s in auth backcompat draft extensions; do
    run_suite "alpha12-$v-$s" v0200a12 "$s" --spec-version "$v"
  done
done
# --spec-version selects no extension scenario (they carry an extension id, not a
# revision), so the extension auth scenarios (DPoP, DPoP nonce, workload identity,
# enterprise-managed authorization, client credentials) run once more unfiltered.
run_suite alpha12-extensions v0200a12 extensions
# Likewise the 2025-03-26 back-compat scenarios are tagged with that revision only.
run_suite alpha12-backcompat v0200a12 backcompat

echo
echo "Conformance totals (client suites):"
printf '  %s\n' "${summary[@]}"

echo
echo "==> MCP conformance server scenarios: direct vs through Latchkey's /mcp/{server} and /mcp"
bash scripts/conformance-server.sh || status=1
exit $status
