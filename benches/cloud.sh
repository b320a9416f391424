#!/usr/bin/env bash
# Recovery after a tus instance dies (issue 27): the reference tier (cloud/lab, three instances
# behind haproxy, the Redis lock with its 4 s lease), one camera uploading big and small files
# at 4 MiB/s, and instances killed -9 at different moments: mid-PATCH, during a creation, during
# a HEAD (the resume after a first kill, killed in turn). The figure is the time from the kill
# to the arrival of the next PATCH the tier accepts (the instances' request logs); min, median
# and max per moment. Every object is read back from S3 and compared with the card afterwards.
#
#   benches/cloud.sh                 # 3 kills per moment
#   CLOUD_KILLS=5 benches/cloud.sh
#
# And the cloud side's throughput and cost (docs/PERFORMANCE.md, "The cloud side"): a fleet of
# CLOUD_CAMERAS cameras (default 4) uploading without a cap to 1, then 2 instances
# (CLOUD_INSTANCES="1,2"): uploads/s, MiB/s, the tier's CPU per GiB by part.
#
#   benches/cloud.sh throughput
#   CLOUD_CAMERAS=8 CLOUD_INSTANCES=1,2,3 benches/cloud.sh throughput
#
# Needs the tier's tools (.ci/run installs them) and `npm ci --prefix cloud`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CLOUD_KILLS=${CLOUD_KILLS:-3}
case "${1:-recovery}" in
recovery) bench=cloud::recovery_after_instance_kills ;;
throughput)
    bench=cloud::throughput_per_instance
    # The cameras run the release build: a debug daemon's hashing would take the cores the
    # tier is measured on.
    cargo build --quiet --release --locked --bin cambackup
    export CAMBACKUP_TEST_BIN="${CAMBACKUP_TEST_BIN:-$PWD/target/release/cambackup}"
    ;;
*) echo "usage: benches/cloud.sh [recovery|throughput]" >&2; exit 2 ;;
esac
exec nice cargo test --quiet --test it "$bench" -- --ignored --exact \
  --nocapture 2>&1 | grep -E '^cloud:|panicked|test result'
