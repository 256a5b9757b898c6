#!/usr/bin/env bash
# The interop matrix (issue 16): unmodified third-party peers against `latchkey serve`.
# Today: oidc-provider as the authorization server in three configurations
# (tests/interop/as.mjs) and an Authlib AS (tests/interop/py_as.py), each protecting an
# MCP server built on the TypeScript MCP SDK (tests/interop/mcp-server.mjs), and the
# TypeScript MCP SDK's example server (simpleStreamableHttp --oauth-strict, its AS and
# MCP server in one program); tests/interop/matrix.test.mjs drives doctor,
# connect (consent in headless Chromium), calls through REST, /mcp/{server} and /mcp,
# refresh at expiry under 50 concurrent callers, restart and disconnect.
#
# Installs what it needs itself, pinned in tests/interop/peers.lock: Node 22 and the
# npm packages into .cache/conformance/ (scripts/npm-cache.sh); the PyPI packages of
# tests/interop/requirements.lock into a virtualenv under .cache/; Debian's chromium
# (apt-get, only when no `chromium` is on PATH; needs root). Everything listens on
# 127.0.0.1. The table peer × scenario is printed at the end and written to
# target/interop/matrix.md (and, after a complete green run outside CI, into README.md
# between its interop-matrix markers); logs land in target/interop/<UTC timestamp>/.
#
# Exit status: 0 when every scenario passed or failed as listed in the driver's
# known-failures list; 1 otherwise (an unlisted failure, or a listed one that passes).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
lock="$root/tests/interop/peers.lock"
# Seconds for the whole browser-driven run (the script's budget is ~6 minutes).
run_timeout=420
began=$SECONDS

die() {
  echo "interop: $*" >&2
  exit 1
}

# 1. The pinned versions, from the one lock file.
pinned() { # name -> name@version
  local line
  line=$(grep -E "^$1@[0-9]" "$lock" | head -n 1)
  [ -n "$line" ] || die "$1 is not pinned in $lock"
  printf '%s\n' "$line"
}
peers=()
for name in oidc-provider @modelcontextprotocol/sdk jose express; do
  peers+=("$(pinned "$name")")
done
playwright_pkg=$(pinned playwright-core)

# 2. Chromium from Debian.
chromium=$(command -v chromium || true)
if [ -z "$chromium" ]; then
  echo "interop: installing chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq chromium >/dev/null || die "apt-get install chromium failed"
  chromium=$(command -v chromium) || die "no chromium after installing chromium"
fi

# 3. Node 22 and the packages. The peers go into one directory named after their
# versions (so they resolve each other), playwright-core into the directory
# scripts/e2e.sh also uses.
# shellcheck source=scripts/npm-cache.sh
. "$root/scripts/npm-cache.sh"
peers_dir="$cache/interop-$(printf '%s\n' "${peers[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$peers_dir/.installed" ]; then
  echo "interop: installing ${peers[*]}"
  rm -rf "$peers_dir"
  mkdir -p "$peers_dir"
  npm install --no-audit --no-fund --loglevel=error --save-exact --prefix "$peers_dir" "${peers[@]}" >/dev/null
  touch "$peers_dir/.installed"
fi
install "playwright-core-${playwright_pkg#*@}" "$playwright_pkg"
playwright="$cache/playwright-core-${playwright_pkg#*@}/node_modules/playwright-core"
[ -f "$playwright/package.json" ] || die "$playwright is missing after install"
for p in "${peers[@]}"; do
  got=$("$node" -p "require('$peers_dir/node_modules/${p%@*}/package.json').version")
  [ "$got" = "${p##*@}" ] || die "${p%@*} is $got in $peers_dir, not ${p##*@}"
done

# 3b. Python and the PyPI packages (the Authlib authorization server), pinned in
# tests/interop/requirements.lock, in a virtualenv named after that file.
py_lock="$root/tests/interop/requirements.lock"
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3) || die "no python3"
venv="$root/.cache/interop-venv-$(grep -vE '^\s*(#|$)' "$py_lock" | sha256sum | cut -c1-16)"
if [ ! -f "$venv/.installed" ]; then
  echo "interop: installing the PyPI packages of $py_lock into a virtualenv"
  rm -rf "$venv"
  "$python" -m venv "$venv" || die "$python -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install --disable-pip-version-check -q -r "$py_lock" || die "pip install -r $py_lock failed"
  touch "$venv/.installed"
fi
while read -r spec; do
  case $spec in '' | '#'*) continue ;; esac
  got=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('${spec%%==*}'))")
  [ "$got" = "${spec##*==}" ] || die "${spec%%==*} is $got in $venv, not ${spec##*==}"
done <"$py_lock"

# 4. The binary (debug build; shares the target directory).
cargo build --locked -p latchkey-cli --bin latchkey
bin="$root/target/debug/latchkey"

# 5. The driver starts every server itself (the authorization server, the MCP server
# and `latchkey serve` per configuration) and stops them when it ends; background.sh
# only gives it a scratch directory and stops anything left behind.
out="$root/target/interop/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
# shellcheck source=scripts/background.sh
. "$root/scripts/background.sh"
rc=0
: >"$out/driver.log"
(
  # Nothing from the caller's environment may redirect the Latchkey instances.
  for v in $(compgen -e); do
    case $v in LATCHKEY_*) unset "$v" ;; esac
  done
  INTEROP_PEERS="$peers_dir" INTEROP_LATCHKEY="$bin" INTEROP_OUT="$out" INTEROP_TMP="$tmp" \
    INTEROP_NODE="$node" INTEROP_PYTHON="$venv/bin/python" INTEROP_PLAYWRIGHT_CORE="$playwright" INTEROP_CHROMIUM="$chromium" \
    INTEROP_MATRIX="$root/target/interop/matrix.md" \
    exec timeout "$run_timeout" "$node" --test --test-concurrency=1 --test-reporter=spec \
    "$root/tests/interop/matrix.test.mjs"
) >"$out/driver.log" 2>&1 &
pids+=($!)
# The driver's report as it runs (it also ends with the table).
tail -n +1 -f --pid="${pids[-1]}" "$out/driver.log"
wait "${pids[-1]}" || rc=$?
echo "interop: table in target/interop/matrix.md, logs in $out ($((SECONDS - began)) s)"
[ "$rc" -eq 0 ] || die "the interop matrix failed (exit $rc); see $out/driver.log"
# The README's copy of the table, from a complete green run outside CI.
if [ -z "${INTEROP_ONLY:-}" ]; then
  # shellcheck source=scripts/readme-table.sh
  . "$root/scripts/readme-table.sh"
  readme_table interop-matrix "$root/target/interop/matrix.md"
fi
