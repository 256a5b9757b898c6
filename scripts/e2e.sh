#!/usr/bin/env bash
# The web UI end to end in a real headless Chromium: Playwright's library
# (playwright-core, driven by a plain node:test script, tests/e2e/) against a
# throw-away `latchkey serve` (local mode, loopback upstreams allowed, a temporary data
# directory) and the scripted MCP servers with their own authorization servers
# (`scripted-servers` from latchkey-testkit: one approving every consent, one refusing
# with `access_denied`), and a second `latchkey serve` without the loopback relaxation.
#
# Installs what it needs itself: Debian's chromium (apt-get, only when
# /usr/bin/chromium is missing; needs root), Node 22 and playwright-core into
# .cache/conformance/ (scripts/npm-cache.sh). Screenshots and logs land in
# target/e2e/<UTC timestamp>/, printed at the end. Arguments go to `node --test`, e.g.
# `--test-name-pattern='tool form'` (later tests use servers the first one adds).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
playwright_version=1.64.1
chromium=/usr/bin/chromium
# Seconds to wait for a server to listen, and for the whole browser run.
start_timeout=60
run_timeout=300
out="$root/target/e2e/$(date -u +%Y%m%dT%H%M%SZ)"
began=$SECONDS

die() {
  echo "e2e: $*" >&2
  exit 1
}

# 1. Chromium from Debian.
if [ ! -x "$chromium" ]; then
  echo "e2e: installing chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq chromium >/dev/null || die "apt-get install chromium failed"
  [ -x "$chromium" ] || die "$chromium is missing after installing chromium"
fi

# 2. Node and playwright-core (the library only: it downloads no browser).
# shellcheck source=scripts/npm-cache.sh
. "$root/scripts/npm-cache.sh"
install "playwright-core-$playwright_version" "playwright-core@$playwright_version"
playwright="$cache/playwright-core-$playwright_version/node_modules/playwright-core"
[ -f "$playwright/package.json" ] || die "$playwright is missing after install"

# 3. The binaries (debug build).
cargo build --locked -p latchkey-cli --bin latchkey -p latchkey-testkit --bin scripted-servers
bin="$root/target/debug"

mkdir -p "$out"
# shellcheck source=scripts/background.sh
. "$root/scripts/background.sh"

# Waits until FILE has a line matching the sed expression, while PID lives; prints the
# match. LOG is shown on failure.
wait_line() { # file sed-expression pid what log
  local deadline=$((SECONDS + start_timeout)) got=
  until [ -n "$got" ]; do
    got=$(sed -n "$2" "$1" 2>/dev/null | head -n 1)
    if [ -z "$got" ]; then
      kill -0 "$3" 2>/dev/null || { cat "$5" >&2; die "$4 exited before it was ready"; }
      [ "$SECONDS" -lt "$deadline" ] || { cat "$5" >&2; die "$4 was not ready within ${start_timeout}s"; }
      sleep 0.2
    fi
  done
  printf '%s\n' "$got"
}

# 4. The scripted servers: one JSON line with their URLs.
"$bin/scripted-servers" >"$tmp/scripted.json" 2>"$out/scripted-servers.log" &
pids+=($!)
scripted=$(wait_line "$tmp/scripted.json" '/^{/p' "${pids[-1]}" "scripted-servers" "$out/scripted-servers.log")

# 5. Latchkey in local mode on a port of its own choosing.
mkdir -p "$tmp/data"
cat >"$tmp/latchkey.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "$tmp/data"
allow_insecure_loopback = true
EOF
(
  # Nothing from the caller's environment may redirect this instance.
  for v in $(compgen -e); do
    case $v in LATCHKEY_*) unset "$v" ;; esac
  done
  # Request-level events in the log kept with the screenshots (never a secret).
  LATCHKEY_LOG=info exec "$bin/latchkey" serve --config "$tmp/latchkey.toml"
) >"$out/latchkey.log" 2>&1 &
pids+=($!)
lk_base=$(wait_line "$out/latchkey.log" 's/^Latchkey is listening on \(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' \
  "${pids[-1]}" "latchkey serve" "$out/latchkey.log")

# 5b. A second Latchkey as a first start has it: no loopback relaxation (the page must
# say which setting allows http://localhost).
mkdir -p "$tmp/strict"
cat >"$tmp/strict.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "$tmp/strict"
EOF
(
  for v in $(compgen -e); do
    case $v in LATCHKEY_*) unset "$v" ;; esac
  done
  LATCHKEY_LOG=info exec "$bin/latchkey" serve --config "$tmp/strict.toml"
) >"$out/latchkey-strict.log" 2>&1 &
pids+=($!)
strict_base=$(wait_line "$out/latchkey-strict.log" 's/^Latchkey is listening on \(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' \
  "${pids[-1]}" "latchkey serve (strict)" "$out/latchkey-strict.log")

# 6. The browser tests.
rc=0
E2E_LATCHKEY_URL="$lk_base" E2E_STRICT_URL="$strict_base" E2E_SCRIPTED="$scripted" E2E_OUT="$out" \
  E2E_PLAYWRIGHT_CORE="$playwright" E2E_CHROMIUM="$chromium" \
  timeout "$run_timeout" "$node" --test --test-reporter=spec "$@" "$root/tests/e2e/ui.test.mjs" || rc=$?

echo "e2e: screenshots and logs in $out ($((SECONDS - began)) s)"
[ "$rc" -eq 0 ] || die "the browser tests failed (exit $rc); see $out/latchkey.log"
# No token, code or secret the run handled reached Latchkey's log.
if grep -En '\b(at-[0-9]+|rt-[0-9]+-[0-9]+|code-[0-9]+)\b|dcr-secret|machine-secret|e2e-api-key' "$out/latchkey.log"; then
  die "a token, code or secret appears in $out/latchkey.log"
fi
