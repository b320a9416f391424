#!/usr/bin/env bash
# Cost against the card's size (issue 29, part 2): for each N files, laid out like a camera's
# card (DCF: DCIM/100ABCDE/ABCD0001.JPG, 9,999 files a directory) on a tmpfs of its own:
#
#   first scan     the daemon's "scanned the card" took_ms, and from its first log line to that
#                  one (what the user waits for the queue to be complete)
#   restart        the same on a second start with the whole card done (nothing new)
#   peak RSS       VmHWM of the first-scan daemon and of the restarted one (after all below)
#   database       cambackup.db + -wal at the end (the ledger beside it apart)
#   status         GET /v1/status over the Unix socket, CALLS calls: median and max
#   queue page     GET /v1/queue?limit=100 (the first page), ?after=N-100&limit=100 (the last)
#                  and ?state=failed&limit=100 (a state no item is in): median and max
#   idle CPU       utime+stime and the threads' schedstat run time over IDLE seconds, the card
#                  done and nothing to do
#
#   benches/scale.sh                               # N = 10k, 100k, 1M; 3 rounds (1 at 1M)
#   NS="10000 100000" ROUNDS=3 benches/scale.sh
#   A=/tmp/cambackup-main benches/scale.sh         # that build's rounds too, side by side
#   DONE=upload NS=10000 benches/scale.sh          # the card done by real uploads (below)
#   PENDING=1 benches/scale.sh                     # and a restart before any upload (all open)
#   SPACE=1 benches/scale.sh                       # and one GET /v1/space (freeing's preview)
#                                                  # with the card done: its ms and the peak
#                                                  # RSS after it (last, so nothing else pays)
#
# "The whole card done": with DONE=sql (the default) the first daemon is stopped after its scan
# and every pending row is made done by one SQL transaction on its database mirroring what
# `Store::mark_done` and a finished transfer write (state, bytes_sent, attempts, creations,
# upload_endpoint, done_url, the fingerprint of the bytes, the history row, sent_contents) and
# the two ledger lines a real upload appends (creation, done). With DONE=upload a testkit
# tus-receiver takes every file for real (the camera charging on Wi-Fi, paired, consent on),
# which prints the rate; at 1,000,000 files that takes hours here, hence the SQL.
# Needs root (mount). Prints one line per round and a table of medians [min-max].
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${NS:-"10000 100000 1000000"}
ROUNDS=${ROUNDS:-3}
ROUNDS_BIG=${ROUNDS_BIG:-1} # rounds at N >= 1,000,000
IDLE=${IDLE:-60}
CALLS=${CALLS:-50}
DONE=${DONE:-sql}
if [ -z "${B:-}" ]; then
  cargo build --release --quiet --bin cambackup
  B=$PWD/target/release/cambackup
fi
RECEIVER=
if [ "$DONE" = upload ]; then
  cargo build --release --quiet -p testkit --bin tus-receiver
  RECEIVER=$PWD/target/release/tus-receiver
fi
T=$(mktemp -d)
PID=
RPID=
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true; fi
  if [ -n "$RPID" ]; then kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null || true; fi
  if mountpoint -q "$T/c/card" 2>/dev/null; then umount "$T/c/card"; fi
  [ -n "${KEEP:-}" ] || rm -rf "$T"
}
trap cleanup EXIT
# The camera of benches/idle.sh (charging, on Wi-Fi, consent on), its helper taken from there.
eval "$(sed -n '/^make_camera() {/,/^}/p' benches/idle.sh)"
api() { curl -sS --unix-socket "$T/c/run/ctl.sock" -H 'content-type: application/json' "$@"; }

echo "$(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg); done by $DONE; idle ${IDLE} s"
: >"$T/results"

# The card: N files of 0-6 bytes ("x" repeated), 1 in 10 a .MOV, an hour old.
make_card() {
  local n=$1 card=$2
  mkdir -p "$card"
  # Each file an inode (and a page when not empty); the root, DCIM and the folders a few more.
  mount -t tmpfs -o "size=$((n / 1000 * 5 + 64))m,nr_inodes=$((n + n / 9999 + 1000))" tmpfs "$card"
  python3 - "$card" "$n" <<'PY'
import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
old = time.time() - 3600
for i in range(n):
    d, f = divmod(i, 9999)
    if f == 0:
        p = os.path.join(root, "DCIM", f"{100 + d:03d}ABCDE")
        os.makedirs(p)
    fn = os.path.join(p, f"ABCD{f + 1:04d}.{'MOV' if f % 10 == 9 else 'JPG'}")
    with open(fn, "wb") as fh:
        fh.write(b"x" * (i % 7))
    os.utime(fn, (old, old))
PY
}

# ms from the log's first line to its first line matching $1 (the logs' own timestamps).
since_start() {
  local t0 t1
  t0=$(date -d "$(head -1 "$T/c/log" | cut -d' ' -f1)" +%s%N)
  t1=$(date -d "$(grep -m1 "$1" "$T/c/log" | cut -d' ' -f1)" +%s%N)
  echo $(((t1 - t0) / 1000000))
}

# Starts $1 on the camera in $T/c and waits for its scan (up to an hour); sets SCANNED to the
# scan's took_ms and the ms from the start (not a subshell: PID stays set).
start_and_scan() {
  rm -f "$T/c/run/ctl.sock"
  : >"$T/c/log"
  CAMBACKUP_LOG=info "$1" daemon --config "$T/c/c.toml" 2>"$T/c/log" &
  PID=$!
  for _ in $(seq 1 18000); do grep -q "scanned the card" "$T/c/log" && break; sleep 0.2; done
  SCANNED="$(grep -m1 "scanned the card" "$T/c/log" | sed -E 's/.*took_ms=([0-9]+).*/\1/') $(since_start "scanned the card")"
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$PID/status"; }
# median and max in ms of CALLS calls of GET $1
lat() {
  for _ in $(seq 1 "$CALLS"); do
    curl -s -o /dev/null -w '%{time_total}\n' --unix-socket "$T/c/run/ctl.sock" "http://localhost$1"
  done | sort -n | awk '{a[NR] = $1 * 1000} END {printf "%.2f/%.2f", a[int((NR + 1) / 2)], a[NR]}'
}

# Every pending item made done as a finished upload leaves it (see the top), the daemon stopped.
sql_done() {
  python3 - "$T/c/state" "$ENDPOINT" <<'PY'
import hashlib, json, os, sqlite3, sys, time
state, ep = sys.argv[1], sys.argv[2]
now = int(time.time())
fp = lambda size: hashlib.sha256(size.to_bytes(8, "little") + b"x" * size).digest()[:16]
con = sqlite3.connect(os.path.join(state, "cambackup.db"))
con.create_function("fp", 1, fp, deterministic=True)
with con:
    con.execute("""UPDATE items SET state = 'done', creations = 1,
        upload_endpoint = ?1, done_url = ?1 || id, upload_url = NULL, upload_expires_at = NULL,
        bytes_sent = size, completed_at = ?2, last_error = NULL, fingerprint = fp(size)
        WHERE state = 'pending'""", (ep, now))
    con.execute("""INSERT INTO history (storage_path, size, completed_at, card, sha256)
        SELECT storage_path, size, ?1, card, NULL FROM items WHERE state = 'done' ORDER BY id""", (now,))
    con.execute("""INSERT OR IGNORE INTO sent_contents (storage_path, fingerprint)
        SELECT storage_path, fingerprint FROM items WHERE state = 'done'""")
with open(os.path.join(state, "ledger.jsonl"), "a") as led:
    for i, p, s, m, k, f in con.execute(
            "SELECT id, storage_path, size, mtime_ns, kind, fingerprint FROM items WHERE state = 'done' ORDER BY id"):
        e = {"p": p, "s": s, "m": m, "k": k}
        led.write(json.dumps({**e, "u": f"{ep}{i}", "e": ep}, separators=(",", ":")) + "\n")
        led.write(json.dumps({**e, "d": True, "g": f.hex()}, separators=(",", ":")) + "\n")
    led.flush()
    os.fsync(led.fileno())
con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
con.close()
PY
}

# Waits until every file of the card is done by the receiver; prints the seconds it took.
upload_done() {
  local n=$1 t0 done
  api -X PUT http://localhost/v1/account -d '{"user_id":"u","token":"t"}' >/dev/null
  t0=$(date +%s%N)
  while :; do
    done=$(api http://localhost/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["done"])')
    [ "$done" -ge "$n" ] && break
    sleep 1
  done
  echo "scale=1; ($(date +%s%N) - $t0) / 1000000000" | bc
}

round() {
  local label=$1 bin=$2 n=$3 r=$4
  rm -rf "$T/c/state"
  mkdir -m 700 "$T/c/state"
  local first hwm1 up=- restart hwm2 st q1 q2 q3 he db wal ledger cpu
  start_and_scan "$bin"
  first=$SCANNED
  if [ "$DONE" = upload ]; then
    up=$(upload_done "$n")
    sleep 1
  fi
  hwm1=$(hwm)
  stop
  local pend=- hwm0=-
  if [ -n "${PENDING:-}" ]; then
    # A restart before any upload: every item still open, which the scan judges.
    start_and_scan "$bin"
    pend=$SCANNED
    sleep 1
    hwm0=$(hwm)
    stop
  fi
  [ "$DONE" = upload ] || sql_done
  start_and_scan "$bin"
  restart=$SCANNED
  sleep 2
  st=$(lat /v1/status)
  q1=$(lat "/v1/queue?limit=100")
  q2=$(lat "/v1/queue?limit=100&after=$((n - 100))")
  q3=$(lat "/v1/queue?state=failed&limit=100")
  he=$(lat /v1/health)
  local done_now
  done_now=$(api http://localhost/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["done"])')
  cpu=$(python3 - "$PID" "$IDLE" <<'PY'
import glob, os, sys, time
pid, window = sys.argv[1], float(sys.argv[2])
def sample():
    """ticks of the whole process (its ended threads too); run ns per live thread"""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ns = {}
    for t in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            ns[t] = int(open(t).read().split()[0])
        except OSError:
            pass
    return int(f[11]) + int(f[12]), ns
# Sampled every second, so a thread that ends in the window counts up to its last sample.
(t0, first), start = sample(), time.monotonic()
last = dict(first)
while time.monotonic() - start < window:
    time.sleep(min(1.0, window - (time.monotonic() - start)))
    t1, now = sample()
    last.update(now)
run = sum(v - first.get(t, 0) for t, v in last.items())
print(f"{(t1 - t0) * 1000 // os.sysconf('SC_CLK_TCK')} {run / 1e6:.1f}")
PY
)
  hwm2=$(hwm)
  local sp=- hwm3=-
  if [ -n "${SPACE:-}" ]; then
    sp=$(curl -s -o /dev/null -w '%{time_total}' --unix-socket "$T/c/run/ctl.sock" http://localhost/v1/space |
      awk '{printf "%.0f", $1 * 1000}')
    hwm3=$(hwm)
  fi
  wal=$(stat -c %s "$T/c/state/cambackup.db-wal" 2>/dev/null || echo 0)
  db=$(($(stat -c %s "$T/c/state/cambackup.db") + wal))
  ledger=$(stat -c %s "$T/c/state/ledger.jsonl" 2>/dev/null || echo 0)
  stop
  # label n round first_took first_from_start hwm1_kB upload_s restart_took restart_from_start
  # hwm2_kB db_bytes ledger_bytes status q_first q_last q_failed idle_ticks_ms idle_sched_ms
  # done wal_bytes load1 health pending_restart_took/from_start pending_restart_hwm_kB space_ms
  # space_hwm_kB
  echo "$label $n $r $first $hwm1 $up $restart $hwm2 $db $ledger $st $q1 $q2 $q3 $cpu $done_now $wal \
$(cut -d' ' -f1 /proc/loadavg) $he ${pend// /\/} $hwm0 $sp $hwm3" | tee -a "$T/results"
}

for n in $NS; do
  rm -rf "$T/c"
  make_camera "$T/c"
  if [ "$DONE" = upload ]; then
    "$RECEIVER" >"$T/receiver.out" &
    RPID=$!
    for _ in $(seq 1 100); do grep -q '^url ' "$T/receiver.out" && break; sleep 0.1; done
    ENDPOINT=$(awk '/^url / {print $2; exit}' "$T/receiver.out")
  else
    # Port 9 (discard) is never reached: the camera is not paired.
    ENDPOINT=http://127.0.0.1:9/files/
  fi
  sed -i "s|^endpoint = .*|endpoint = \"$ENDPOINT\"|" "$T/c/c.toml"
  t=$(date +%s)
  make_card "$n" "$T/c/card"
  echo "card of $n files made in $(($(date +%s) - t)) s; load $(cut -d' ' -f1-3 /proc/loadavg)"
  rounds=$ROUNDS
  [ "$n" -lt 1000000 ] || rounds=$ROUNDS_BIG
  for r in $(seq 1 "$rounds"); do
    [ -z "${A:-}" ] || round A "$A" "$n" "$r"
    round B "$B" "$n" "$r"
  done
  umount "$T/c/card"
  if [ -n "$RPID" ]; then kill "$RPID"; wait "$RPID" || true; RPID=; fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$T/results" "${A:-}" "$B" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault((f[0], int(f[1])), []).append(f)
def num(v):
    return float(v.split("/")[0]) if v != "-" else None
def fig(rs, i, scale=1, fmt="{:.0f}", half=0):
    v = [float(r[i].split("/")[half]) / scale for r in rs if r[i] != "-"]
    if not v:
        return "-"
    m = statistics.median(v)
    return fmt.format(m) + ("" if len(v) == 1 else " [" + fmt.format(min(v)) + "-" + fmt.format(max(v)) + "]")
print(f"A = {sys.argv[2] or '-'}; B = {sys.argv[3]}")
print("build | files | rounds | first scan ms (from start) | restart ms (from start) | peak RSS MiB first/restart "
      "| db MiB | ledger MiB | status ms median (max) | queue first page | last page | state=failed page "
      "| idle CPU ms (schedstat ms) | upload s | WAL MiB | load | health ms median (max) "
      "| restart all pending ms (from start) | its peak RSS MiB | GET /v1/space ms | peak RSS after it MiB")
for (label, n), rs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    mib = 1024
    print(f"{label} | {n} | {len(rs)} | {fig(rs, 3)} ({fig(rs, 4)}) | {fig(rs, 7)} ({fig(rs, 8)}) | "
          f"{fig(rs, 5, mib, '{:.1f}')} / {fig(rs, 9, mib, '{:.1f}')} | {fig(rs, 10, 1 << 20, '{:.1f}')} | "
          f"{fig(rs, 11, 1 << 20, '{:.1f}')} | {fig(rs, 12, fmt='{:.2f}')} ({fig(rs, 12, fmt='{:.2f}', half=1)}) | "
          f"{fig(rs, 13, fmt='{:.2f}')} ({fig(rs, 13, fmt='{:.2f}', half=1)}) | "
          f"{fig(rs, 14, fmt='{:.2f}')} ({fig(rs, 14, fmt='{:.2f}', half=1)}) | "
          f"{fig(rs, 15, fmt='{:.2f}')} ({fig(rs, 15, fmt='{:.2f}', half=1)}) | "
          f"{fig(rs, 16)} ({fig(rs, 17, fmt='{:.1f}')}) | {fig(rs, 6, fmt='{:.1f}')} | "
          f"{fig(rs, 19, 1 << 20, '{:.1f}')} | {fig(rs, 20, fmt='{:.2f}')} | "
          f"{fig(rs, 21, fmt='{:.2f}')} ({fig(rs, 21, fmt='{:.2f}', half=1)}) | "
          f"{fig(rs, 22)} ({fig(rs, 22, half=1)}) | {fig(rs, 23, mib, '{:.1f}')} | "
          f"{fig(rs, 24)} | {fig(rs, 25, mib, '{:.1f}')}")
PY
