#!/usr/bin/env bash
# cambackup against curl, uploading the same file to the same real tus server (issue 14, goals
# 1 and 5): @tus/server with @tus/file-store (interop/server.mjs, the interop peer; its store on
# tmpfs), started once and used by both clients in alternating rounds.
#
#   benches/tus-server.sh                        # 1 GiB, 5 rounds, the daemon's default settings
#   SIZE_MIB=256 RUNS=3 benches/tus-server.sh
#   EXTRA='chunk_sizing = "fixed"
#   chunk_size_mib = 8' benches/tus-server.sh     # other [cloud] chunk keys
#   CAMBACKUP_BIN=/tmp/old benches/tus-server.sh # another daemon binary
#   BINS="def=target/release/cambackup big=target/release/cambackup" \
#   EXTRA_big='chunk_size_mib = 1024' benches/tus-server.sh
#       # EXTRA_<label>: [cloud] keys for one of the BINS only (instead of EXTRA)
#   BINS="new=target/release/cambackup old=/tmp/old" benches/tus-server.sh
#       # several daemon binaries in the same rounds (before/after), each against curl
#   PERF_OUT=/tmp/p RUNS=1 benches/tus-server.sh # `perf record -g` of the daemon per round
#   STRACE_OUT=/tmp/s RUNS=1 benches/tus-server.sh # `strace -f` of both clients (slows both):
#       $STRACE_OUT.LABEL.ROUND, every write/read syscall with its size, for the write sizes
#   TLS=1 benches/tus-server.sh                  # over HTTPS (issue 29): see below
#   PIN=client benches/tus-server.sh             # each client on CPU 1 (taskset), node free;
#   PIN=all: node on CPU 0 too. Whether a client's threads taking node's core explain a gap
#   CURL_AA=1 benches/tus-server.sh              # a second curl ("curl_b") in the same rounds:
#       curl_b/curl is the bench's own floor, what two identical clients differ by
# Each round also prints node's threads' wait for a core (srv_wait_ms) and how often they were
# preempted (srv_preempted), and how often the client slept (cli_slept: voluntary context
# switches, each a wake-up) and was preempted (cli_preempted): /proc, and /usr/bin/time's %w %c
# for curl.
#
# TLS=1: openssl makes a CA and a certificate for 127.0.0.1 in the temp dir; node serves HTTPS
# (https.createServer, OpenSSL, same tus handler: interop/server.mjs with TUS_TLS_CERT/KEY);
# the daemon trusts the CA with `ca_file`, curl with `--cacert`. "hs" counts the TLS
# handshakes the server saw during each client's upload (1: one connection for every PATCH),
# "cipher" the suite it negotiated.
#
# Per round: curl sends the file as ONE PATCH (`curl -T`, streaming) to an upload made with
# `curl -X POST`; the daemon uploads the same file from its card after consent
# (`PATCH /v1/settings {"auto_upload": true}`). Throughput: file size over the time from
# launching curl / giving consent to the server finishing the last PATCH (its request log has
# each request's start `t` and duration `ms`). CPU: utime+stime of the client process
# (/proc/PID/stat around the upload for the daemon, /usr/bin/time for curl), 10 ms ticks.
# RSS: VmHWM of the client process, its whole life. "srv_cpu": the server's (node's) CPU over
# the same window, "srv_busy" that over the wall time, in cores: node's JavaScript runs on one
# thread, its file writes on libuv's, so it can pass 1.0; lower with one client than with the
# other at the same CPU per GiB means node waited more for that client. "gaps": the time between the end of one
# PATCH and the start of the next at the server (per round: median and max); "lead": from
# launching curl / giving consent to the first PATCH reaching the server. The summary gives
# each figure's median and range over the rounds, and the per-round ratios to curl.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-5}
EXTRA=${EXTRA:-}
TLS=${TLS:-}
PERF_OUT=${PERF_OUT:-}
STRACE_OUT=${STRACE_OUT:-}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet --bin cambackup
BINS=${BINS:-cambackup=${CAMBACKUP_BIN:-$TARGET/release/cambackup}}
[ -d interop/node_modules ] || npm ci --prefix interop --silent
TOKEN=bench-token
T=$(mktemp -d)
STORE=$(mktemp -d /dev/shm/tus-bench.XXXXXX)
SPID= DPID=
cleanup() {
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null || true
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null || true
  rm -rf "$T" "$STORE"
}
trap cleanup EXIT

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
cat "$FILE" >/dev/null # in the page cache for every run alike

: >"$T/server.log"
CURL_TLS=() CA_LINE=
if [ -n "$TLS" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$T/ca.key" -out "$T/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$T/srv.key" -out "$T/srv.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$T/ext"
  openssl x509 -req -in "$T/srv.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial \
    -days 2 -extfile "$T/ext" -out "$T/srv.pem" 2>/dev/null
  export TUS_TLS_CERT=$T/srv.pem TUS_TLS_KEY=$T/srv.key
  CURL_TLS=(--cacert "$T/ca.pem")
  CA_LINE="ca_file = \"$T/ca.pem\""
fi
SRV_PIN=() CLI_PIN=()
case "${PIN:-}" in
  client) CLI_PIN=(taskset -c 1) ;;
  all) SRV_PIN=(taskset -c 0) CLI_PIN=(taskset -c 1) ;;
  "") ;;
  *) echo "PIN must be client or all" >&2; exit 2 ;;
esac
TUS_TOKEN=$TOKEN "${SRV_PIN[@]}" node interop/server.mjs "$STORE" "$T/server.log" >"$T/server.out" 2>"$T/server.err" &
SPID=$!
for _ in $(seq 1 100); do grep -q '"url"' "$T/server.out" && break; sleep 0.1; done
URL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$T/server.out")

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Nanoseconds the threads of process $1 have waited on a run queue, ready but not running.
# (%.0f: mawk's %d stops at 2^31; `|| true`: a thread that exits between the glob and the read.)
rdelay() { { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{s += $2} END {printf "%.0f", s}'; }
# Context switches of the threads of process $1: "voluntary involuntary" (slept; preempted).
switches() { { cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {i += $2} END {printf "%.0f %.0f", v, i}'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
api() { curl -sS --unix-socket "$T/run/ctl.sock" -H 'content-type: application/json' "$@"; }

# Waits until the server finished the PATCH that completed the upload (log lines from line $1
# on); prints that round's PATCH timings: "END_MS PATCHES GAP_MEDIAN_MS GAP_MAX_MS FIRST_MS
# HANDSHAKES CIPHER" (handshakes during the round; the suite of the latest one, ever).
wait_done() {
  # A cheap look first: a Python start per look would take a good part of a core away from the
  # server while the daemon uploads (and only then: curl's run waits for curl), which is what
  # this script once measured as the daemon's slowness.
  local looks=0
  until tail -n "+$(($1 + 1))" "$T/server.log" | grep -q -E -e "\"upload-offset\":\"$BYTES\"" -e '"method":"PATCH".*"status":[45]'; do
    looks=$((looks + 1))
    [ "$looks" -lt 1200 ] || { echo "server: no complete upload" >&2; exit 1; }
    # The figures come from the server's log, not from when this look sees the end.
    sleep 0.25
  done
  for _ in $(seq 1 100); do
    out=$(python3 - "$T/server.log" "$1" "$BYTES" <<'PY'
import json, statistics, sys
log, start, size = sys.argv[1], int(sys.argv[2]), sys.argv[3]
every = [json.loads(l) for l in open(log).read().splitlines()]
lines = every[start:]
hs = [l for l in lines if "tls_handshake" in l]
# The client's connection may be older than the round (the daemon's from its start): the
# suite of the latest handshake.
cipher = ([l["cipher"] for l in every if "tls_handshake" in l] or ["-"])[-1]
p = [l for l in lines if l.get("method") == "PATCH"]
if not any(l["res"].get("upload-offset") == size for l in p):
    sys.exit(0)
bad = [l for l in p if l["status"] != 204]
if bad:
    print("ERROR", bad[0]); sys.exit(0)
gaps = [b["t"] - (a["t"] + a["ms"]) for a, b in zip(p, p[1:])] or [0]
print(p[-1]["t"] + p[-1]["ms"], len(p), statistics.median(gaps), max(gaps), p[0]["t"], len(hs), cipher)
PY
    )
    case $out in ERROR*) echo "$out" >&2; exit 1 ;; "") sleep 0.05 ;; *) echo "$out"; return ;; esac
  done
  echo "server: no complete upload" >&2
  exit 1
}

run_curl() {
  local label=${1:-curl} from loc t0 code s0 s1 q0 q1 x0 x1 cv ci
  from=$(wc -l <"$T/server.log")
  loc=$(curl "${CURL_TLS[@]}" -sS -i -X POST -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $BYTES" \
    -H "Authorization: Bearer $TOKEN" "$URL" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  s0=$(ticks "$SPID")
  q0=$(rdelay "$SPID")
  x0=$(switches "$SPID")
  t0=$(now_ms)
  local trace=()
  [ -n "$STRACE_OUT" ] && trace=(strace -f -qq -o "$STRACE_OUT.$label.$round" \
    -e trace=%network,write,writev,sendmsg,sendto,read,readv,preadv2,poll,ppoll)
  code=$(/usr/bin/time -f '%U %S %M %w %c' -o "$T/time" "${trace[@]}" "${CLI_PIN[@]}" curl "${CURL_TLS[@]}" -sS -X PATCH -T "$FILE" -H 'Expect:' \
    -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' \
    -H 'Content-Type: application/offset+octet-stream' -H "Authorization: Bearer $TOKEN" \
    -o /dev/null -w '%{http_code}' "$loc")
  [ "$code" = 204 ] || { echo "curl PATCH answered $code" >&2; exit 1; }
  read -r end n gmed gmax first hs cipher <<<"$(wait_done "$from")"
  s1=$(ticks "$SPID")
  q1=$(rdelay "$SPID")
  x1=$(switches "$SPID")
  read -r u s m cv ci <"$T/time"
  rm -f "$STORE"/*
  python3 -c "import sys; label,b,t0,e,u,s,m,f,hs,ci,s0,s1,q0,q1,x0,x1,cv,cp=sys.argv[1:]; w=(int(e)-int(t0))/1e3
sv0,sp0=x0.split(); sv1,sp1=x1.split()
print(f'{label:9} wall={w:6.2f}s tput={int(b)/w/2**20:7.1f}MiB/s cpu={float(u)+float(s):5.2f}s hwm={int(m)/1024:5.1f}MiB patches=1 gap_med=0 gap_max=0 lead_ms={int(f)-int(t0)} hs={hs} srv_cpu={(int(s1)-int(s0))/100:5.2f}s srv_busy={(int(s1)-int(s0))/100/w:4.2f} srv_wait_ms={(int(q1)-int(q0))/1e6:.0f} srv_preempted={int(sp1)-int(sp0)} cli_slept={cv} cli_preempted={cp} cipher {ci}')" \
    "$label" "$BYTES" "$t0" "$end" "$u" "$s" "$m" "$first" "$hs" "$cipher" "$s0" "$s1" "$q0" "$q1" "$x0" "$x1" "$cv" "$ci"
}

# One daemon run: label $1, binary $2.
run_daemon() {
  local label=$1 bin=$2 extra
  extra=$(eval "printf '%s' \"\${EXTRA_$label-\$EXTRA}\"")
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
$CA_LINE
$extra
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
  "${CLI_PIN[@]}" "$bin" daemon --config "$T/c.toml" 2>"$T/daemon.log" &
  DPID=$!
  for _ in $(seq 1 200); do api http://localhost/v1/health >/dev/null 2>&1 && break; sleep 0.05; done
  api -X PUT http://localhost/v1/account -d '{"user_id":"u","token":"'"$TOKEN"'"}' >/dev/null
  for _ in $(seq 1 200); do api 'http://localhost/v1/queue' | grep -q '"pending"' && break; sleep 0.05; done
  sleep 2 # past idle_secs since the daemon's own start, so consent is the only thing missing
  local from c0 c1 t0 hwm perf= s0 s1 q0 q1 d0 d1 x0 x1 y0 y1
  from=$(wc -l <"$T/server.log")
  if [ -n "$PERF_OUT" ]; then
    perf record -q -F 999 -g -o "$PERF_OUT.$label.$round.data" -p "$DPID" 2>/dev/null &
    perf=$!
    sleep 1
  elif [ -n "$STRACE_OUT" ]; then
    strace -f -qq -e trace=%network,write,writev,sendmsg,sendto,read,readv,preadv2,epoll_wait \
      -o "$STRACE_OUT.$label.$round" -p "$DPID" 2>/dev/null &
    perf=$!
    sleep 1
  fi
  c0=$(ticks "$DPID")
  s0=$(ticks "$SPID")
  q0=$(rdelay "$SPID")
  d0=$(rdelay "$DPID")
  x0=$(switches "$SPID")
  y0=$(switches "$DPID")
  t0=$(now_ms)
  api -X PATCH http://localhost/v1/settings -d '{"auto_upload":true}' >/dev/null
  read -r end n gmed gmax first hs cipher <<<"$(wait_done "$from")"
  [ -n "$perf" ] && { kill -INT "$perf"; wait "$perf" || true; }
  c1=$(ticks "$DPID")
  s1=$(ticks "$SPID")
  q1=$(rdelay "$SPID")
  d1=$(rdelay "$DPID")
  x1=$(switches "$SPID")
  y1=$(switches "$DPID")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$DPID/status")
  kill -TERM "$DPID"
  wait "$DPID" || true
  DPID=
  rm -f "$STORE"/*
  python3 -c "import sys; b,t0,e,c0,c1,h,n,gm,gx,label,f,hs,ci,s0,s1,q0,q1,d0,d1,x0,x1,y0,y1=sys.argv[1:]; w=(int(e)-int(t0))/1e3
sv0,sp0=x0.split(); sv1,sp1=x1.split(); cv0,cp0=y0.split(); cv1,cp1=y1.split()
print(f'{label:9} wall={w:6.2f}s tput={int(b)/w/2**20:7.1f}MiB/s cpu={(int(c1)-int(c0))/100:5.2f}s hwm={int(h)/1024:5.1f}MiB patches={n} gap_med={float(gm):.0f} gap_max={gx} lead_ms={int(f)-int(t0)} hs={hs} srv_cpu={(int(s1)-int(s0))/100:5.2f}s srv_busy={(int(s1)-int(s0))/100/w:4.2f} srv_wait_ms={(int(q1)-int(q0))/1e6:.0f} cli_wait_ms={(int(d1)-int(d0))/1e6:.0f} srv_preempted={int(sp1)-int(sp0)} cli_slept={int(cv1)-int(cv0)} cli_preempted={int(cp1)-int(cp0)} cipher {ci}')" \
    "$BYTES" "$t0" "$end" "$c0" "$c1" "$hwm" "$n" "$gmed" "$gmax" "$label" "$first" "$hs" "$cipher" "$s0" "$s1" "$q0" "$q1" "$d0" "$d1" "$x0" "$x1" "$y0" "$y1"
}

echo "file: $BYTES bytes; ${TLS:+over TLS; }$(nproc) cores; @tus/server $(node -p 'require("./interop/node_modules/@tus/server/package.json").version'); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$T/results"
for round in $(seq 1 "$RUNS"); do
  # Alternate who goes first: a round's second client finds the machine as the first left it.
  clients="$BINS${CURL_AA:+ curl_b}"
  # Even rounds are the odd ones reversed, so each client follows each other as often.
  if [ $((round % 2)) = 1 ]; then order="curl $clients"; else order="$(printf '%s\n' curl $clients | tac | tr '\n' ' ')"; fi
  for who in $order; do
    case $who in
      curl | curl_b) run_curl "$who" ;;
      *) run_daemon "${who%%=*}" "${who#*=}" ;;
    esac | sed "s/^/round=$round /" | tee -a "$T/results"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$T/results" <<'PY'
import re, statistics as st, sys
rows = {}
for line in open(sys.argv[1]):
    r = dict(re.findall(r"(\w+)=\s*([\d.]+)", line))
    rows.setdefault(line.split()[1], {})[int(r["round"])] = {k: float(v) for k, v in r.items()}
c = rows["curl"]
def fig(rs, f):
    v = [x[f] for x in rs.values()]
    return f"{st.median(v):7.2f} ({min(v):.2f}-{max(v):.2f})"
print(f"--- medians (range) over {len(c)} rounds")
for name, rs in rows.items():
    print(f"{name:10} tput MiB/s {fig(rs, 'tput')}  cpu s {fig(rs, 'cpu')}  rss MiB {fig(rs, 'hwm')}"
          f"  patches {fig(rs, 'patches')}  gap median ms {fig(rs, 'gap_med')}  gap max ms {fig(rs, 'gap_max')}"
          f"  lead ms {fig(rs, 'lead_ms')}  handshakes {fig(rs, 'hs')}"
          f"  server cpu s {fig(rs, 'srv_cpu')}  server busy {fig(rs, 'srv_busy')}"
          f"  server waited for a core ms {fig(rs, 'srv_wait_ms')}  server preempted {fig(rs, 'srv_preempted')}"
          f"  client slept {fig(rs, 'cli_slept')}  client preempted {fig(rs, 'cli_preempted')}")
for name, d in rows.items():
    if name == "curl":
        continue
    tr = [d[k]["tput"] / c[k]["tput"] for k in c]
    cr = [d[k]["cpu"] / max(c[k]["cpu"], 0.01) for k in c]
    print(f"{name}/curl per round: throughput x{st.median(tr):.2f} ({min(tr):.2f}-{max(tr):.2f}), "
          f"CPU x{st.median(cr):.2f} ({min(cr):.2f}-{max(cr):.2f})")
PY
