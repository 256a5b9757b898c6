# Sourced by the scripts that start servers in the background: a scratch directory in
# $tmp, and every process whose pid is appended to $pids stopped (and waited for) when
# the script exits, whatever the reason.
tmp=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
