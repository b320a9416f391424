#!/usr/bin/env bash
# Try the daemon by hand, on this machine, with no camera and no cloud account:
#
#     examples/try-it/run.sh            # uploads the sample card, shows status/history, stops
#     examples/try-it/run.sh --keep     # the same, then keeps running until Ctrl-C
#
# It builds `cambackup` and the test tus server, makes /tmp/cambackup-try-it (a card with three
# files, and a copy of examples/try-it/device/: sysfs and procfs saying "charging, on Wi-Fi,
# cool"), starts the tus server on 127.0.0.1:1080 (`cargo run -p testkit --bin tus-receiver --
# --port 1080 --token try-it-token`) and the daemon with examples/try-it/cambackup.toml, pairs,
# switches auto-upload on, and waits until the server has every file. With --keep, try the
# other commands from a second terminal, e.g.:
#
#     target/debug/cambackup --config examples/try-it/cambackup.toml status
#     cp some-photo.jpg /tmp/cambackup-try-it/card/DCIM/100MEDIA/   # goes up a few s later
#
# The daemon's log is /tmp/cambackup-try-it/daemon.log. Nothing outside /tmp/cambackup-try-it
# is written (but target/).
set -euo pipefail
cd "$(dirname "$0")/../.."
keep=false
[ "${1:-}" = --keep ] && keep=true
dir=/tmp/cambackup-try-it
config=examples/try-it/cambackup.toml
token=try-it-token

cargo build --quiet --bin cambackup
cargo build --quiet -p testkit --bin tus-receiver
bin=${CARGO_TARGET_DIR:-target}/debug

rm -rf "$dir"
mkdir -p "$dir/card/DCIM/100MEDIA" "$dir/state"
chmod 700 "$dir/state"
cp -r examples/try-it/device/sys examples/try-it/device/proc "$dir/"
for f in IMG_0001.JPG:3000000 IMG_0002.JPG:5000000 VID_0003.MP4:20000000; do
    head -c "${f#*:}" /dev/urandom >"$dir/card/DCIM/100MEDIA/${f%%:*}"
done
touch -d '1 minute ago' "$dir"/card/DCIM/100MEDIA/*

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$bin/tus-receiver" --port 1080 --token "$token" >"$dir/tus.log" &
pids+=($!)
CAMBACKUP_LOG=info "$bin/cambackup" daemon --config "$config" 2>"$dir/daemon.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$dir/control.sock" ] && grep -q '^url ' "$dir/tus.log" && break; sleep 0.1; done
[ -S "$dir/control.sock" ] || { cat "$dir/daemon.log"; echo "try-it: the daemon did not start" >&2; exit 1; }
grep -q '^url ' "$dir/tus.log" || { echo "try-it: the tus server did not start (port 1080 in use?)" >&2; exit 1; }

cb() {
    echo "\$ cambackup $*"
    "$bin/cambackup" --config "$config" "$@"
    echo
}
cb pair --user-id you --token-file - <<<"$token"
cb settings auto_upload true
echo "waiting for the three files to arrive at the tus server..."
for _ in $(seq 600); do
    [ "$(grep -c '^complete ' "$dir/tus.log")" -ge 3 ] && break
    sleep 0.1
done
[ "$(grep -c '^complete ' "$dir/tus.log")" -ge 3 ] \
    || { cat "$dir/daemon.log"; echo "try-it: the files did not all arrive within 60 s" >&2; exit 1; }
sleep 0.5 # the daemon records "done" after the server's last answer
cb status
cb history
if $keep; then
    echo "running: the daemon's socket is $dir/control.sock; Ctrl-C stops both"
    wait
fi
echo "try-it: done, all three files uploaded"
