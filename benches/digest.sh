#!/usr/bin/env bash
# What the camera's digest costs (issue 28, `free_space_verify = "receipt"`): the SHA-256 of
# every byte sent, per GiB, on this machine's CPU (in memory: the card's reads are the
# read-back's figure, docs/PERFORMANCE.md), with sha2's SHA instructions where the CPU has
# them (SHA-NI on x86_64, ARMv8 SHA) and with the portable code forced, the figure to reason
# from for camera cores without SHA instructions (Cortex-A7; Cortex-A53 without the crypto
# extension). Beside it the SHA-1 per chunk that `length` computes instead.
#
#   benches/digest.sh              # 1 GiB, 7 runs each
#   MIB=256 RUNS=11 benches/digest.sh
#
# docs/PERFORMANCE.md ("Receipts: the camera's digest") records a run and the ARM estimate.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-1024}
RUNS=${RUNS:-7}
export CARGO_TARGET_DIR=$PWD/target/digest-bench
(cd benches/digest && cargo build --release --offline --quiet)
cp "$CARGO_TARGET_DIR/release/digest-bench" "$CARGO_TARGET_DIR/digest-bench-native"
(cd benches/digest && cargo build --release --offline --quiet --features soft)
echo "# $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# with the CPU's SHA instructions (as shipped):"
"$CARGO_TARGET_DIR/digest-bench-native" "$MIB" "$RUNS"
echo "# portable code (sha2 force-soft; sha1 unchanged):"
"$CARGO_TARGET_DIR/release/digest-bench" "$MIB" "$RUNS"
