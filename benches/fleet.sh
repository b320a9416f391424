#!/usr/bin/env bash
# A fleet through a server outage (issue 10, part 4): N real daemons, each with its own card,
# state dir and socket, against one tus server (testkit's receiver) that answers 503 for a
# while and then recovers. The cameras arrive at random instants in the first third of the
# outage. The figures come from the server's request log: how spread the reconnection is, that
# Retry-After is honoured, that no camera retries faster than its back-off, that every file
# arrives once. docs/SOAK.md has a run's figures.
#
#   benches/fleet.sh                          # 100 daemons, 60 s of 503 + Retry-After: 30
#   DAEMONS=20 OUTAGE=30 RETRY_AFTER=0 benches/fleet.sh   # without Retry-After: the back-off
#   ARRIVALS=60 benches/fleet.sh              # cameras arrive over the whole outage (default: a third)
#   PROFILE=release benches/fleet.sh          # the release daemon (what ships; less CPU)
#   LOG=fleet.csv benches/fleet.sh            # also every data request as CSV (per-second reading)
#
# Needs ~25 MiB of RAM per daemon (debug build). Exit status 1 when a file did not arrive
# exactly once, or a camera asked sooner than the server said / later than its back-off allows.
set -euo pipefail
cd "$(dirname "$0")/.."
DAEMONS=${DAEMONS:-100}
OUTAGE=${OUTAGE:-60}
RETRY_AFTER=${RETRY_AFTER:-30}
SEED=${SEED:-1}
ARRIVALS=${ARRIVALS:-$((OUTAGE / 3))}
PROFILE=${PROFILE:-debug}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
if [ "$PROFILE" = release ]; then
  cargo build --quiet --release --bin cambackup -p cambackup
else
  cargo build --quiet --bin cambackup -p cambackup
fi
cargo build --quiet --bin fleet -p testkit
# Each daemon holds a few descriptors; the harness holds a connection per daemon too.
ulimit -n 8192 2>/dev/null || true
# Each daemon holds inotify instances (the card, its mount, the conditions): the kernel's
# default of 128 per user runs out at about 100 daemons, and then every other program of the
# user (other engineers' tests too) falls back to polling or fails. Raised as root, never lowered.
need=$((DAEMONS * 4 + 256))
have=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)
if [ "$have" -lt "$need" ]; then
  sysctl -q -w fs.inotify.max_user_instances="$need" 2>/dev/null ||
    echo "fleet: fs.inotify.max_user_instances is $have, under the $need this fleet needs: run as root" >&2
fi
LOG_ARGS=()
if [ -n "${LOG:-}" ]; then LOG_ARGS=(--log "$LOG"); fi
exec nice "$TARGET/debug/fleet" "${LOG_ARGS[@]}" --daemons "$DAEMONS" --outage "$OUTAGE" \
  --retry-after "$RETRY_AFTER" --arrivals "$ARRIVALS" --seed "$SEED" --daemon "$TARGET/$PROFILE/cambackup"
