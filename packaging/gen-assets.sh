#!/usr/bin/env bash
# Writes the .deb's generated assets into packaging/generated/ (not in git): the man pages
# (cambackup.1 and one per subcommand, which its SEE ALSO names) and the shell completions,
# made by `cambackup man DIR` and `cambackup completions SHELL` from the
# CLI's own definition (clap_mangen, clap_complete), so they cannot drift from the parser.
# `cargo deb` needs them (Cargo.toml's [package.metadata.deb] assets): .ci/package.sh and
# .ci/cross.sh run this first. They do not depend on the target: a host build makes them for
# every architecture. Usage: packaging/gen-assets.sh [CAMBACKUP_BINARY] (default: a debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
    cargo build --quiet --locked --bin cambackup
    bin=${CARGO_TARGET_DIR:-target}/debug/cambackup
fi
out=packaging/generated
rm -rf "$out"
mkdir -p "$out/man"
"$bin" man "$out/man"
gzip -9n "$out"/man/*.1
"$bin" completions bash >"$out/cambackup.bash"
"$bin" completions zsh >"$out/_cambackup"
"$bin" completions fish >"$out/cambackup.fish"
for f in "$out"/man/* "$out"/cambackup.bash "$out"/_cambackup "$out"/cambackup.fish; do [ -s "$f" ] || { echo "gen-assets: $f is empty" >&2; exit 1; }; done
