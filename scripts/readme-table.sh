# Sourced by scripts/interop.sh and scripts/interop-clients.sh: readme_table NAME FILE
# replaces what README.md holds between `<!-- NAME:start -->` and `<!-- NAME:end -->`
# with FILE (a run's Markdown table) less its first heading. Done only for a complete
# green run outside CI (CI unset): CI never writes into its clone, and a partial run
# (INTEROP_ONLY / CLIENTS_ONLY) or a red one never replaces the committed table.
readme_table() {
  local name=$1 file=$2 readme="$root/README.md"
  [ -z "${CI:-}" ] || return 0
  [ -f "$file" ] || return 0
  grep -q "^<!-- $name:start -->\$" "$readme" && grep -q "^<!-- $name:end -->\$" "$readme" || {
    echo "README.md has no $name markers: table not copied" >&2
    return 0
  }
  local new
  new=$(mktemp)
  awk -v start="<!-- $name:start -->" -v end="<!-- $name:end -->" -v table="$file" '
    $0 == start { print; skip = 1; first = 1
      while ((getline line < table) > 0) {
        if (first && line ~ /^# /) { first = 0; getline line < table; if (line != "") print line; continue }
        first = 0; print line
      }
      next }
    $0 == end { skip = 0 }
    !skip { print }
  ' "$readme" >"$new" && cat "$new" >"$readme"
  rm -f "$new"
  echo "README.md: the $name table replaced from $file"
}
