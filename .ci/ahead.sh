#!/usr/bin/env bash
# Builds ahead what CI's later steps need, at the lowest CPU and I/O priority, while the lint
# and the tests run: the x86_64 release binary and its generated assets (.ci/package.sh,
# .ci/readme.sh), the arm64 and armhf .debs (.ci/cross.sh), and the fuzz targets (the fuzz step).
#
# Why: on CI's 2 cores these builds took about 13 minutes one after the other at the end, while
# the end-to-end suite before them spends most of its 14 minutes waiting on daemons, sockets and
# timers with a core or more idle. At nice 19 (the scheduler's weight 15 against the tests'
# 1024) and the idle I/O class, the builds take only what the tests leave.
#
# Nothing depends on this having run: each later step still runs its own build command, which
# finds everything up to date (same commands, same flags, same target dirs), or builds it then.
# .ci/run waits for this before the first step that needs it, and prints this log.
#
# Needs the apt packages .ci/run's tools step installs (cross gcc and libc, dpkg-dev); apt is
# never run here, so it cannot race the foreground's.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
t0=$SECONDS
say() { echo "ahead: $* (+$((SECONDS - t0)) s)"; }

CARGO_DEB_VERSION=$(sed -n 's/^CARGO_DEB_VERSION=//p' .ci/package.sh)
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
    cargo install --quiet cargo-deb --locked --version "$CARGO_DEB_VERSION"
    say "cargo-deb $CARGO_DEB_VERSION installed"
fi

cargo build --quiet --release --locked --bin cambackup
say "x86_64 release binary"
packaging/gen-assets.sh target/release/cambackup
say "man pages and completions"

targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
rustup target add "${targets[@]}" >/dev/null 2>&1
for t in "${targets[@]}"; do
    cargo deb --locked --target "$t" >/dev/null
    say "$t .deb"
done

rustup toolchain install nightly --profile minimal >/dev/null 2>&1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
(cd fuzz && cargo +nightly fuzz build --sanitizer none --debug-assertions 2>&1 | tail -n 3)
say "fuzz targets"
