#!/usr/bin/env bash
# The bare client against @tus/server (interop/server.mjs, its store on tmpfs), alternating
# modes in each round, each on an upload made by `curl -X POST`. Modes (main.rs): `stream`
# (fresh 128 KiB buffers, pread), `pool` (reused buffers, preadv2 RWF_NOWAIT: the daemon's
# reads), `pool-tick` (and a 250 ms ticker in a select around the request, as the daemon's
# stall watch), `mem` (the file in memory); `curl` is curl's one PATCH. Env: UT=1, KA=1 (the
# daemon's TCP_USER_TIMEOUT and keepalive), MT=1 (a multi-thread runtime), POST=URL (create the
# upload on the same connection first).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODES=${MODES:-curl stream pool pool-tick}
ROUNDS=${ROUNDS:-6}
SIZE_MIB=${SIZE_MIB:-1024}
BIN=benches/bare-client/target/release/bare-client
cargo build --release --quiet --manifest-path benches/bare-client/Cargo.toml
[ -d interop/node_modules ] || npm ci --prefix interop --silent
STORE=$(mktemp -d /dev/shm/tus-bare.XXXXXX) T=$(mktemp -d) SPID=
trap '[ -n "$SPID" ] && kill "$SPID"; rm -rf "$STORE" "$T"' EXIT
FILE=$T/f
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$FILE"
cat "$FILE" >/dev/null
BYTES=$(stat -c %s "$FILE")
TUS_TOKEN=bench-token node interop/server.mjs "$STORE" "$T/server.log" >"$T/server.out" 2>"$T/server.err" &
SPID=$!
for _ in $(seq 1 100); do grep -q '"url"' "$T/server.out" && break; sleep 0.1; done
URL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$T/server.out")
mk() {
  curl -sS -i -X POST -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $BYTES" \
    -H "Authorization: Bearer bench-token" "$URL" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}'
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  for m in $MODES; do
    loc=$(mk)
    if [ "$m" = curl ]; then
      t0=$(date +%s%N)
      curl -sS -X PATCH -T "$FILE" -H 'Expect:' -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' \
        -H 'Content-Type: application/offset+octet-stream' -H "Authorization: Bearer bench-token" \
        -o /dev/null "$loc"
      t1=$(date +%s%N)
      echo "round=$r curl $(python3 -c "print(round($BYTES/(($t1-$t0)/1e9)/1048576,1))") MiB/s"
    else
      echo "round=$r $("$BIN" "$loc" "$FILE" 131072 "$m")"
    fi
    rm -f "$STORE"/*
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
