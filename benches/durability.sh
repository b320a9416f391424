#!/usr/bin/env bash
# What `synchronous = FULL` costs per uploaded file, against the `NORMAL` it replaced
# (docs/PERFORMANCE.md, durability). Runs the store's own per-file write sequence (the SQL of
# src/store/mod.rs: queue, uploading, URL stored, two progress updates, done with its history
# row, each its own commit as in the daemon) through the sqlite3 shell on a WAL database, and
# the ledger's two synced appends per file (src/store/ledger.rs: URL stored, done) with
# python3's os.fdatasync, as the daemon does them. Rounds alternate between the settings;
# medians and the spread are printed.
#
#   benches/durability.sh [FILES] [ROUNDS] [DIR]     (DIR: the camera's state partition)
set -euo pipefail
files=${1:-200}
rounds=${2:-5}
base=${3:-${TMPDIR:-/tmp}}
command -v sqlite3 >/dev/null || { echo "sqlite3 is needed (apt-get install sqlite3)"; exit 1; }
work=$(mktemp -d "$base/durability.XXXXXX")
trap 'rm -rf "$work"' EXIT

schema="PRAGMA journal_mode=WAL;
CREATE TABLE items (id INTEGER PRIMARY KEY, storage_path TEXT NOT NULL, kind TEXT NOT NULL,
  size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
  manual INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL DEFAULT 0, last_error TEXT, upload_url TEXT,
  upload_expires_at INTEGER, bytes_sent INTEGER NOT NULL DEFAULT 0,
  creations INTEGER NOT NULL DEFAULT 0, queued_at INTEGER NOT NULL, completed_at INTEGER,
  upload_endpoint TEXT, UNIQUE (storage_path, size, mtime_ns));
CREATE INDEX items_by_state ON items (state, next_attempt_at);
CREATE TABLE history (id INTEGER PRIMARY KEY, storage_path TEXT NOT NULL, size INTEGER NOT NULL,
  completed_at INTEGER NOT NULL);"

# One file's statements.
script() { # $1 = NOW (FULL for the URL and done commits only) | FULL | NORMAL
  local base=$1 durable=$1
  [ "$1" = NOW ] && base=NORMAL durable=FULL
  echo "PRAGMA synchronous=$base;"
  for i in $(seq 1 "$files"); do
    echo "INSERT INTO items (storage_path, kind, size, mtime_ns, queued_at) VALUES ('DCIM/100MEDIA/IMG_$i.JPG', 'photo', 4000000, $i, 0);"
    echo "UPDATE items SET state='uploading' WHERE id=$i AND state='pending';"
    echo "PRAGMA synchronous=$durable; UPDATE items SET upload_url='https://up.example/files/$i', upload_endpoint='https://up.example/files/', creations=creations+1 WHERE id=$i; PRAGMA synchronous=$base;"
    echo "UPDATE items SET bytes_sent=2000000 WHERE id=$i;"
    echo "UPDATE items SET bytes_sent=4000000 WHERE id=$i;"
    echo "PRAGMA synchronous=$durable; BEGIN; UPDATE items SET state='done', completed_at=1 WHERE id=$i AND state='uploading';"
    echo "INSERT INTO history (storage_path, size, completed_at) SELECT storage_path, size, 1 FROM items WHERE id=$i; COMMIT; PRAGMA synchronous=$base;"
  done
}
script NOW >"$work/now.sql"
script FULL >"$work/full.sql"
script NORMAL >"$work/normal.sql"

run() { # $1 = now|full|normal; prints microseconds per file
  rm -f "$work/db"* "$work/ledger"
  sqlite3 "$work/db" "$schema" >/dev/null
  local t0 t1
  t0=$(date +%s%N)
  sqlite3 "$work/db" <"$work/$1.sql" >/dev/null
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000 / files))
}
ledger() { # microseconds per file for two appended, fdatasync'ed lines
  python3 - "$work/ledger" "$files" <<'PY'
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
for i in range(2 * n):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, b'{"p":"DCIM/100MEDIA/IMG_%d.JPG","s":4000000,"m":%d,"k":"photo"}\n' % (i, i))
    os.fdatasync(fd)
    os.close(fd)
print(int((time.perf_counter() - t) * 1e6 / n))
PY
}
now=() full=() normal=() led=()
for r in $(seq 1 "$rounds"); do
  if ((r % 2)); then now+=("$(run now)"); normal+=("$(run normal)"); full+=("$(run full)")
  else full+=("$(run full)"); normal+=("$(run normal)"); now+=("$(run now)"); fi
  rm -f "$work/ledger"; led+=("$(ledger)")
done
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "median %d us (min %d, max %d)", a[int((NR+1)/2)], a[1], a[NR]}'; }
echo "per file, $files files x $rounds alternating rounds, in $base:"
echo "  SQL, FULL for URL and done (now): $(stats "${now[@]}")"
echo "  SQL, NORMAL throughout (before):  $(stats "${normal[@]}")"
echo "  SQL, FULL throughout (for scale): $(stats "${full[@]}")"
echo "  ledger, two synced lines (now):   $(stats "${led[@]}")"
