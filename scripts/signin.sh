#!/usr/bin/env bash
# Sign-in end to end (issue 19): `latchkey login` / `logout` / `api-keys` and the web
# UI's sign-in against a real `latchkey serve` in jwt mode whose `[auth.login]` points
# at oidc-provider (unmodified, tests/signin/provider.mjs is only its configuration),
# with the consent given in a real headless Chromium (playwright-core).
#
# Installs what it needs itself, every version pinned in tests/signin/peers.lock:
# Debian's chromium (apt-get, only when /usr/bin/chromium is missing; needs root),
# Node 22 and the npm packages into .cache/conformance/ (scripts/npm-cache.sh).
# Everything listens on 127.0.0.1. Logs and screenshots land in
# target/signin/<UTC timestamp>/. Arguments go to `node --test`, e.g.
# `--test-name-pattern=device`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
here="$root/tests/signin"
lock="$here/peers.lock"
chromium=/usr/bin/chromium
start_timeout=60
# Seconds for the whole node:test run (the stage's budget is ~3 minutes).
run_timeout=240
out="$root/target/signin/$(date -u +%Y%m%dT%H%M%SZ)"
began=$SECONDS

die() {
  echo "signin: $*" >&2
  exit 1
}

# 1. Chromium from Debian.
if [ ! -x "$chromium" ]; then
  echo "signin: installing chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq chromium >/dev/null || die "apt-get install chromium failed"
  [ -x "$chromium" ] || die "$chromium is missing after installing chromium"
fi

# 2. Node 22 and the pinned npm packages, in one directory named after their versions.
npm_peers=()
while read -r kind spec; do
  case $kind in
    npm) npm_peers+=("$spec") ;;
    '' | '#'*) ;;
    *) die "$lock: unknown kind '$kind'" ;;
  esac
done <"$lock"
[ "${#npm_peers[@]}" -gt 0 ] || die "$lock names no npm package"
# shellcheck source=scripts/npm-cache.sh
. "$root/scripts/npm-cache.sh"
peers_dir="$cache/signin-$(printf '%s\n' "${npm_peers[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$peers_dir/.installed" ]; then
  echo "signin: installing ${npm_peers[*]}"
  rm -rf "$peers_dir"
  mkdir -p "$peers_dir"
  npm install --no-audit --no-fund --loglevel=error --save-exact --prefix "$peers_dir" "${npm_peers[@]}" >/dev/null
  touch "$peers_dir/.installed"
fi
for p in "${npm_peers[@]}"; do
  got=$("$node" -p "require('$peers_dir/node_modules/${p%@*}/package.json').version")
  [ "$got" = "${p##*@}" ] || die "${p%@*} is $got in $peers_dir, not ${p##*@}"
done

# 3. The binaries (debug build).
cargo build --locked -p latchkey-cli --bin latchkey -p latchkey-testkit --bin scripted-servers
bin="$root/target/debug"

mkdir -p "$out"
# shellcheck source=scripts/background.sh
. "$root/scripts/background.sh"

# 4. The scripted MCP servers (one takes an API key header): one JSON line with their URLs.
"$bin/scripted-servers" >"$tmp/scripted.json" 2>"$out/scripted-servers.log" &
pids+=($!)
deadline=$((SECONDS + start_timeout))
until grep -q '^{' "$tmp/scripted.json" 2>/dev/null; do
  kill -0 "${pids[-1]}" 2>/dev/null || die "scripted-servers exited before it was ready"
  [ "$SECONDS" -lt "$deadline" ] || die "scripted-servers was not ready within ${start_timeout}s"
  sleep 0.2
done
scripted=$(grep -m1 '^{' "$tmp/scripted.json")

# 5. The tests: each file starts its own provider and Latchkey (tests/signin/harness.mjs).
rc=0
SIGNIN_PEERS="$peers_dir" SIGNIN_LATCHKEY="$bin/latchkey" SIGNIN_OUT="$out" SIGNIN_CHROMIUM="$chromium" \
  SIGNIN_SCRIPTED="$scripted" \
  timeout "$run_timeout" "$node" --test --test-reporter=spec --test-concurrency=1 "$@" "$here"/*.test.mjs || rc=$?

echo "signin: logs and screenshots in $out ($((SECONDS - began)) s)"
[ "$rc" -eq 0 ] || die "the sign-in tests failed (exit $rc); see the logs in $out"
# No token or client secret the run handled reached a Latchkey's log (every log but
# the provider's and the scripted servers').
logs=()
for f in "$out"/*.log; do
  case ${f##*/} in
    provider-*.log | scripted-servers.log) ;;
    *) logs+=("$f") ;;
  esac
done
if grep -En 'eyJ[A-Za-z0-9_-]{20,}\.|signin-web-client-secret' "${logs[@]}"; then
  die "a token or secret appears in a Latchkey log in $out"
fi
