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
# Needs the tier's tools (.ci/run installs them) and `npm ci --prefix cloud`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CLOUD_KILLS=${CLOUD_KILLS:-3}
exec nice cargo test --quiet --test it cloud::recovery_after_instance_kills -- --ignored \
  --nocapture 2>&1 | grep -E '^cloud:|panicked|test result'
