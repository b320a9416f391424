#!/usr/bin/env bash
# Initial scan and enqueue of 100,000 files in 1,000 directories, against `find ROOT -type f`
# and `find ROOT -type f -printf '%s %T@ %p\n'` (a stat per file, as the scan needs) on the
# same (warm) tree, and the daemon's peak RSS with all of them queued.
# The finds and the daemon alternate, ROUNDS times; figures are medians with the range. With
# A set, that build's scan runs in every round too (before/after, side by side).
#
#   benches/scan.sh                                   # this tree's release build, 5 rounds
#   A=/tmp/cambackup-before benches/scan.sh           # and an older build alongside
#   DIRS=100 PER_DIR=100 ROUNDS=3 benches/scan.sh
#   TREE=/mnt/card COLD='cmd' benches/scan.sh       # an existing tree (a mounted card: see
#       # benches/card.sh), and a shell command run before each timed run (e.g. a remount)
#
# Prints one line per figure; docs/PERFORMANCE.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-1000}
PER_DIR=${PER_DIR:-100}
ROUNDS=${ROUNDS:-5}
if [ -z "${B:-}" ]; then
  cargo build --release --quiet --bin cambackup
  B=$PWD/target/release/cambackup
fi
T=$(mktemp -d)
PID=
trap 'if [ -n "$PID" ]; then kill $PID 2>/dev/null || true; fi; [ -n "${KEEP:-}" ] || rm -rf "$T"' EXIT
CARD=${TREE:-$T/card}
[ -n "${TREE:-}" ] || python3 - "$T/card" "$DIRS" "$PER_DIR" <<'PY'
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
mkdir -p "$T/sys" "$T/proc"
cat > "$T/c.toml" <<TOML
[device]
type = "bench"
serial = "B1"
[media]
root = "$CARD"
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
files=$(find "$CARD" -type f | wc -l) # and it warms the cache for all

ms_of() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }

# Starts `bin` (keeping the state dir when $2 is "keep"), waits for the scan's log line, and
# prints "took_ms walk_ms write_ms queued VmHWM_kB cpu_ms start_ms watch_ms" (cpu_ms: the
# daemon's user + system CPU from its start to the log line, the watch of every directory
# included; start_ms: from the daemon's first log line to the scan's, by their timestamps: what
# the user waits for the queue to be complete, the inotify watches set up first included;
# watch_ms: the watch setup's own log line, 0 for a build without it).
daemon_scan() {
  local bin=$1
  if [ "${2:-}" != keep ]; then rm -rf "$T/state"; fi
  mkdir -p "$T/state"
  rm -f "$T/ctl.sock"
  : >"$T/log" # before the start, so the wait below never reads the previous run's log
  CAMBACKUP_LOG=info "$bin" daemon --config "$T/c.toml" 2>"$T/log" &
  PID=$!
  # Seldom: the times are the log's, and each look is a process beside the scan.
  for _ in $(seq 1 150); do grep -q "scanned the card" "$T/log" && break; sleep 0.2; done
  local line
  line=$(grep -m1 "scanned the card" "$T/log")
  local cpu
  cpu=$(sed -E 's/.*\) //' /proc/$PID/stat | awk -v t="$(getconf CLK_TCK)" '{print ($12 + $13) * 1000 / t}')
  sleep 1
  local hwm
  hwm=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
  local t0 t1 start watch
  t0=$(date -d "$(head -1 "$T/log" | cut -d' ' -f1)" +%s%N)
  t1=$(date -d "$(cut -d' ' -f1 <<<"$line")" +%s%N)
  start=$(( (t1 - t0) / 1000000 ))
  watch=$( (grep -m1 "watching the card" "$T/log" || true) | (grep -o "took_ms=[0-9]*" || true) | cut -d= -f2)
  kill -TERM $PID
  wait $PID || true
  PID=
  echo "$(sed -E 's/.*took_ms=([0-9]+).*/\1/' <<<"$line") $(sed -E 's/.*walk_ms=([0-9]+).*/\1/' <<<"$line") \
$(sed -E 's/.*write_ms=([0-9]+).*/\1/' <<<"$line") $(sed -E 's/.*queued=([0-9]+).*/\1/' <<<"$line") $hwm $cpu \
$start ${watch:-0}"
}

cold() { [ -z "${COLD:-}" ] || eval "$COLD"; }
for _ in $(seq 1 "$ROUNDS"); do
  cold
  ms_of find "$CARD" -type f >>"$T/find"
  cold
  ms_of find "$CARD" -type f -printf '%s %T@ %p\n' >>"$T/findstat"
  if [ -n "${A:-}" ]; then cold; daemon_scan "$A" >>"$T/scanA"; fi
  cold
  daemon_scan "$B" >>"$T/scanB"
  # A second start: the queue is full, the scan finds nothing new (the restart case).
  cold
  daemon_scan "$B" keep >>"$T/rescanB"
done

[ -z "${KEEP:-}" ] || echo "kept $T"
python3 - "$T" "$files" "$(find "$CARD" -mindepth 2 -maxdepth 2 -type d | wc -l)" "${A:-}" "$B" <<'PY'
import statistics, sys
t, files, dirs, a, b = sys.argv[1:6]
def col(name, i):
    try:
        return [int(l.split()[i]) for l in open(f"{t}/{name}")]
    except FileNotFoundError:
        return None
def fig(v):
    return f"{statistics.median(v):.0f} ms (range {min(v)}-{max(v)})"
find, fstat = col("find", 0), col("findstat", 0)
print(f"files:                      {files} in {dirs} directories, {len(find)} rounds")
print(f"find -type f:               {fig(find)}")
print(f"find -printf size,mtime:    {fig(fstat)}")
for label, name, binary in [("A", "scanA", a), ("B", "scanB", b)]:
    took = col(name, 0)
    if took is None:
        continue
    m = statistics.median(took)
    print(f"{label} initial scan + enqueue:   {fig(took)}: {m / statistics.median(find):.2f}x find, "
          f"{m / statistics.median(fstat):.2f}x find-with-stat; walk {fig(col(name, 1))}, "
          f"write {fig(col(name, 2))}; CPU {fig(col(name, 5))}; {col(name, 3)[0]} queued; peak RSS "
          f"{max(col(name, 4)) / 1024:.1f} MiB  [{binary}]")
    start = col(name, 6)
    print(f"{label} from start to queued:     {fig(start)}: "
          f"{statistics.median(start) / statistics.median(fstat):.2f}x find-with-stat; of which the "
          f"watch setup {fig(col(name, 7))}")
re = col("rescanB", 0)
print(f"B rescan, all known:        {fig(re)}: {statistics.median(re) / statistics.median(fstat):.2f}x "
      f"find-with-stat; from start {fig(col('rescanB', 6))}; peak RSS "
      f"{max(col('rescanB', 4)) / 1024:.1f} MiB")
PY
