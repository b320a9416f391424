#!/usr/bin/env bash
# What TLS bulk encryption costs per GiB with each TLS 1.3 suite's AEAD (issue 29, part 1), with
# ring as the daemon uses it (benches/cipher/: 16 KiB records, the daemon's release profile):
# natively, and the armv7 build under qemu-arm as a Cortex-A7 (no AES instructions, NEON) and
# as `-cpu max` (ARMv8 AES + PMULL in 32-bit mode). Emulated times are only indicative: qemu
# translates each instruction, NEON and the crypto instructions at different costs than a
# core; the ratio between suites on the same emulated CPU is the figure to read.
#
#   benches/cipher.sh                 # 1 GiB natively (5 runs), 64 MiB under qemu (3 runs)
#   MIB=256 QEMU_MIB=32 benches/cipher.sh
#
# docs/PERFORMANCE.md ("Over TLS (issue 29, part 1)") records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-1024}
RUNS=${RUNS:-5}
QEMU_MIB=${QEMU_MIB:-64}
QEMU_RUNS=${QEMU_RUNS:-3}
export CARGO_TARGET_DIR=$PWD/target/cipher-bench
(cd benches/cipher && cargo build --release --offline --quiet)
echo "# $(uname -m) natively, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg), ${MIB} MiB x ${RUNS}"
"$CARGO_TARGET_DIR/release/cipher-bench" "$MIB" "$RUNS"
if command -v qemu-arm >/dev/null && [ -d /usr/arm-linux-gnueabihf ]; then
  (cd benches/cipher && cargo build --release --offline --quiet --target armv7-unknown-linux-gnueabihf)
  for cpu in cortex-a7 max; do
    echo "# armv7 under qemu-arm -cpu $cpu (emulated: indicative only), ${QEMU_MIB} MiB x ${QEMU_RUNS}, per GiB"
    qemu-arm -cpu "$cpu" -L /usr/arm-linux-gnueabihf \
      "$CARGO_TARGET_DIR/armv7-unknown-linux-gnueabihf/release/cipher-bench" "$QEMU_MIB" "$QEMU_RUNS"
  done
fi
