#!/usr/bin/env bash
# Initial scan and enqueue of 100,000 files in 1,000 directories, against `find ROOT -type f`
# on the same (warm) tree, and the daemon's peak RSS with all of them queued.
#
#   benches/scan.sh            # 1000 dirs x 100 files
#   DIRS=100 PER_DIR=100 benches/scan.sh
#
# Prints one line per figure; docs/PERFORMANCE.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-1000}
PER_DIR=${PER_DIR:-100}
cargo build --release --quiet --bin cambackup
BIN=$PWD/target/release/cambackup
T=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$T"' EXIT
PID=
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
        os.utime(fn, (old, old))
PY
mkdir -p "$T/sys" "$T/proc" "$T/state"
cat > "$T/c.toml" <<TOML
[device]
type = "bench"
serial = "B1"
[media]
root = "$T/card"
[cloud]
endpoint = "http://127.0.0.1:9/files/"
[conditions]
sysfs = "$T/sys"
proc = "$T/proc"
[control]
socket = "$T/ctl.sock"
[state]
dir = "$T/state"
TOML
files=$((DIRS * PER_DIR))
find "$T/card" -type f >/dev/null   # warm the cache for both
best_find=999999
for _ in 1 2 3; do
  s=$(date +%s%N); find "$T/card" -type f >/dev/null; e=$(date +%s%N)
  ms=$(( (e - s) / 1000000 )); [ "$ms" -lt "$best_find" ] && best_find=$ms
done
# find with the same stat per file the scan needs (size and mtime are a file's identity).
best_stat=999999
for _ in 1 2 3; do
  s=$(date +%s%N); find "$T/card" -type f -printf '%s %T@ %p\n' >/dev/null; e=$(date +%s%N)
  ms=$(( (e - s) / 1000000 )); [ "$ms" -lt "$best_stat" ] && best_stat=$ms
done
CAMBACKUP_LOG=info "$BIN" daemon --config "$T/c.toml" 2>"$T/log" &
PID=$!
for _ in $(seq 1 600); do grep -q "scanned the card" "$T/log" && break; sleep 0.1; done
scan_ms=$(grep -m1 "scanned the card" "$T/log" | sed -E 's/.*took_ms=([0-9]+).*/\1/')
queued=$(grep -m1 "scanned the card" "$T/log" | sed -E 's/.*queued=([0-9]+).*/\1/')
sleep 1
hwm=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
rss=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
kill -TERM $PID; wait $PID || true; PID=
# A second start: the queue is full, the scan finds nothing new (the restart case).
"$BIN" daemon --config "$T/c.toml" 2>"$T/log2" &
PID=$!
for _ in $(seq 1 600); do grep -q "scanned the card" "$T/log2" && break; sleep 0.1; done
rescan_ms=$(grep -m1 "scanned the card" "$T/log2" | sed -E 's/.*took_ms=([0-9]+).*/\1/')
sleep 1
hwm2=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
kill -TERM $PID; wait $PID || true; PID=
echo "files:                      $files in $DIRS directories"
echo "find -type f (best of 3):   ${best_find} ms"
echo "find -printf size,mtime:    ${best_stat} ms (best of 3)"
echo "initial scan + enqueue:     ${scan_ms} ms (${queued} queued)  ratio $(python3 -c "print(round($scan_ms/max($best_find,1),2))")x find, $(python3 -c "print(round($scan_ms/max($best_stat,1),2))")x find-with-stat"
echo "rescan, all known:          ${rescan_ms} ms  ratio $(python3 -c "print(round($rescan_ms/max($best_find,1),2))")x"
echo "peak RSS, first start:      $((hwm / 1024)) MiB (VmHWM ${hwm} kB; VmRSS after ${rss} kB)"
echo "peak RSS, restart w/ queue: $((hwm2 / 1024)) MiB (VmHWM ${hwm2} kB)"
