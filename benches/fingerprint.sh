#!/usr/bin/env bash
# What a file's content fingerprint (src/card.rs) costs: every file of a card fingerprinted
# once, on a real exFAT card image mounted through exfat-fuse (a loop device), with the page
# cache dropped first (cold: the card's own reads) and again warm; and on tmpfs for the CPU
# alone. Files: PHOTOS of 8 MiB, VIDEOS of 100 MiB, SMALL of 300 KiB (hashed whole).
#
#   benches/fingerprint.sh                    # needs root, /dev/fuse, exfat-fuse, exfatprogs
#   PHOTOS=200 VIDEOS=5 benches/fingerprint.sh
#
# Prints one line per run; docs/ARCHITECTURE.md ("A file's identity") records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=${PHOTOS:-60}
VIDEOS=${VIDEOS:-3}
SMALL=${SMALL:-100}
export CARGO_TARGET_DIR=$PWD/target/fingerprint-bench
(cd benches/fingerprint && cargo build --release --offline --quiet)
BIN=$CARGO_TARGET_DIR/release/fingerprint-bench
T=$(mktemp -d)
LOOP=
cleanup() {
  if mountpoint -q "$T/card"; then umount "$T/card" || umount -l "$T/card"; fi
  if [ -n "$LOOP" ]; then losetup -d "$LOOP" || true; fi
  if mountpoint -q "$T/tmpfs"; then umount "$T/tmpfs"; fi
  rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/card" "$T/tmpfs"
truncate -s $(( (PHOTOS * 8 + VIDEOS * 100 + SMALL / 3 + 64) ))M "$T/card.img"
mkfs.exfat -L BENCH "$T/card.img" >/dev/null
LOOP=$(losetup -f --show "$T/card.img")
mount.exfat-fuse "$LOOP" "$T/card" >/dev/null
mount -t tmpfs -o size=$(( PHOTOS * 8 + VIDEOS * 100 + SMALL / 3 + 64 ))m tmpfs "$T/tmpfs"
fill() {
  mkdir -p "$1/DCIM/100MEDIA"
  for i in $(seq 1 "$PHOTOS"); do head -c $((8 << 20)) /dev/urandom >"$1/DCIM/100MEDIA/IMG_$i.JPG"; done
  for i in $(seq 1 "$VIDEOS"); do head -c $((100 << 20)) /dev/urandom >"$1/DCIM/100MEDIA/VID_$i.MP4"; done
  for i in $(seq 1 "$SMALL"); do head -c $((300 << 10)) /dev/urandom >"$1/DCIM/100MEDIA/SML_$i.JPG"; done
}
fill "$T/card"
fill "$T/tmpfs"
sync
echo 3 >/proc/sys/vm/drop_caches
echo "exfat-fuse cold: $("$BIN" "$T/card")"
echo "exfat-fuse warm: $("$BIN" "$T/card")"
echo "tmpfs:           $("$BIN" "$T/tmpfs")"
# For scale: reading every byte once (what an upload reads), cold, on the same card.
echo 3 >/proc/sys/vm/drop_caches
start=$(date +%s.%N)
find "$T/card" -type f -exec cat {} + >/dev/null
echo "exfat-fuse cold, every byte read: $(echo "$(date +%s.%N) - $start" | bc) s"
