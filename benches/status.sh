#!/usr/bin/env bash
# How long `GET /v1/status` takes with 100,000 items queued (it counts the queue per state),
# against `GET /v1/health` (no database work) on the same daemon, alternating, 40 each.
#
#   benches/status.sh            # 1000 dirs x 100 files
#   DIRS=100 PER_DIR=100 benches/status.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-1000}
PER_DIR=${PER_DIR:-100}
CALLS=${CALLS:-40}
BIN=${CAMBACKUP_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --quiet --bin cambackup
  BIN=$PWD/target/release/cambackup
fi
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
        fn = os.path.join(p, f"IMG_{f:04d}.JPG")
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
"$BIN" daemon --config "$T/c.toml" 2>"$T/log" &
PID=$!
for _ in $(seq 1 600); do grep -q "scanned the card" "$T/log" && break; sleep 0.1; done
sleep 1
call() { curl -s -o /dev/null -w '%{time_total}\n' --unix-socket "$T/ctl.sock" "http://localhost$1"; }
st=() he=()
for _ in $(seq 1 "$CALLS"); do st+=("$(call /v1/status)"); he+=("$(call /v1/health)"); done
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1*1000} END {printf "median %.2f ms (min %.2f, max %.2f)", a[int((NR+1)/2)], a[1], a[NR]}'; }
echo "items queued:   $(curl -s --unix-socket "$T/ctl.sock" http://localhost/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["pending"])')"
echo "GET /v1/status: $(stats "${st[@]}")"
echo "GET /v1/health: $(stats "${he[@]}")"
