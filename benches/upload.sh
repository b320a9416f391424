#!/usr/bin/env bash
# Upload of one large file over loopback (issue 3): the real daemon against `curl` sending the
# same bytes as ONE tus PATCH to the same server (the testkit receiver, its own process, storing
# on tmpfs). For each run: wall time, throughput, CPU seconds of the client process, its peak RSS,
# and the receiver's CPU (the same work for both clients, so not part of the ratios).
#
#   benches/upload.sh                      # 1 GiB, the default chunk settings, 3 runs
#   SIZE_MIB=256 CHUNKS="default 8" RUNS=1 benches/upload.sh
#       # CHUNKS: "default" (chunk_sizing "auto" up to 64 MiB), or N for chunk_sizing "fixed"
#       # with chunk_size_mib N
#   CHECKSUM="on off" benches/upload.sh    # also with a receiver that does not offer checksums
#   FREE_SPACE="off on" benches/upload.sh  # also with freeing space configured (length
#       # verification): the daemon then records a digest of every chunk it sends
#   CARD_DIR=/mnt/card benches/upload.sh   # the file on a mounted card (benches/card.sh)
#   CAMBACKUP_BIN=path PERF_OUT=/tmp/p RUNS=1 CHUNKS=8 benches/upload.sh
#       # another daemon binary (e.g. one built with debug line tables), and `perf record -g`
#       # of the daemon during each upload to /tmp/p.CHUNK.CHECKSUM.data
#
# Wall time for cambackup is from the consent (PATCH /v1/settings auto_upload=true) to the
# receiver holding every byte; "transfer" is from the receiver seeing the creation to the same
# end. For curl: from launching the PATCH to the receiver holding every byte. CPU is
# utime+stime of the process (from /proc/PID/stat around the upload for the daemon, from
# /usr/bin/time for curl), in clock ticks of 10 ms. Prints one line per run and a median summary.
# docs/PERFORMANCE.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1024}
CHUNKS=${CHUNKS:-"default"}
RUNS=${RUNS:-3}
CHECKSUM=${CHECKSUM:-"on"}
FREE_SPACE=${FREE_SPACE:-"off"}
FS=off
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet --workspace --bin cambackup --bin tus-receiver
BIN=${CAMBACKUP_BIN:-$TARGET/release/cambackup}
PERF_OUT=${PERF_OUT:-}
RECV=$TARGET/release/tus-receiver
TOKEN=bench-token
T=$(mktemp -d)
RPID= DPID=
cleanup() {
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null || true
  [ -n "$RPID" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null || true
  [ -z "${CARD_DIR:-}" ] || rm -f "${FILE:-/nonexistent}"
  rm -rf "$T"
}
trap cleanup EXIT

# A charging, on-Wi-Fi, cool camera (the files testkit/src/camera.rs writes).
CARD=${CARD_DIR:-$T/card}
mkdir -p "$CARD/DCIM/100MEDIA" "$T/proc/net" "$T/run"
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

FILE=$CARD/DCIM/100MEDIA/BIG_0001.MP4
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$FILE"
touch -d '1 hour ago' "$FILE" # both stamps: FUSE 2 drops a utimens of the mtime alone
BYTES=$(stat -c %s "$FILE")
cat "$FILE" >/dev/null # in the page cache for every run alike

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
now_ns() { date +%s%N; }

# Starts a receiver (extra args: --no-checksum) with its uploads on tmpfs; sets RPID and URL.
start_receiver() {
  TMPDIR=/dev/shm "$RECV" --token "$TOKEN" "$@" >"$T/recv.out" 2>"$T/recv.err" &
  RPID=$!
  for _ in $(seq 1 100); do grep -q '^url ' "$T/recv.out" && break; sleep 0.05; done
  URL=$(awk '/^url /{print $2}' "$T/recv.out")
  [ -n "$URL" ] || { cat "$T/recv.err" >&2; exit 1; }
}
stop_receiver() { kill "$RPID"; wait "$RPID" || true; RPID=; }
# The receiver's timestamp (ns) of its "$1" line (created/complete), waiting up to 5 min.
wait_line() {
  for _ in $(seq 1 1200); do
    line=$(grep -m1 "^$1 " "$T/recv.out" || true)
    [ -n "$line" ] && { echo "${line##* }"; return; }
    # Seldom: the time is the receiver's, and each look costs a process on the two cores the
    # upload needs (benches/tus-server.sh once lost a quarter of the daemon's rate that way).
    sleep 0.25
  done
  echo "receiver: no '$1' line" >&2
  exit 1
}
api() { curl -sS --unix-socket "$T/run/ctl.sock" -H 'content-type: application/json' "$@"; }

# One cambackup run: chunk size $1 MiB, receiver args after. Prints one result line.
run_cambackup() {
  local chunk=$1
  shift
  start_receiver "$@"
  rm -rf "$T/state"
  mkdir -m 700 "$T/state"
  local keys=
  [ "$chunk" = default ] || keys="chunk_sizing = \"fixed\"
chunk_size_mib = $chunk"
  cat >"$T/c.toml" <<TOML
[device]
type = "bench"
serial = "B1"
[media]
root = "$CARD"
settle_secs = 1
$([ "$FS" = on ] && printf 'free_space_below_percent = 1\nfree_space_verify = "length"\n')
[cloud]
endpoint = "$URL"
$keys
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
  "$BIN" daemon --config "$T/c.toml" 2>"$T/daemon.log" &
  DPID=$!
  for _ in $(seq 1 200); do api http://localhost/v1/health >/dev/null 2>&1 && break; sleep 0.05; done
  api -X PUT http://localhost/v1/account -d '{"user_id":"u","token":"'"$TOKEN"'"}' >/dev/null
  for _ in $(seq 1 200); do api 'http://localhost/v1/queue' | grep -q '"pending"' && break; sleep 0.05; done
  sleep 2 # past idle_secs since the daemon's own start, so consent is the only thing missing
  local c0 t0 t1 tc c1 hwm
  c0=$(ticks "$DPID")
  local perf=
  if [ -n "$PERF_OUT" ]; then
    local ck=on
    case "$*" in *--no-checksum*) ck=off ;; esac
    perf record -q -F 999 -g -o "$PERF_OUT.$chunk.$ck.data" -p "$DPID" 2>/dev/null &
    perf=$!
    sleep 1
  fi
  t0=$(now_ns)
  api -X PATCH http://localhost/v1/settings -d '{"auto_upload":true}' >/dev/null
  tc=$(wait_line created)
  t1=$(wait_line complete)
  [ -n "$perf" ] && { kill -INT "$perf"; wait "$perf" || true; }
  c1=$(ticks "$DPID")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$DPID/status")
  local rc
  rc=$(ticks "$RPID")
  kill -TERM "$DPID"
  wait "$DPID" || true
  DPID=
  stop_receiver
  grep -q "complete .* $BYTES " "$T/recv.out" || { echo "incomplete upload" >&2; exit 1; }
  python3 - "$chunk" "$*" "$BYTES" "$t0" "$tc" "$t1" "$c0" "$c1" "$hwm" "$rc" "$FS" <<'PY'
import sys
chunk, rargs, size, t0, tc, t1, c0, c1, hwm, rc, fs = sys.argv[1:]
size = int(size); wall = (int(t1) - int(t0)) / 1e9; xfer = (int(t1) - int(tc)) / 1e9
cpu = (int(c1) - int(c0)) / 100
ck = "off" if "--no-checksum" in rargs else "on"
free = " free=on" if fs == "on" else ""
print(f"cambackup chunk={chunk:>7} checksum={ck:3}{free} wall={wall:6.2f}s transfer={xfer:6.2f}s "
      f"tput={size / wall / 2**20:7.1f}MiB/s cpu={cpu:5.2f}s hwm={int(hwm) / 1024:5.1f}MiB "
      f"recv_cpu={int(rc) / 100:5.2f}s")
PY
}

# One curl run: create with POST, then one streamed PATCH (-T reads the file as it sends).
run_curl() {
  start_receiver --no-checksum
  local loc t0 t1 rc code
  loc=$(curl -sS -i -X POST -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $BYTES" \
    -H "Authorization: Bearer $TOKEN" "$URL" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  case $loc in /*) loc=${URL%%/files/*}$loc ;; esac
  t0=$(now_ns)
  code=$(/usr/bin/time -f '%e %U %S %M' -o "$T/time" curl -sS -X PATCH -T "$FILE" -H 'Expect:' \
    -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' \
    -H 'Content-Type: application/offset+octet-stream' -H "Authorization: Bearer $TOKEN" \
    -o /dev/null -w '%{http_code}' "$loc")
  t1=$(wait_line complete)
  rc=$(ticks "$RPID")
  stop_receiver
  [ "$code" = 204 ] || { echo "curl PATCH answered $code" >&2; exit 1; }
  python3 - "$BYTES" "$t0" "$t1" "$(cat "$T/time")" "$rc" <<'PY'
import sys
size, t0, t1, tv, rc = sys.argv[1:]
size = int(size); wall = (int(t1) - int(t0)) / 1e9
e, u, s, m = tv.split()
print(f"curl      one PATCH                 wall={wall:6.2f}s transfer={wall:6.2f}s "
      f"tput={size / wall / 2**20:7.1f}MiB/s cpu={float(u) + float(s):5.2f}s hwm={int(m) / 1024:5.1f}MiB "
      f"recv_cpu={int(rc) / 100:5.2f}s")
PY
}

echo "file: $BYTES bytes; $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$T/results"
for run in $(seq 1 "$RUNS"); do
  run_curl | tee -a "$T/results"
  for FS in $FREE_SPACE; do
    for ck in $CHECKSUM; do
      for chunk in $CHUNKS; do
        if [ "$ck" = off ]; then run_cambackup "$chunk" --no-checksum; else run_cambackup "$chunk"; fi |
          tee -a "$T/results"
      done
    done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "--- median of $RUNS runs; ratios against curl's medians"
python3 - "$T/results" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    key = " ".join(line.split("wall=")[0].split())
    vals = {k: float(v) for k, v in re.findall(r"(\w+)=\s*([\d.]+)", line[line.index("wall="):])}
    rows.setdefault(key, []).append(vals)
med = {k: {f: statistics.median(r[f] for r in rs) for f in rs[0]} for k, rs in rows.items()}
base = next(v for k, v in med.items() if k.startswith("curl"))
for k, m in med.items():
    print(f"{k:38} wall {m['wall']:6.2f}s  transfer {m['transfer']:6.2f}s  {m['tput']:7.1f} MiB/s  "
          f"cpu {m['cpu']:5.2f}s  rss {m['hwm']:5.1f} MiB  recv cpu {m['recv_cpu']:5.2f}s  |  "
          f"tput x{m['tput'] / base['tput']:.2f}  cpu x{m['cpu'] / max(base['cpu'], 0.01):.2f}")
PY
