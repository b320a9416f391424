#!/usr/bin/env bash
# The card a camera really has (issue 23): the scan and the upload's read path on an exFAT card
# image mounted through exfat-fuse (as testkit/src/card.rs mounts it; no kernel module).
#
#   benches/card.sh                  # all three parts below
#   PARTS=read benches/card.sh       # one part: scan, upload, read
#   DIRS=100 PER_DIR=100 ROUNDS=3 benches/card.sh
#   FS=fat32 PARTS=scan benches/card.sh  # the scan on a FAT32 card served by testkit's driver
#                                        # (testkit/src/cardfs.rs, as the tests mount FAT32)
#
# 1. scan: benches/scan.sh on a tree of DIRS x PER_DIR files made through the mount: the first
#    scan against `find -printf` with a stat per file on the same mount, and a restart with
#    nothing new. Twice: warm (the mount as the tree's writing left it), and cold (the card
#    unmounted and mounted again before each timed run: what a card put in gives).
# 2. upload: benches/upload.sh (1 GiB, the daemon against curl) with the card on exFAT, and the
#    same on the host's filesystem: what reading through FUSE costs the daemon per GiB.
# 3. read: whether `preadv2(RWF_NOWAIT)` (the daemon's page-cache-only read, src/upload/source.rs)
#    is refused on the FUSE mount, and what a blocking read of 1 GiB in the daemon's 128 KiB
#    blocks costs there: `dd bs=128k` cold (after a remount) and warm, wall and CPU (dd's and
#    the driver's), against the host's filesystem. ROUNDS rounds, alternating; medians, ranges.
#
# Run as root with exfatprogs and exfat-fuse (.ci/run installs them). docs/PERFORMANCE.md
# records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=${PARTS:-"scan upload read"}
FS=${FS:-exfat}
DIRS=${DIRS:-1000}
PER_DIR=${PER_DIR:-100}
ROUNDS=${ROUNDS:-5}
T=$(mktemp -d /tmp/cambackup-card.XXXXXX)
LOOP=
cleanup() {
  mountpoint -q "$T/card" && umount "$T/card" || true
  for _ in $(seq 1 100); do pgrep -f "cardfs .*$T/card" >/dev/null || break; sleep 0.1; done
  # The driver writes the image until it exits: wait for it before detaching its device.
  for _ in $(seq 1 100); do pgrep -f "mount.exfat-fuse .*$T/card" >/dev/null || break; sleep 0.1; done
  [ -z "$LOOP" ] || losetup -d "$LOOP" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

if [ "$FS" = fat32 ]; then
  [[ "$PARTS" == scan ]] || { echo "card.sh: FS=fat32 has the scan part only (PARTS=scan)" >&2; exit 1; }
  command -v mkfs.vfat >/dev/null || { echo "card.sh: mkfs.vfat missing (apt-get install dosfstools)" >&2; exit 1; }
  cargo build --release --quiet -p testkit --bin cardfs
  CARDFS=$PWD/target/release/cardfs
  # 2 GiB, 4 KiB clusters (the exFAT card's), the driver in the background until unmounted.
  truncate -s 2G "$T/card.img"
  mkfs.vfat -F 32 -s 8 -n BENCH "$T/card.img" >/dev/null
  mkdir -p "$T/card"
  cat >"$T/remount" <<SH
#!/bin/sh
mountpoint -q "$T/card" && umount "$T/card"
while pgrep -f "cardfs .*$T/card" >/dev/null; do sleep 0.05; done
setsid "$CARDFS" "$T/card.img" "$T/card" </dev/null >/dev/null 2>&1 &
while ! mountpoint -q "$T/card"; do sleep 0.02; done
SH
else
for tool in mkfs.exfat mount.exfat-fuse losetup fusermount; do
  command -v "$tool" >/dev/null || { echo "card.sh: $tool missing (apt-get install exfatprogs exfat-fuse fuse)" >&2; exit 1; }
done

# The card: 2 GiB, 4 KiB clusters (a 100,000-file tree of tiny files fits; a 1 GiB file too).
truncate -s 2G "$T/card.img"
mkfs.exfat -c 4K -L BENCH "$T/card.img" >/dev/null
LOOP=$(losetup -f --show "$T/card.img")
mkdir -p "$T/card"
# Unmounts the card, waits for the driver to exit (it writes the image until then), mounts it
# again: the kernel's caches of the mount (dentries, attributes, pages) and the driver's own
# are gone; the host's page cache of the image stays (a real card would be read from flash).
cat >"$T/remount" <<SH
#!/bin/sh
mountpoint -q "$T/card" && fusermount -u "$T/card"
while pgrep -f "mount.exfat-fuse .*$T/card" >/dev/null; do sleep 0.05; done
mount.exfat-fuse "$LOOP" "$T/card" 2>/dev/null
SH
fi
chmod +x "$T/remount"
remount() { "$T/remount"; }
remount
if [ "$FS" = fat32 ]; then
  echo "card: FAT32 (testkit's cardfs: fatfs 0.3 + fuser, release build), 4 KiB clusters; kernel $(uname -r); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
else
  echo "card: exFAT (exfat-fuse $(mount.exfat-fuse -V 2>&1 | head -1 | awk '{print $3}')), 4 KiB clusters; kernel $(uname -r); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
fi

cargo build --release --quiet --bin cambackup
B=$PWD/target/release/cambackup

median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.0f} (range {min(v):.0f}-{max(v):.0f})")' "$@"; }

if [[ " $PARTS " == *" scan "* ]]; then
  echo
  echo "== scan: $((DIRS * PER_DIR)) files in $DIRS directories, made through the mount"
  s=$(date +%s%N)
  python3 - "$T/card" "$DIRS" "$PER_DIR" <<'PY'
import os, sys, time
root, dirs, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
old = time.time() - 3600
for d in range(dirs):
    p = os.path.join(root, "DCIM", f"{100 + d:04d}MEDIA")
    os.makedirs(p)
    for f in range(per):
        fn = os.path.join(p, f"IMG_{f:04d}.JPG" if f % 10 else f"VID_{f:04d}.MP4")
        with open(fn, "wb") as fh:
            fh.write(b"x" * (f % 7))
        # Both stamps: FUSE 2 drops a utimens that sets the mtime alone.
        os.utime(fn, (old, old))
PY
  echo "tree written through the $FS driver in $(( ($(date +%s%N) - s) / 1000000 )) ms"
  echo "-- warm (the same mount throughout)"
  TREE=$T/card B=$B ROUNDS=$ROUNDS benches/scan.sh
  echo "-- cold (unmounted and mounted again before each timed run)"
  TREE=$T/card B=$B ROUNDS=$ROUNDS COLD="$T/remount" benches/scan.sh
fi

if [[ " $PARTS " == *" upload "* ]]; then
  echo
  echo "== upload: 1 GiB, the daemon against curl, from the exFAT card and from the host's filesystem"
  for fs in exfat host; do
    echo "-- $fs"
    if [ "$fs" = exfat ]; then
      # A directory of its own as the media root: the scan part's tree is not the daemon's.
      CARD_DIR=$T/card/upload RUNS=$ROUNDS benches/upload.sh
    else
      RUNS=$ROUNDS benches/upload.sh
    fi
  done
fi

if [[ " $PARTS " == *" read "* ]]; then
  echo
  echo "== read: 1 GiB in 128 KiB blocks"
  head -c 1G /dev/urandom >"$T/host.bin"
  cp "$T/host.bin" "$T/card/read.bin"
  python3 - "$T/card/read.bin" "$T/host.bin" <<'PY'
import errno, os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(128 * 1024)
    for when in ("first", "after a blocking read of the whole file"):
        counts = {}
        for off in range(0, 64 << 20, len(buf)):
            try:
                n = os.preadv(fd, [buf], off, os.RWF_NOWAIT)
                k = "read" if n == len(buf) else "short"
            except OSError as e:
                k = errno.errorcode[e.errno]
            counts[k] = counts.get(k, 0) + 1
        print(f"preadv2(RWF_NOWAIT) {path.split('/')[-1]:9} {when:40}: {counts}")
        while os.read(fd, 1 << 20):
            pass
        os.lseek(fd, 0, 0)
    os.close(fd)
PY
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  driver() { pgrep -f "mount.exfat-fuse .*$T/card" | head -1; }
  # One dd of FILE: prints "wall_ms dd_cpu_ms driver_cpu_ms".
  read_once() {
    local file=$1 d c0=0 c1=0 s e
    d=$(driver)
    [[ $file == "$T/card/"* ]] && c0=$(ticks "$d")
    s=$(date +%s%N)
    /usr/bin/time -f '%U %S' -o "$T/time" dd if="$file" of=/dev/null bs=128k 2>/dev/null
    e=$(date +%s%N)
    [[ $file == "$T/card/"* ]] && c1=$(ticks "$d")
    echo "$(( (e - s) / 1000000 )) $(awk '{printf "%d", ($1 + $2) * 1000}' "$T/time") $(( (c1 - c0) * 10 ))"
  }
  : >"$T/r"
  for _ in $(seq 1 "$ROUNDS"); do
    remount
    echo "exfat-cold $(read_once "$T/card/read.bin")" >>"$T/r"
    echo "exfat-warm $(read_once "$T/card/read.bin")" >>"$T/r"
    # The host file's pages out of the cache (that file's only: the machine is shared).
    python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$T/host.bin"
    echo "host-cold $(read_once "$T/host.bin")" >>"$T/r"
    echo "host-warm $(read_once "$T/host.bin")" >>"$T/r"
  done
  for k in exfat-cold exfat-warm host-cold host-warm; do
    printf '%-11s wall %s ms/GiB; dd CPU %s ms; driver CPU %s ms\n' "$k" \
      "$(median $(awk -v k=$k '$1==k {print $2}' "$T/r"))" \
      "$(median $(awk -v k=$k '$1==k {print $3}' "$T/r"))" \
      "$(median $(awk -v k=$k '$1==k {print $4}' "$T/r"))"
  done
fi
