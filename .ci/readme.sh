#!/usr/bin/env bash
# Runs the README's commands as written (issue 25: they failed a new user): every ```sh block
# of README.md, in order, from the repository's root, in one shell, each block stopping at its
# first failure. Blocks other CI steps already run, or that need an installed daemon, are
# skipped by their first line (listed below with the step that covers them). `sudo` is the
# command itself when CI runs as root. The README's CLI samples are kept true by
# tests/it/readme.rs, not here (their output depends on the run).
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
    case "$1" in
    "npm ci --prefix interop && cargo test --workspace") echo "the tests step" ;;
    "curl --unix-socket /run/cambackup/control.sock"*) echo "needs the installed daemon (.ci/package.sh talks to its socket)" ;;
    *) return 1 ;;
    esac
}

# Where `sudo install ... /usr/local/bin/` puts cambackup, so the next blocks find it on PATH.
export PATH="/usr/local/bin:$PATH"
sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else command sudo "$@"; fi; }
export -f sudo

python3 - README.md >"${TMPDIR:-/tmp}/readme-blocks.$$" <<'PY'
import json, sys
blocks, cur = [], None
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    if cur is None and line.strip() == "```sh":
        cur = []
    elif cur is not None and line.strip() == "```":
        blocks.append("\n".join(cur)); cur = None
    elif cur is not None:
        cur.append(line)
print(json.dumps(blocks))
PY
blocks=${TMPDIR:-/tmp}/readme-blocks.$$
trap 'rm -f "$blocks"' EXIT
n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$blocks")
ran=0
for i in $(seq 0 $((n - 1))); do
    block=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[int(sys.argv[2])])' "$blocks" "$i")
    first=$(head -n 1 <<<"$block")
    if why=$(skip "$first"); then
        echo "readme: skipped \`$first\` ($why)"
        continue
    fi
    echo "readme: \$ ${block//$'\n'/$'\n'readme: \$ }"
    bash -euo pipefail -c "$block" || { echo "readme: this README block failed:"; echo "$block"; exit 1; }
    ran=$((ran + 1))
done
echo "readme: $ran blocks ran as written"
