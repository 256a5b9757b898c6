#!/usr/bin/env bash
# Runs the official MCP conformance suite's server scenarios
# (@modelcontextprotocol/conformance@0.1.16 `server --suite all`) three times against the
# same reference server (@modelcontextprotocol/server-everything, streamable HTTP): once
# directly, once through Latchkey's transparent proxy `/mcp/{server}` and once through
# Latchkey's federated endpoint `/mcp` (`latchkey serve` in local mode, the reference
# server registered over the API with the `unprefixed` naming setting, so `/mcp` in front
# of it alone should be transparent). Prints the three results side by side. Fails if a
# scenario passes directly but not through `/mcp/{server}` or not through `/mcp` (a
# defect either way, issue 20: `/mcp` relays what the server sends during a request), or
# if any run could not happen.
# Logs and results land in ci-results/conformance-server/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out="$root/ci-results/conformance-server"
conformance_version=0.1.16
everything_version=2026.8.31
# Seconds to wait for a server to listen, and for one whole suite run.
start_timeout=60
suite_timeout=600

# shellcheck source=scripts/npm-cache.sh
. "$root/scripts/npm-cache.sh"
install v0116 "@modelcontextprotocol/conformance@$conformance_version"
install "everything-$everything_version" "@modelcontextprotocol/server-everything@$everything_version"
cli="$cache/v0116/node_modules/@modelcontextprotocol/conformance/dist/index.js"
everything="$cache/everything-$everything_version/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
"$node" --version >/dev/null
for f in "$cli" "$everything"; do
  [ -f "$f" ] || { echo "conformance-server: $f is missing after install" >&2; exit 1; }
done

cargo build --locked -p latchkey-cli --bin latchkey
bin="$root/target/debug/latchkey"

rm -rf "$out"
mkdir -p "$out"
# shellcheck source=scripts/background.sh
. "$root/scripts/background.sh"

die() {
  echo "conformance-server: $*" >&2
  exit 1
}

# A free loopback TCP port (the kernel's pick; released just before use).
free_port() {
  "$node" -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# Waits until 127.0.0.1:PORT accepts connections, while PID lives; LOG is shown on failure.
wait_port() { # port pid what log
  local deadline=$((SECONDS + start_timeout))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    if ! kill -0 "$2" 2>/dev/null; then
      cat "$4" >&2
      die "$3 exited before listening on 127.0.0.1:$1"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      cat "$4" >&2
      die "$3 did not listen on 127.0.0.1:$1 within ${start_timeout}s"
    fi
    sleep 0.2
  done
}

# Runs every server scenario against URL; the log goes to LABEL.log, results to LABEL/.
run_suite() { # label url
  local rc=0
  timeout "$suite_timeout" "$node" "$cli" server --suite all --url "$2" -o "$out/$1" \
    >"$out/$1.log" 2>&1 || rc=$?
  # The suite exits 1 when any check fails; only a missing summary means it did not run.
  if ! grep -qE '^Total: [0-9]+ passed, [0-9]+ failed' "$out/$1.log"; then
    cat "$out/$1.log" >&2
    die "the $1 run printed no summary (exit $rc)"
  fi
}

# 1. The reference server, bound to loopback only.
ref_port=$(free_port)
PORT=$ref_port "$node" --require "$root/scripts/loopback-listen.cjs" "$everything" streamableHttp \
  >"$out/reference-server.log" 2>&1 &
pids+=($!)
wait_port "$ref_port" "${pids[-1]}" "the reference server" "$out/reference-server.log"
ref_url="http://127.0.0.1:$ref_port/mcp"

# 2. Directly.
run_suite direct "$ref_url"

# 3. Latchkey in local mode on a port of its own choosing, with a throw-away data dir.
mkdir -p "$tmp/data"
cat >"$tmp/latchkey.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "$tmp/data"
allow_insecure_loopback = true
EOF
# Created before the instance starts: the wait below reads it at once.
: >"$out/latchkey.log"
(
  # Nothing from the caller's environment may redirect this instance.
  for v in $(compgen -e); do
    case $v in LATCHKEY_*) unset "$v" ;; esac
  done
  exec "$bin" serve --config "$tmp/latchkey.toml"
) >"$out/latchkey.log" 2>&1 &
pids+=($!)
lk_pid=${pids[-1]}
deadline=$((SECONDS + start_timeout))
lk_base=
until [ -n "$lk_base" ]; do
  lk_base=$(sed -n 's/^Latchkey is listening on \(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$out/latchkey.log" | head -n 1)
  if [ -z "$lk_base" ]; then
    kill -0 "$lk_pid" 2>/dev/null || { cat "$out/latchkey.log" >&2; die "latchkey serve exited before listening"; }
    [ "$SECONDS" -lt "$deadline" ] || { cat "$out/latchkey.log" >&2; die "latchkey serve did not listen within ${start_timeout}s"; }
    sleep 0.2
  fi
done
wait_port "${lk_base##*:}" "$lk_pid" "latchkey serve" "$out/latchkey.log"

# 4. Register the reference server; the probe must classify it as `none`.
# shellcheck disable=SC2016 # JavaScript template literals, not shell expansions
registered=$("$node" -e '
const [base, url] = process.argv.slice(1);
fetch(base + "/v1/servers", {
  method: "POST",
  headers: {"content-type": "application/json"},
  body: JSON.stringify({name: "conformance-everything", url, unprefixed: true}),
}).then(async (r) => {
  const text = await r.text();
  if (r.status !== 201) { console.error(`POST /v1/servers: ${r.status} ${text}`); process.exit(1); }
  const v = JSON.parse(text);
  console.log(`${v.id} ${v.auth_type} ${v.unprefixed}`);
}).catch((e) => { console.error(`POST /v1/servers: ${e}`); process.exit(1); });
' "$lk_base" "$ref_url") || { cat "$out/latchkey.log" >&2; die "registering the reference server failed"; }
read -r server_id auth_type unprefixed <<<"$registered"
[ "$auth_type" = none ] || die "the probe classified the reference server as '$auth_type', expected 'none'"
[ "$unprefixed" = true ] || die "the reference server was registered without the unprefixed setting"
proxied_url="$lk_base/mcp/$server_id"
federated_url="$lk_base/mcp"

# 5. Through Latchkey: the transparent proxy, then the federated endpoint.
run_suite proxied "$proxied_url"
run_suite federated "$federated_url"

# 6. Side by side.
results() { # log -> "scenario passed failed" lines from the summary
  sed -n '/^=== SUMMARY ===$/,$p' "$1" |
    sed -nE 's/^[^ ]+ ([^ :]+): ([0-9]+) passed, ([0-9]+) failed$/\1 \2 \3/p'
}
declare -A direct proxied federated
order=()
while read -r name p f; do
  direct[$name]="$p $f"
  order+=("$name")
done < <(results "$out/direct.log")
while read -r name p f; do
  proxied[$name]="$p $f"
  [ -n "${direct[$name]+x}" ] || order+=("$name")
done < <(results "$out/proxied.log")
while read -r name p f; do
  federated[$name]="$p $f"
  [ -n "${direct[$name]+x}" ] || [ -n "${proxied[$name]+x}" ] || order+=("$name")
done < <(results "$out/federated.log")
[ "${#order[@]}" -gt 0 ] || die "no scenario results could be read from the logs"
[ "${#federated[@]}" -gt 0 ] || die "no scenario results could be read from the /mcp run"

cell() { # "passed failed" or empty
  if [ -z "$1" ]; then
    echo "not run"
    return
  fi
  local p=${1% *} f=${1#* }
  if [ "$f" -eq 0 ]; then echo "pass ($p/$((p + f)))"; else echo "FAIL ($p/$((p + f)))"; fi
}
is_pass() { [ -n "$1" ] && [ "${1#* }" -eq 0 ]; }

echo
echo "MCP conformance $conformance_version server scenarios: @modelcontextprotocol/server-everything@$everything_version"
echo "  direct:           $ref_url"
echo "  through Latchkey: $proxied_url (auth type $auth_type)"
echo "  federated /mcp:   $federated_url (the server unprefixed)"
echo
printf '  %-32s %-16s %-16s %-16s\n' scenario direct "through Latchkey" "federated /mcp"
direct_pass=0 proxied_pass=0 federated_pass=0 regressions=() federated_short=()
for name in "${order[@]}"; do
  d=${direct[$name]-} x=${proxied[$name]-} m=${federated[$name]-}
  is_pass "$d" && direct_pass=$((direct_pass + 1))
  is_pass "$x" && proxied_pass=$((proxied_pass + 1))
  is_pass "$m" && federated_pass=$((federated_pass + 1))
  mark=
  if is_pass "$d" && ! is_pass "$x"; then
    regressions+=("$name")
    mark="  <-- regression"
  elif ! is_pass "$d" && is_pass "$x"; then
    mark="  (passes only through Latchkey)"
  fi
  if is_pass "$d" && ! is_pass "$m"; then
    federated_short+=("$name")
    mark="$mark  <-- regression through /mcp"
  fi
  printf '  %-32s %-16s %-16s %-16s%s\n' "$name" "$(cell "$d")" "$(cell "$x")" "$(cell "$m")" "$mark"
done
total=${#order[@]}
echo
echo "  scenarios passing: direct $direct_pass/$total, through Latchkey $proxied_pass/$total, federated /mcp $federated_pass/$total"
checks() { # log -> "passed of total" from the suite's `Total: P passed, F failed`
  sed -nE 's/^Total: ([0-9]+) passed, ([0-9]+) failed.*/\1 \2/p' "$1" | tail -n 1 |
    { read -r p f && echo "$p of $((p + f))"; }
}
echo "  checks succeeding: direct $(checks "$out/direct.log"), through Latchkey $(checks "$out/proxied.log"), federated /mcp $(checks "$out/federated.log")"

# The federated endpoint's shortfall is a failure too (see the top), reported with the
# proxy's below so both lists are printed before the script fails.
if [ "${#federated_short[@]}" -gt 0 ]; then
  echo
  echo "Scenarios that pass directly but fail through the federated /mcp (${#federated_short[@]}): ${federated_short[*]}"
  for name in "${federated_short[@]}"; do
    for f in "$out/federated/server-$name-"*/checks.json; do
      [ -f "$f" ] || continue
      # shellcheck disable=SC2016 # JavaScript template literals
      "$node" -e '
const checks = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
for (const c of checks) if (c.status === "FAILURE")
  console.log(`  ${process.argv[2]} (/mcp): ${c.id}: ${c.errorMessage || c.description}`);
' "$f" "$name"
    done
  done
else
  echo "  no scenario that passes directly fails through the federated /mcp"
fi

if [ "$direct_pass" -eq 0 ]; then
  die "no scenario passed directly: the reference server did not answer as expected"
fi
if [ "${#regressions[@]}" -gt 0 ]; then
  echo
  echo "Scenarios that pass directly but fail through Latchkey: ${regressions[*]}"
  # The failed checks of each, from the results directory.
  for name in "${regressions[@]}"; do
    for f in "$out/proxied/server-$name-"*/checks.json; do
      [ -f "$f" ] || continue
      # shellcheck disable=SC2016 # JavaScript template literals
      "$node" -e '
const checks = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
for (const c of checks) if (c.status === "FAILURE")
  console.log(`  ${process.argv[2]}: ${c.id}: ${c.errorMessage || c.description}`);
' "$f" "$name"
    done
  done
  exit 1
fi
echo "  no scenario that passes directly fails through Latchkey"
[ "${#federated_short[@]}" -eq 0 ] || exit 1
