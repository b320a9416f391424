#!/usr/bin/env bash
# Figures per architecture (issue 13; docs/PERFORMANCE.md "Per architecture" records a run):
# for x86_64 (native) and the ARM targets (under qemu-user, the way CI tests them), the
# release binary's stripped size, time to READY=1 and peak RSS with FILES files queued, and
# peak RSS during an upload of SIZE_MIB MiB to the test receiver.
#
#   benches/arch.sh                                   # x86_64 aarch64 armv7; 10,000 files; 1 GiB
#   ARCHS="armv7" FILES=2000 SIZE_MIB=256 benches/arch.sh
#
# Needs the cross toolchains and qemu-user (.ci/cross.sh installs them). Builds what is missing
# with the real release profile. Prints a Markdown table.
#
# What the figures mean under qemu-user: "peak RSS" is the qemu process's VmHWM, the guest's
# memory plus the emulator's own (its translated-code cache, its heap, the host libraries);
# "guest RSS" leaves the emulator's out (see guest_kib: exact for armv7, an upper estimate for
# aarch64), but is sampled, not a peak. Times under
# qemu are the emulator's, not a SoC's: READY and the upload's wall time are reported to show the
# tests' margins, not as the device's speed.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHS=${ARCHS:-"x86_64 aarch64 armv7"}
FILES=${FILES:-10000}
SIZE_MIB=${SIZE_MIB:-1024}
TOKEN=bench-token
T=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

triple() {
  case $1 in
    x86_64) echo x86_64-unknown-linux-gnu ;;
    aarch64) echo aarch64-unknown-linux-gnu ;;
    armv7) echo armv7-unknown-linux-gnueabihf ;;
    *) echo "unknown arch $1 (x86_64, aarch64, armv7)" >&2; exit 2 ;;
  esac
}
runner() {
  case $1 in
    x86_64) echo "" ;;
    aarch64) echo "qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armv7) echo "qemu-arm -L /usr/arm-linux-gnueabihf" ;;
  esac
}
binary() {
  if [ "$1" = x86_64 ]; then
    cargo build --release --locked --quiet --bin cambackup
    echo "$PWD/target/release/cambackup"
  else
    cargo build --release --locked --quiet --bin cambackup --target "$(triple "$1")"
    echo "$PWD/target/$(triple "$1")/release/cambackup"
  fi
}
cargo build --release --locked --quiet -p testkit --bin tus-receiver
RECV=$PWD/target/release/tus-receiver

hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# The guest's own resident memory now (KiB), from /proc/PID/smaps: natively, all of it; under
# qemu-user, without qemu's binary and host libraries, its heap and stacks, and its translated
# code buffer (the one rwx mapping). For a 32-bit guest that is exact: the guest lives below
# 4 GiB and qemu above. For a 64-bit guest it is an estimate: qemu's own anonymous mappings
# (thread stacks, malloc arenas) cannot be told from the guest's and are counted.
guest_kib() {
  python3 - "$1" "$2" <<'PY'
import re, sys
pid, arch = sys.argv[1], sys.argv[2]
total, cur = 0, None
for line in open(f"/proc/{pid}/smaps"):
    m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
    if m:
        start, end, perms, name = int(m[1], 16), int(m[2], 16), m[3], m[4]
        if arch == "x86_64":
            cur = True
        elif arch == "armv7":
            cur = end <= 1 << 32
        else:
            host = name.startswith(("/usr/bin/qemu", "/usr/lib/x86_64-linux-gnu", "/lib/x86_64", "[")) \
                and not name.startswith("/usr/aarch64")
            cur = not host and perms != "rwxp"
    elif line.startswith("Rss:") and cur:
        total += int(line.split()[1])
print(total)
PY
}
api() { curl -sS --unix-socket "$T/run/ctl.sock" -H 'content-type: application/json' "$@"; }

# A charging, on-Wi-Fi, cool camera (as benches/upload.sh).
mkdir -p "$T/proc/net" "$T/run" "$T/sys/class/power_supply/AC" "$T/sys/class/net/wlan0/wireless"
echo Mains >"$T/sys/class/power_supply/AC/type"
echo 1 >"$T/sys/class/power_supply/AC/online"
echo up >"$T/sys/class/net/wlan0/operstate"
printf 'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n' >"$T/proc/net/route"
printf 'wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n' >>"$T/proc/net/route"
echo "0.10 0.05 0.01 1/123 4567" >"$T/proc/loadavg"

# The cards: FILES small files in directories of 100; one SIZE_MIB file; an empty one.
python3 - "$T/many" "$FILES" <<'PY'
import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
old = time.time() - 3600
for i in range(n):
    d = os.path.join(root, "DCIM", f"{100 + i // 100:04d}MEDIA")
    os.makedirs(d, exist_ok=True)
    fn = os.path.join(d, f"IMG_{i % 100:04d}.JPG")
    with open(fn, "wb") as fh:
        fh.write(b"x" * (1 + i % 7))
    os.utime(fn, (old, old))
PY
mkdir -p "$T/big/DCIM/100MEDIA" "$T/empty"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$T/big/DCIM/100MEDIA/BIG_0001.MP4"
touch -d '1 hour ago' "$T/big/DCIM/100MEDIA/BIG_0001.MP4"

# config CARD ENDPOINT: a fresh state dir each time.
config() {
  rm -rf "$T/state" && mkdir -m 700 "$T/state"
  cat >"$T/c.toml" <<TOML
[device]
type = "bench"
serial = "B1"
[media]
root = "$T/$1"
settle_secs = 1
[cloud]
endpoint = "$2"
[conditions]
sysfs = "$T/sys"
proc = "$T/proc"
recording_flag = "$T/run/recording"
idle_secs = 1
hold_down_secs = 0
[control]
socket = "$T/run/ctl.sock"
[state]
dir = "$T/state"
TOML
}

# start ARCH LOG: runs the daemon (behind the arch's runner) with a notify socket; sets DPID.
start() {
  rm -f "$T/notify.sock" "$T/notify.log"
  python3 - "$T/notify.sock" >"$T/notify.log" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    msg = s.recv(4096).decode()
    print(f"{time.time_ns()} {msg.strip()}", flush=True)
PY
  PIDS+=($!)
  for _ in $(seq 100); do [ -S "$T/notify.sock" ] && break; sleep 0.02; done
  T0=$(date +%s%N)
  # shellcheck disable=SC2086 # the runner is a command and its arguments
  NOTIFY_SOCKET="$T/notify.sock" CAMBACKUP_LOG=info $(runner "$1") "$BIN" daemon --config "$T/c.toml" 2>"$T/$2" &
  DPID=$!
  PIDS+=($DPID)
}
stop() { kill -TERM "$DPID"; wait "$DPID" || true; }
wait_log() { for _ in $(seq 3000); do grep -q "$1" "$T/$2" && return; sleep 0.1; done; echo "no '$1' in $2" >&2; exit 1; }
ready_ms() {
  for _ in $(seq 3000); do grep -q READY=1 "$T/notify.log" && break; sleep 0.01; done
  echo $(( ($(awk '/READY=1/ {print $1; exit}' "$T/notify.log") - T0) / 1000000 ))
}

printf '| | %s |\n' "$(sed 's/ / | /g' <<<"$ARCHS")"
printf '|---|%s\n' "$(for _ in $ARCHS; do printf -- '---|'; done)"
declare -A R
for a in $ARCHS; do
  BIN=$(binary "$a")
  R[size,$a]=$(python3 -c "print(f'{$(stat -c %s "$BIN")/2**20:.2f} MiB')")

  # Idle with an empty card: the emulator's own share of the RSS figures.
  config empty http://127.0.0.1:9/files/
  start "$a" idle.log
  R[ready0,$a]="$(ready_ms) ms"
  sleep 3
  R[idle,$a]="$(( $(hwm_kib "$DPID") / 1024 )) MiB"
  R[gidle,$a]="$(( $(guest_kib "$DPID" "$a") / 1024 )) MiB"
  stop

  # FILES queued: the first start scans and queues them; the second starts with them queued.
  config many http://127.0.0.1:9/files/
  start "$a" scan1.log
  wait_log "scanned the card" scan1.log
  sleep 1
  R[scan,$a]="$(( $(hwm_kib "$DPID") / 1024 )) MiB"
  R[gscan,$a]="$(( $(guest_kib "$DPID" "$a") / 1024 )) MiB"
  stop
  start "$a" scan2.log
  R[ready,$a]="$(ready_ms) ms"
  wait_log "scanned the card" scan2.log
  sleep 1
  R[queued,$a]="$(( $(hwm_kib "$DPID") / 1024 )) MiB"
  R[gqueued,$a]="$(( $(guest_kib "$DPID" "$a") / 1024 )) MiB"
  R[db,$a]="$(du -sk "$T/state" | cut -f1) KiB"
  stop

  # One SIZE_MIB upload (8 MiB chunks with checksums: the defaults).
  TMPDIR=/dev/shm "$RECV" --token "$TOKEN" >"$T/recv.out" 2>"$T/recv.err" &
  RPID=$!
  PIDS+=($RPID)
  for _ in $(seq 100); do grep -q '^url ' "$T/recv.out" && break; sleep 0.05; done
  config big "$(awk '/^url /{print $2}' "$T/recv.out")"
  start "$a" upload.log
  for _ in $(seq 600); do api http://localhost/v1/health >/dev/null 2>&1 && break; sleep 0.05; done
  api http://localhost/v1/health >/dev/null || { cat "$T/upload.log" >&2; exit 1; }
  api -X PUT http://localhost/v1/account -d '{"user_id":"u","token":"'"$TOKEN"'"}' >/dev/null
  sleep 2
  t0=$(date +%s%N)
  api -X PATCH http://localhost/v1/settings -d '{"auto_upload":true,"require_charging":false,"require_idle":false}' >/dev/null
  gmax=0
  for _ in $(seq 3600); do
    grep -q '^complete ' "$T/recv.out" && break
    g=$(guest_kib "$DPID" "$a")
    [ "$g" -gt "$gmax" ] && gmax=$g
    sleep 0.5
  done
  grep -q '^complete ' "$T/recv.out" || { echo "$a: the upload did not complete" >&2; exit 1; }
  t1=$(awk '/^complete / {print $4}' "$T/recv.out")
  R[upload,$a]="$(( $(hwm_kib "$DPID") / 1024 )) MiB"
  R[gupload,$a]="$(( gmax / 1024 )) MiB"
  R[uptime,$a]="$(python3 -c "w=($t1-$t0)/1e9; print(f'{w:.0f} s ({$SIZE_MIB/w:.0f} MiB/s)')")"
  stop
  kill "$RPID"; wait "$RPID" || true
done

line() { printf '| %s |' "$1"; for a in $ARCHS; do printf ' %s |' "${R[$2,$a]}"; done; echo; }
line "binary, stripped (release profile)" size
line "peak RSS (VmHWM), idle, empty card" idle
line "guest RSS, idle, empty card" gidle
line "time to READY=1, empty card" ready0
line "peak RSS, first start: scan and queue $FILES files" scan
line "guest RSS after that scan" gscan
line "time to READY=1, restart with $FILES queued" ready
line "peak RSS, restart with $FILES queued, rescan done" queued
line "guest RSS after that rescan" gqueued
line "state dir (SQLite + WAL) with $FILES queued" db
line "peak RSS, upload of $SIZE_MIB MiB (8 MiB chunks, checksums)" upload
line "guest RSS during that upload (max of 0.5 s samples)" gupload
line "wall time of that upload (emulated: not the SoC's)" uptime
echo
echo "$(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(qemu-arm --version | head -1)"
