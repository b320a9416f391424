#!/usr/bin/env bash
# Fuzzes the control API against docs/openapi.yaml with schemathesis (issue 5, part 6).
#
# Builds the debug daemon, starts it on a throwaway fake camera (card with two photos, a fake
# sysfs/proc tree like testkit/src/camera.rs writes), bridges its Unix socket to a loopback TCP
# port with socat (schemathesis speaks TCP only), runs schemathesis with every check, and then
# asks GET /v1/health that the daemon survived. Exits non-zero on any failure: a 5xx, an answer
# that does not match the spec, a crash.
#
# Usage: .ci/schemathesis.sh            (from anywhere inside the repo)
# Env:   CARGO_TARGET_DIR               where cargo builds (default: ./target)
#        SCHEMATHESIS_MAX_EXAMPLES      examples per operation and phase (default 300: ~1 min)
#        SCHEMATHESIS_SEED              fixed seed, to reproduce a run
#        KEEP_TMP=1                     keep the temp camera and the daemon's log
set -euo pipefail

# Pinned: checked by hand against this spec; a newer schemathesis may add checks or change flags.
# `pip install` took ~27 s on the CI machine (wheels only, no compiler needed).
SCHEMATHESIS_VERSION=4.32.5

cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
started=$(date +%s)

log() { printf '[schemathesis.sh] %s\n' "$*" >&2; }

# --- tools -----------------------------------------------------------------------------------
if [[ "$(schemathesis --version 2>/dev/null || true)" != *"version $SCHEMATHESIS_VERSION"* ]]; then
    log "installing schemathesis $SCHEMATHESIS_VERSION from PyPI"
    t0=$(date +%s)
    python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    log "installed in $(($(date +%s) - t0)) s"
fi
if ! command -v socat >/dev/null; then
    log "installing socat"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat >/dev/null
fi

log "building the daemon"
cargo build --quiet --bin cambackup
bin="${CARGO_TARGET_DIR:-target}/debug/cambackup"
[[ "$bin" = /* ]] || bin="$PWD/$bin"

# --- a fake camera ---------------------------------------------------------------------------
tmp=$(mktemp -d -t cambackup-schemathesis-XXXXXX)
daemon_pid=""
socat_pid=""
tus_pid=""
cleanup() {
    local rc=$?
    # Only the processes this script started, by their ids.
    [[ -n "$socat_pid" ]] && kill "$socat_pid" 2>/dev/null || true
    [[ -n "$tus_pid" ]] && kill "$tus_pid" 2>/dev/null || true
    if [[ -n "$daemon_pid" ]]; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 || -n "${KEEP_TMP:-}" ]]; then
        log "daemon log (last 40 lines of $tmp/daemon.log):"
        tail -n 40 "$tmp/daemon.log" >&2 2>/dev/null || true
    fi
    if [[ -z "${KEEP_TMP:-}" ]]; then rm -rf "$tmp"; else log "kept $tmp"; fi
    exit "$rc"
}
trap cleanup EXIT

put() { mkdir -p "$(dirname "$1")" && printf '%s\n' "$2" >"$1"; }
sys="$tmp/sysfs" proc="$tmp/proc"
put "$sys/class/power_supply/AC/type" Mains
put "$sys/class/power_supply/AC/online" 1
put "$sys/class/power_supply/battery/type" Battery
put "$sys/class/power_supply/battery/status" Charging
put "$sys/class/power_supply/battery/capacity" 80
put "$sys/class/net/wlan0/operstate" up
mkdir -p "$sys/class/net/wlan0/wireless"
put "$sys/class/thermal/thermal_zone0/temp" 35000
put "$proc/loadavg" "0.10 0.05 0.01 1/123 4567"
mkdir -p "$proc/net"
printf 'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n%s\n%s\n' \
    $'wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0' \
    $'wlan0\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0' >"$proc/net/route"
mkdir -p "$tmp/card/DCIM/100MEDIA" "$tmp/run" "$tmp/state"
chmod 700 "$tmp/state"
# A few photos of 1 MiB: at the receiver's pace below, uploads are in flight for most of the
# run, so the fuzzer also sees `current`, uploading and done items, and history entries.
for i in 1 2 3 4 5 6 7 8; do
    head -c 1048576 /dev/urandom >"$tmp/card/DCIM/100MEDIA/IMG_000$i.JPG"
done
# Written an hour ago, as far as the daemon can tell: settled at once, no waiting for idle.
touch -d '1 hour ago' "$tmp"/card/DCIM/100MEDIA/*

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A minimal, slow tus 1.0.0 receiver (creation, termination; ~256 KiB/s) on loopback. Only
# what the daemon's client needs; the bytes are counted, not kept.
cat >"$tmp/tus.py" <<'PY'
import http.server, sys, threading, time
uploads, lock = {}, threading.Lock()
class Tus(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self, code, **headers):
        self.send_response(code)
        self.send_header("Tus-Resumable", "1.0.0")
        for k, v in headers.items(): self.send_header(k.replace("_", "-"), str(v))
        self.send_header("Content-Length", "0")
        self.end_headers()
    def upload(self):
        try: return int(self.path.rsplit("/", 1)[1])
        except ValueError: return None
    def do_OPTIONS(self):
        self.answer(204, Tus_Version="1.0.0", Tus_Extension="creation,termination")
    def do_POST(self):
        with lock:
            n = len(uploads) + 1
            uploads[n] = [int(self.headers["Upload-Length"]), 0]
        self.answer(201, Location=f"/files/{n}")
    def do_HEAD(self):
        u = uploads.get(self.upload())
        if u is None: return self.answer(404)
        self.answer(200, Upload_Offset=u[1], Upload_Length=u[0], Cache_Control="no-store")
    def do_PATCH(self):
        u = uploads.get(self.upload())
        left = int(self.headers.get("Content-Length", 0))
        if u is None or int(self.headers["Upload-Offset"]) != u[1]:
            self.rfile.read(left)
            return self.answer(409 if u else 404)
        while left:
            got = self.rfile.read(min(left, 16384))
            if not got: return
            left -= len(got); u[1] += len(got)
            time.sleep(1 / 16)
        self.answer(204, Upload_Offset=u[1])
    def do_DELETE(self):
        with lock: uploads.pop(self.upload(), None)
        self.answer(204)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Tus).serve_forever()
PY
cloud_port=$(free_port)
python3 "$tmp/tus.py" "$cloud_port" 2>"$tmp/tus.log" &
tus_pid=$!
sock="$tmp/run/control.sock"
cat >"$tmp/cambackup.toml" <<EOF
[device]
type = "SJ10 Pro"
serial = "TEST0001"

[media]
root = "$tmp/card"
photo_extensions = ["jpg", "jpeg", "dng", "heic"]
video_extensions = ["mp4", "mov"]
exclude = ["**/*.THM", "**/*.LRV", "**/.*"]
settle_secs = 1
rescan_secs = 600

[cloud]
endpoint = "http://127.0.0.1:$cloud_port/files/"
chunk_size_mib = 1
stall_secs = 3

[conditions]
sysfs = "$sys"
proc = "$proc"
recording_flag = "$tmp/run/recording"
idle_secs = 2
max_temp_c = 60
min_battery_percent = 20
cellular_interfaces = ["wwan*", "rmnet*", "ppp*"]

[control]
socket = "$sock"
allowed_uids = []
allowed_gids = []

[state]
dir = "$tmp/state"
history_days = 60

[defaults]
auto_upload = true
network = "wifi"
require_charging = true
require_idle = true
data_types = ["photo", "video"]
EOF

# --- daemon and bridge -----------------------------------------------------------------------
log "starting the daemon ($tmp)"
RUST_LOG=${RUST_LOG:-info} "$bin" daemon --config "$tmp/cambackup.toml" >"$tmp/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
    [[ -S "$sock" ]] && break
    kill -0 "$daemon_pid" 2>/dev/null || { log "the daemon exited at start"; exit 1; }
    sleep 0.1
done
[[ -S "$sock" ]] || { log "no control socket at $sock after 10 s"; exit 1; }

port=$(free_port)
# socat logs each client that hangs up early (the fuzzer does); that goes to a file, not CI output.
socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$sock" 2>"$tmp/socat.log" &
socat_pid=$!
url="http://127.0.0.1:$port"
for _ in $(seq 50); do
    curl -fsS "$url/v1/health" >/dev/null 2>&1 && break
    sleep 0.1
done

# Paired with consent from the start, so uploads run while the fuzzer works (it may change
# the settings, pause, cancel, re-pair: all fine).
curl -fsS -X PUT -H 'Content-Type: application/json' \
    -d '{"user_id": "schemathesis", "token": "tok-schemathesis"}' "$url/v1/account" >/dev/null
state=""
for _ in $(seq 100); do
    state=$(curl -fsS "$url/v1/status" | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])')
    [[ "$state" == uploading ]] && break
    sleep 0.2
done
[[ "$state" == uploading ]] || { log "the daemon did not start uploading to the local receiver (state: $state)"; exit 1; }

# --- schemathesis ----------------------------------------------------------------------------
# Excluded operations, and why:
# - GET /v1/events is an endless Server-Sent Events stream: every request would hit the
#   timeout. tests/ and src/control/tests.rs cover it.
# - DELETE /v1/account is excluded from fuzzing because the fuzzer interleaves it freely with
#   PUT /v1/account: the answers stay valid either way (both are idempotent and always 200 for
#   valid input), but it would unpair on every other request and wipe the history, hiding the
#   paired-state answers of every other operation. It is called once by hand below instead and
#   its answer checked against the spec's required fields.
# `--checks all`: 5xx, status codes, content types, headers and bodies against the spec,
# negative data rejected, positive data accepted, 405 with Allow, ...
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-300}
st_args=(
    --config-file "$PWD/.ci/schemathesis.toml"
    run "$PWD/docs/openapi.yaml"
    --url "$url"
    --checks all
    --max-examples "$max_examples"
    --workers 2
    --request-timeout 10
    --exclude-operation-id followEvents
    --exclude-operation-id unpair
    --suppress-health-check too_slow
    --no-color
)
[[ -n "${SCHEMATHESIS_SEED:-}" ]] && st_args+=(--seed "$SCHEMATHESIS_SEED")
log "schemathesis ${st_args[*]}"
st_rc=0
# Bounded by --max-examples (per operation and phase); `timeout` is the backstop so a slow
# machine cannot stall CI. (--max-time is not a bound: fuzzing repeats until it is spent.)
# Run from the temp dir: schemathesis leaves a `.schemathesis/` cache in its working directory.
(cd "$tmp" && timeout 300 schemathesis "${st_args[@]}") || st_rc=$?

# --- afterwards: unpair once, and the daemon must still be healthy ----------------------------
alive=0
unpaired=$(curl -sS -X DELETE -w '\n%{http_code}' "$url/v1/account" || true)
if [[ "${unpaired##*$'\n'}" != 200 || "$unpaired" != *'"terminated"'* ]]; then
    log "DELETE /v1/account did not answer 200 with the Unpaired body: $unpaired"
    alive=1
fi
if ! kill -0 "$daemon_pid" 2>/dev/null; then
    log "the daemon died during the run"
    alive=1
elif ! health=$(curl -fsS "$url/v1/health"); then
    log "GET /v1/health did not answer 200 after the run"
    alive=1
else
    log "daemon healthy after the run: $health"
fi

log "finished in $(($(date +%s) - started)) s (schemathesis exit $st_rc)"
[[ $st_rc -eq 0 && $alive -eq 0 ]]
