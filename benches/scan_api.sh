#!/usr/bin/env bash
# How fast the control API answers while the daemon's first scan of 100,000 new files runs:
# the daemon starts on an empty state dir, and from the moment its socket is up until the log
# says "scanned the card" a client asks GET /v1/status, /v1/queue, /v1/settings and
# /v1/history in turn (what the app polls), one fresh connection each, GAP_MS apart.
# Two builds side by side: A and B alternate, ROUNDS runs each, on the same (warm) tree.
#
#   benches/scan_api.sh                                  # this tree's release build only
#   A=/tmp/cambackup-before B=target/release/cambackup benches/scan_api.sh
#   DIRS=100 PER_DIR=100 ROUNDS=5 GAP_MS=10 benches/scan_api.sh
#
# Prints, per build: the scan's own time, calls answered during it, and the median, 95th
# percentile and max latency over all rounds (and the max of each round).
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-1000}
PER_DIR=${PER_DIR:-100}
ROUNDS=${ROUNDS:-3}
GAP_MS=${GAP_MS:-10}
if [ -z "${B:-}" ]; then
  cargo build --release --quiet --bin cambackup
  B=$PWD/target/release/cambackup
fi
T=$(mktemp -d)
PID=
trap 'if [ -n "$PID" ]; then kill $PID 2>/dev/null || true; fi; rm -rf "$T"' EXIT
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
mkdir -p "$T/sys" "$T/proc"
find "$T/card" -type f >/dev/null # warm the cache

# One run: a fresh state dir, the daemon, the poller until the scan's log line. Appends the
# latencies (ms) to $T/lat.<label> and the scan's took_ms to $T/scan.<label>.
run() {
  local label=$1 bin=$2
  rm -rf "$T/state" "$T/ctl.sock"
  mkdir -p "$T/state"
  cat >"$T/c.toml" <<TOML
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
  : >"$T/log" # before the start, so the poller never reads the previous run's log
  CAMBACKUP_LOG=info "$bin" daemon --config "$T/c.toml" 2>"$T/log" &
  PID=$!
  python3 - "$T/ctl.sock" "$T/log" "$GAP_MS" >>"$T/lat.$label" <<'PY'
import os, socket, sys, time
sock, log, gap = sys.argv[1], sys.argv[2], int(sys.argv[3]) / 1000
paths = ["/v1/status", "/v1/queue", "/v1/settings", "/v1/history"]
deadline = time.monotonic() + 60
while not os.path.exists(sock):
    if time.monotonic() > deadline:
        sys.exit("the daemon's socket never appeared")
    time.sleep(0.001)
def call(path):
    t = time.monotonic()
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    ms = (time.monotonic() - t) * 1000
    if not data.startswith(b"HTTP/1.1 200"):
        sys.exit(f"{path}: {data[:200]!r}")
    return ms
i = 0
while time.monotonic() < deadline:
    with open(log) as f:
        if "scanned the card" in f.read():
            break
    print(f"{paths[i % len(paths)]} {call(paths[i % len(paths)]):.2f}")
    i += 1
    time.sleep(gap)
PY
  grep -m1 "scanned the card" "$T/log" | sed -E 's/.*took_ms=([0-9]+).*/\1/' >>"$T/scan.$label"
  echo "round" >>"$T/lat.$label"
  kill -TERM $PID
  wait $PID || true
  PID=
}

for _ in $(seq 1 "$ROUNDS"); do
  if [ -n "${A:-}" ]; then run A "$A"; fi
  run B "$B"
done

echo "files: $((DIRS * PER_DIR)) in $DIRS directories, $ROUNDS rounds, calls ${GAP_MS} ms apart"
for label in A B; do
  [ -f "$T/lat.$label" ] || continue
  bin=$([ $label = A ] && echo "$A" || echo "$B")
  python3 - "$label" "$bin" "$T/lat.$label" "$T/scan.$label" <<'PY'
import statistics, sys
label, bin, lat, scan = sys.argv[1:5]
rounds, cur = [], []
for line in open(lat):
    if line.strip() == "round":
        rounds.append(cur); cur = []
    else:
        cur.append(float(line.split()[1]))
all_ = sorted(x for r in rounds for x in r)
scans = [int(x) for x in open(scan).read().split()]
if not all_:
    sys.exit(f"{label}: no call was answered during the scan")
p95 = all_[min(len(all_) - 1, int(len(all_) * 0.95))]
print(f"{label} ({bin}): scan took {statistics.median(scans)} ms (runs {scans}); "
      f"{len(all_)} calls during it: median {statistics.median(all_):.1f} ms, "
      f"p95 {p95:.1f} ms, max {all_[-1]:.1f} ms (max per round "
      f"{[round(max(r), 1) if r else None for r in rounds]})")
PY
done
