#!/usr/bin/env bash
# The client half of the interop matrix (issue 16): unmodified MCP clients against
# Latchkey's own /mcp and /mcp/{server} in jwt mode, with oidc-provider as Latchkey's
# authorization server. Rows: the TypeScript MCP SDK client (its OAuth provider
# interface, our in-memory provider), the Python MCP SDK client (default mode, legacy
# 2025-11-25, 2026-07-28) and mcp-remote under a stdio client. Consent is given by
# plain HTTP on oidc-provider's own login and consent pages (devInteractions).
# The relay columns (issue 20; the SDK clients' rows): the TypeScript SDK server's tools
# `confirm`, `summarise`, `roots` and `slow` send the client elicitation/create,
# sampling/createMessage, roots/list and progress during their call, through
# /mcp/{server} and through /mcp; the client's handlers must answer them, and a client
# without those capabilities must not be sent them (the upstream gets an error).
#
# Installs what it needs itself, every version pinned in tests/interop/clients/peers.lock:
# Node 22 and the npm packages into .cache/conformance/ (scripts/npm-cache.sh), the
# PyPI packages into a virtualenv under .cache/ (made with Debian's python3).
# Everything listens on 127.0.0.1. The table client × scenario is printed at the end
# and written to target/interop/clients.md; logs land in
# target/interop/clients-<UTC timestamp>/.
#
# Exit status: 0 when every cell passed or failed as listed in KNOWN_FAILURES in
# tests/interop/clients/driver.mjs; 1 otherwise (an unlisted failure, or a listed one
# that passes).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
here="$root/tests/interop/clients"
lock="$here/peers.lock"
# Seconds for the driver (setup and every client); the script's budget is ~6 minutes.
run_timeout=300
began=$SECONDS

die() {
  echo "interop-clients: $*" >&2
  exit 1
}

# 1. The pinned versions, from the one lock file.
npm_peers=()
pypi_peers=()
while read -r kind spec; do
  case $kind in
    npm) npm_peers+=("$spec") ;;
    pypi) pypi_peers+=("$spec") ;;
    '' | '#'*) ;;
    *) die "$lock: unknown kind '$kind'" ;;
  esac
done <"$lock"
[ "${#npm_peers[@]}" -gt 0 ] && [ "${#pypi_peers[@]}" -gt 0 ] || die "$lock names no npm or no PyPI package"

# 2. Node 22 and the npm packages, in one directory named after their versions.
# shellcheck source=scripts/npm-cache.sh
. "$root/scripts/npm-cache.sh"
peers_dir="$cache/interop-clients-$(printf '%s\n' "${npm_peers[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$peers_dir/.installed" ]; then
  echo "interop-clients: installing ${npm_peers[*]}"
  rm -rf "$peers_dir"
  mkdir -p "$peers_dir"
  npm install --no-audit --no-fund --loglevel=error --save-exact --prefix "$peers_dir" "${npm_peers[@]}" >/dev/null
  touch "$peers_dir/.installed"
fi
for p in "${npm_peers[@]}"; do
  got=$("$node" -p "require('$peers_dir/node_modules/${p%@*}/package.json').version")
  [ "$got" = "${p##*@}" ] || die "${p%@*} is $got in $peers_dir, not ${p##*@}"
done

# 3. Python and the PyPI packages, in a virtualenv named after their versions.
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3) || die "no python3"
venv="$root/.cache/interop-clients-venv-$(printf '%s\n' "${pypi_peers[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$venv/.installed" ]; then
  echo "interop-clients: installing ${pypi_peers[*]} into a virtualenv"
  rm -rf "$venv"
  "$python" -m venv "$venv" || die "$python -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install --disable-pip-version-check -q "${pypi_peers[@]}" || die "pip install ${pypi_peers[*]} failed"
  touch "$venv/.installed"
fi
for p in "${pypi_peers[@]}"; do
  got=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('${p%%==*}'))")
  [ "$got" = "${p##*==}" ] || die "${p%%==*} is $got in $venv, not ${p##*==}"
done

# 4. The binary (debug build; shares the target directory).
cargo build --locked -p latchkey-cli --bin latchkey
bin="$root/target/debug/latchkey"

# 5. The driver starts every server itself and stops them when it ends; background.sh
# gives it a scratch directory and stops it if this script is interrupted.
out="$root/target/interop/clients-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
# shellcheck source=scripts/background.sh
. "$root/scripts/background.sh"
rc=0
: >"$out/driver.log"
(
  # Nothing from the caller's environment may redirect the Latchkey instance.
  for v in $(compgen -e); do
    case $v in LATCHKEY_*) unset "$v" ;; esac
  done
  CLIENTS_PEERS="$peers_dir" CLIENTS_LATCHKEY="$bin" CLIENTS_NODE="$node" \
    CLIENTS_PYTHON="$venv/bin/python" CLIENTS_OUT="$out" CLIENTS_TMP="$tmp" \
    CLIENTS_TABLE="$root/target/interop/clients.md" CLIENTS_LOCK="$lock" \
    exec timeout "$run_timeout" "$node" "$here/driver.mjs"
) >"$out/driver.log" 2>&1 &
pids+=($!)
tail -n +1 -f --pid="${pids[-1]}" "$out/driver.log"
wait "${pids[-1]}" || rc=$?
echo "interop-clients: table in target/interop/clients.md, logs in $out ($((SECONDS - began)) s)"
[ "$rc" -eq 0 ] || die "the client interop run failed (exit $rc); see $out/driver.log"
# The README's copy of the table, from a complete green run outside CI.
if [ -z "${CLIENTS_ONLY:-}" ]; then
  # shellcheck source=scripts/readme-table.sh
  . "$root/scripts/readme-table.sh"
  readme_table interop-clients "$root/target/interop/clients.md"
fi
