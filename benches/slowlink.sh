#!/usr/bin/env bash
# A slow, distant link (issue 14, goal 3): how full the daemon keeps it, with fixed and with
# rate-sized chunks, against curl sending the file as one PATCH over the same link.
#
#   sudo benches/slowlink.sh                       # 20 and 100 Mbit/s, 80 ms RTT, 256 MiB
#   RATES="100" RTT_MS=80 SIZE_MIB=64 CLIENTS="auto" benches/slowlink.sh
#   RATES="100 400" CLIENTS=auto CHECKSUM="on off" ROUNDS=3 benches/slowlink.sh   # goal 2 on a link
#
# Needs root (ip netns, tc). The camera is a network namespace of its own whose only link is a
# veth named wlan0 (198.18.0.0/15 addresses), its egress capped by `tc tbf` at the link rate.
# In the camera's namespace a delay line (benches/delayline.py) listens on loopback and holds
# every byte RTT/2 in each direction, without capping the rate; the daemon's endpoint is that
# loopback port (plain http stays loopback-only, as the config demands). The delay line's
# upstream leaves through wlan0 to socat in the root namespace, which hands it to the testkit
# receiver (release, storing on tmpfs, offering checksums, relative upload URLs).
#
#   daemon ─lo─► delay line ─wlan0 (tbf)─► veth ─► socat ─lo─► tus-receiver
#
# Per client: the time from the receiver seeing the creation to it holding the last byte, and
# the bytes the tbf on wlan0 sent meanwhile (its own counter: Ethernet, IP and TCP headers
# included, as it meters them). "wire" is those bytes per second as a share of the link rate; "idle" is the time
# the link could have carried more, per PATCH: (time - bytes / rate) / PATCHes. Clients:
# curl (one PATCH), fixed8 (chunk_sizing "fixed", 8 MiB: the daemon before issue 14), auto
# (the default settings). CHECKSUM="on off" runs each client against a receiver offering the
# checksum extension and one started with --no-checksum (each behind its own socat and delay
# line, over the same wlan0), alternating, ROUNDS times; "cpu" is the daemon's utime+stime from
# its start to the last byte per GiB sent, "busy" its CPU, the receiver's and the delay line's as a share of the
# upload's time (a process near 100 % would be CPU-bound, not link-bound).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "slowlink.sh needs root (ip netns, tc)" >&2; exit 2; }
RATES=${RATES:-"20 100"}
RTT_MS=${RTT_MS:-80}
SIZE_MIB=${SIZE_MIB:-256}
CLIENTS=${CLIENTS:-"curl fixed8 auto"}
CHECKSUM=${CHECKSUM:-"on"}
ROUNDS=${ROUNDS:-1}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet --workspace --bin cambackup --bin tus-receiver
BIN=${CAMBACKUP_BIN:-$TARGET/release/cambackup}
RECV=$TARGET/release/tus-receiver
TOKEN=bench-token
NS=cbslow$$
HOSTIF=cbs$$
NET=198.18.$((200 + $$ % 50))
T=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  ip link del "$HOSTIF" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

ip netns add "$NS"
ip link add "$HOSTIF" type veth peer name wlan0 netns "$NS"
ip addr add "$NET.1/30" dev "$HOSTIF"
ip link set "$HOSTIF" up
ip -n "$NS" addr add "$NET.2/30" dev wlan0
ip -n "$NS" link set wlan0 up
ip -n "$NS" link set lo up
ip -n "$NS" route add default via "$NET.1"

declare -A URLS RPIDS LPIDS UPLOADS
# A receiver ($1: on or off) behind socat (port $2) and a delay line of its own.
start_receiver() {
  local flags=(--token "$TOKEN" --relative-location)
  [ "$1" = off ] && flags+=(--no-checksum)
  TMPDIR=/dev/shm "$RECV" "${flags[@]}" >"$T/recv.$1.out" 2>"$T/recv.$1.err" &
  PIDS+=($!)
  RPIDS[$1]=$!
  for _ in $(seq 1 100); do grep -q '^url ' "$T/recv.$1.out" && break; sleep 0.05; done
  local rport
  rport=$(awk '/^url /{print $2}' "$T/recv.$1.out" | sed 's|.*:\([0-9]*\)/.*|\1|')
  socat "TCP-LISTEN:$2,bind=$NET.1,fork,reuseaddr" "TCP:127.0.0.1:$rport" &
  PIDS+=($!)
  ip netns exec "$NS" python3 benches/delayline.py 127.0.0.1:0 "$NET.1:$2" "$((RTT_MS / 2))" >"$T/delay.$1.out" &
  PIDS+=($!)
  LPIDS[$1]=$!
  for _ in $(seq 1 100); do grep -q '^port ' "$T/delay.$1.out" && break; sleep 0.05; done
  URLS[$1]=http://127.0.0.1:$(awk '/^port /{print $2}' "$T/delay.$1.out")/files/
  UPLOADS[$1]=0
}
SPORT=$((20000 + $$ % 20000))
for ck in $CHECKSUM; do
  start_receiver "$ck" "$SPORT"
  SPORT=$((SPORT + 1))
done

# A charging, on-Wi-Fi, cool camera (the files testkit/src/camera.rs writes).
mkdir -p "$T/card/DCIM/100MEDIA" "$T/proc/net" "$T/run"
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
echo "0.10 0.05 0.01 1/123 4567" >"$T/proc/loadavg"
FILE=$T/card/DCIM/100MEDIA/BIG_0001.MP4
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$FILE"
touch -d '1 hour ago' "$FILE"
BYTES=$(stat -c %s "$FILE")

# Bytes the tbf let through: what it meters (every segment's headers counted, also for GSO
# packets, which wlan0's tx_bytes counts with one set of headers).
tx() { ip netns exec "$NS" tc -s qdisc show dev wlan0 | awk '/Sent/ {print $2; exit}'; }
api() { curl -sS --unix-socket "$T/run/ctl.sock" -H 'content-type: application/json' "$@"; }
# The receiver's timestamp (ns) of the n-th ($2) "$1" line, waiting up to 20 min.
nth_line() {
  for _ in $(seq 1 24000); do
    line=$({ grep "^$1 " "$T/recv.$CK.out" || true; } | sed -n "${2}p")
    [ -n "$line" ] && { echo "${line##* }"; return; }
    sleep 0.05
  done
  echo "receiver: no '$1' line number $2" >&2
  exit 1
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_curl() {
  local loc code
  loc=$(ip netns exec "$NS" curl -sS -i -X POST -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $BYTES" \
    -H "Authorization: Bearer $TOKEN" "$URL" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  ip netns exec "$NS" curl -sS -X PATCH -T "$FILE" -H 'Expect:' -H 'Tus-Resumable: 1.0.0' \
    -H 'Upload-Offset: 0' -H 'Content-Type: application/offset+octet-stream' \
    -H "Authorization: Bearer $TOKEN" -o /dev/null -w '%{http_code}' "${URL%/files/}$loc" >"$T/code"
  [ "$(cat "$T/code")" = 204 ] || { echo "curl PATCH answered $(cat "$T/code")" >&2; exit 1; }
  echo 1 >"$T/patches"
}

run_daemon() {
  rm -rf "$T/state"
  mkdir -m 700 "$T/state"
  cat >"$T/c.toml" <<TOML
[device]
type = "bench"
serial = "B1"
[media]
root = "$T/card"
settle_secs = 1
[cloud]
endpoint = "$URL"
$1
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
  CAMBACKUP_LOG=info,cambackup::upload::transfer=trace ip netns exec "$NS" \
    "$BIN" daemon --config "$T/c.toml" 2>"$T/daemon.log" &
  local dpid=$!
  echo 0 >"$T/cpu"
  PIDS+=("$dpid")
  for _ in $(seq 1 200); do api http://localhost/v1/health >/dev/null 2>&1 && break; sleep 0.05; done
  api -X PUT http://localhost/v1/account -d '{"user_id":"u","token":"'"$TOKEN"'"}' >/dev/null
  for _ in $(seq 1 200); do api 'http://localhost/v1/queue' | grep -q '"pending"' && break; sleep 0.05; done
  sleep 2
  api -X PATCH http://localhost/v1/settings -d '{"auto_upload":true}' >/dev/null
  nth_line complete "${UPLOADS[$CK]}" >/dev/null
  ticks "$dpid" >"$T/cpu"
  kill -TERM "$dpid"
  wait "$dpid" || true
  grep -c 'chunk accepted' "$T/daemon.log" >"$T/patches" || true
  grep 'chunk accepted' "$T/daemon.log" | sed 's/.*len=\([0-9]*\).*/\1/' | tr '\n' ' ' >"$T/lens"
}

echo "file: $BYTES bytes; RTT ${RTT_MS} ms (delay line); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for rate in $RATES; do
  ip netns exec "$NS" tc qdisc replace dev wlan0 root tbf rate "${rate}mbit" burst 64kb latency 200ms
  for round in $(seq 1 "$ROUNDS"); do
  for client in $CLIENTS; do
  for CK in $CHECKSUM; do
    URL=${URLS[$CK]}
    UPLOADS[$CK]=$((${UPLOADS[$CK]} + 1))
    : >"$T/lens"
    echo - >"$T/cpu"
    tx0=$(tx)
    rc0=$(ticks "${RPIDS[$CK]}")
    lc0=$(ticks "${LPIDS[$CK]}")
    case $client in
      curl) run_curl ;;
      fixed8) run_daemon 'chunk_sizing = "fixed"
chunk_size_mib = 8' ;;
      auto) run_daemon "" ;;
      *) echo "unknown client $client" >&2; exit 2 ;;
    esac
    t1=$(nth_line complete "${UPLOADS[$CK]}")
    tx1=$(tx)
    rc1=$(ticks "${RPIDS[$CK]}")
    lc1=$(ticks "${LPIDS[$CK]}")
    t0=$(nth_line created "${UPLOADS[$CK]}")
    python3 - "$client" "$rate" "$BYTES" "$t0" "$t1" "$tx0" "$tx1" "$(cat "$T/patches")" "$(cat "$T/lens")" \
      "$CK" "$round" "$(cat "$T/cpu")" "$((rc1 - rc0))" "$((lc1 - lc0))" <<'PY'
import sys
client, rate, size, t0, t1, tx0, tx1, n = sys.argv[1:9]
lens = sys.argv[9].split()
ck, rnd, cpu, rcpu, lcpu = sys.argv[10:15]
secs = (int(t1) - int(t0)) / 1e9
wire = int(tx1) - int(tx0)
link = int(rate) * 1e6 / 8
idle = secs - wire / link
mib = [int(l) / 2**20 for l in lens]
shape = f"chunks MiB {mib[0]:.0f},{mib[1]:.0f},..,{max(mib):.0f}" if len(mib) > 2 else ""
dcpu = "" if cpu == "-" else (f"cpu {int(cpu) / 100 / (int(size) / 2**30):5.2f} s/GiB "
                              f"busy {int(cpu) / 100 / secs * 100:3.0f} % ")
print(f"{rate:>3} Mbit/s r{rnd} {client:7} ck={ck:3} time {secs:7.2f} s  "
      f"{int(size) / secs / 2**20:6.2f} MiB/s  wire {wire * 8 / secs / 1e6:6.2f} Mbit/s "
      f"= {wire / secs / link * 100:5.1f} % of the link  goodput {int(size) / secs / link * 100:5.1f} %  "
      f"{dcpu}recv busy {int(rcpu) / 100 / secs * 100:3.0f} %  delay line busy {int(lcpu) / 100 / secs * 100:3.0f} %  "
      f"PATCHes {n:>3}  idle per PATCH {idle / max(int(n), 1) * 1000:5.0f} ms  {shape}", flush=True)
PY
  done
  done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
