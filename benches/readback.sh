#!/usr/bin/env bash
# What the read-back before each deletion costs (issue 22 item 4): freeing space reads every
# file back from the card and hashes it (SHA-1, chunk by chunk) against what was sent, just
# before deleting it. The real daemon uploads FILES files of SIZE_MIB each to the testkit
# receiver (its own process, storing on tmpfs), then frees them all; the daemon's debug line
# "read back from the card" gives each read-back's bytes and time, and /proc gives the daemon's
# CPU over the pass.
#
#   sudo benches/readback.sh                 # 4 files of 256 MiB (1 GiB), both cards, 3 runs
#   FILES=2 SIZE_MIB=128 RUNS=1 CARDS=tmpfs sudo -E benches/readback.sh
#
# CARDS: "tmpfs" (the card in RAM: the hashing alone) and "ext4" (a loop-mounted ext4 image on
# the machine's disk, each file's and the image's pages dropped from the cache first with
# posix_fadvise, and the loop device's buffers flushed: a read from storage, as from a card).
# Needs root (mounts). docs/PERFORMANCE.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-4}
SIZE_MIB=${SIZE_MIB:-256}
RUNS=${RUNS:-3}
CARDS=${CARDS:-"tmpfs ext4"}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet --workspace --bin cambackup --bin tus-receiver
BIN=${CAMBACKUP_BIN:-$TARGET/release/cambackup}
RECV=$TARGET/release/tus-receiver
TOKEN=bench-token
T=$(mktemp -d)
RPID= DPID=
cleanup() {
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null || true
  [ -n "$RPID" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null || true
  mountpoint -q "$T/card" && umount "$T/card"
  rm -rf "$T"
}
trap cleanup EXIT

# A charging, on-Wi-Fi, cool camera (the files testkit/src/camera.rs writes).
mkdir -p "$T/card" "$T/proc/net" "$T/run"
mkdir -p "$T/sys/class/power_supply/AC" "$T/sys/class/power_supply/battery"
echo Mains >"$T/sys/class/power_supply/AC/type"
echo 1 >"$T/sys/class/power_supply/AC/online"
echo Battery >"$T/sys/class/power_supply/battery/type"
echo Charging >"$T/sys/class/power_supply/battery/status"
echo 80 >"$T/sys/class/power_supply/battery/capacity"
mkdir -p "$T/sys/class/net/wlan0/wireless" "$T/sys/class/thermal/thermal_zone0"
echo up >"$T/sys/class/net/wlan0/operstate"
echo 35000 >"$T/sys/class/thermal/thermal_zone0/temp"
printf 'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n' >"$T/proc/net/route"
printf 'wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n' >>"$T/proc/net/route"
printf 'wlan0\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0\n' >>"$T/proc/net/route"
echo "0.10 0.05 0.01 1/123 4567" >"$T/proc/loadavg"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
api() { curl -sS --unix-socket "$T/run/ctl.sock" -H 'content-type: application/json' "$@"; }

# Mounts the card ($1: tmpfs or ext4) just big enough for the files, so that it is low.
mount_card() {
  local mib=$((FILES * SIZE_MIB + FILES * SIZE_MIB / 8 + 16))
  case $1 in
    tmpfs) mount -t tmpfs -o "size=${mib}m" tmpfs "$T/card" ;;
    ext4)
      rm -f "$T/card.img"
      truncate -s "${mib}M" "$T/card.img"
      mkfs.ext4 -q -m 0 "$T/card.img"
      mount -o loop "$T/card.img" "$T/card"
      ;;
  esac
  mkdir -p "$T/card/DCIM/100MEDIA"
  for i in $(seq 1 "$FILES"); do
    head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$T/card/DCIM/100MEDIA/VID_000$i.MP4"
    touch -d '30 days ago' "$T/card/DCIM/100MEDIA/VID_000$i.MP4"
  done
  sync
}

# One run on card $1: upload, then free everything; prints one result line.
run() {
  local card=$1
  mount_card "$card"
  TMPDIR=/dev/shm "$RECV" --token "$TOKEN" >"$T/recv.out" 2>"$T/recv.err" &
  RPID=$!
  for _ in $(seq 1 100); do grep -q '^url ' "$T/recv.out" && break; sleep 0.05; done
  local url
  url=$(awk '/^url /{print $2}' "$T/recv.out")
  rm -rf "$T/state" "$T/run/ctl.sock"
  mkdir -m 700 "$T/state"
  cat >"$T/c.toml" <<TOML
[device]
type = "bench"
serial = "B1"
[media]
root = "$T/card"
settle_secs = 1
free_space_below_percent = 90
keep_days = 1
free_space_verify = "checksum"
[cloud]
endpoint = "$url"
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
  CAMBACKUP_LOG=info,cambackup::freeing=debug "$BIN" daemon --config "$T/c.toml" 2>"$T/daemon.log" &
  DPID=$!
  for _ in $(seq 1 600); do api http://localhost/v1/health >/dev/null 2>&1 && break; sleep 0.05; done
  api http://localhost/v1/health >/dev/null || { cat "$T/daemon.log" >&2; exit 1; }
  api -X PUT http://localhost/v1/account -d '{"user_id":"u","token":"'"$TOKEN"'"}' >/dev/null
  sleep 2
  api -X PATCH http://localhost/v1/settings -d '{"auto_upload":true}' >/dev/null
  for _ in $(seq 1 2400); do
    [ "$(grep -c '^complete ' "$T/recv.out" || true)" -ge "$FILES" ] && break
    sleep 0.25
  done
  [ "$(grep -c '^complete ' "$T/recv.out" || true)" -ge "$FILES" ] || { echo "uploads incomplete" >&2; exit 1; }
  sleep 1
  # From the card, not from the cache the upload left (ext4); tmpfs has no other copy.
  # The loop device reads through the image file, whose pages the host caches too.
  if [ "$card" = ext4 ]; then
    sync
    python3 - "$T/card/DCIM/100MEDIA" "$T/card.img" <<'PY'
import os, sys
paths = [os.path.join(sys.argv[1], n) for n in os.listdir(sys.argv[1])] + [sys.argv[2]]
for p in paths:
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
    blockdev --flushbufs "$(findmnt -n -o SOURCE "$T/card")"
  fi
  local c0 c1
  c0=$(ticks "$DPID")
  api -X PATCH http://localhost/v1/settings -d '{"free_space":"when_low"}' >/dev/null
  for _ in $(seq 1 2400); do
    [ -z "$(ls -A "$T/card/DCIM/100MEDIA")" ] && break
    sleep 0.1
  done
  [ -z "$(ls -A "$T/card/DCIM/100MEDIA")" ] || { echo "not all freed" >&2; tail "$T/daemon.log" >&2; exit 1; }
  c1=$(ticks "$DPID")
  kill -TERM "$DPID"
  wait "$DPID" || true
  DPID=
  kill "$RPID"
  wait "$RPID" || true
  RPID=
  umount "$T/card"
  python3 - "$card" "$c0" "$c1" "$T/daemon.log" <<'PY'
import re, sys
card, c0, c1, log = sys.argv[1:]
pat = re.compile(r'read back from the card.*?bytes=(\d+).*?elapsed_us=(\d+)|bytes=(\d+).*?elapsed_us=(\d+).*?read back from the card')
n = b = us = 0
for line in open(log, errors="replace"):
    line = re.sub(r'\x1b\[[0-9;]*m', '', line)
    if "read back from the card" not in line:
        continue
    bb = re.search(r'bytes=(\d+)', line); uu = re.search(r'elapsed_us=(\d+)', line)
    n += 1; b += int(bb.group(1)); us += int(uu.group(1))
if n == 0:
    sys.exit("no read-back line in the daemon's log")
gib = b / 2**30
cpu = (int(c1) - int(c0)) / 100
print(f"card={card:5} files={n} bytes={b} read_back={us / 1e6:6.2f}s "
      f"per_GiB={us / 1e6 / gib:6.2f}s rate={b / 2**20 / (us / 1e6):7.1f}MiB/s "
      f"daemon_cpu_during_pass={cpu:5.2f}s per_GiB_cpu={cpu / gib:5.2f}s")
PY
}

echo "files: $FILES x $SIZE_MIB MiB; $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$RUNS"); do
  for card in $CARDS; do
    run "$card"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
