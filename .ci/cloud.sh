#!/usr/bin/env bash
# Issue 27's reference receiving tier (cloud/): its Redis locker's own test, then a smoke run of
# `cloud/lab up`, one tus upload through the balancer (created, sent, read back from S3 and
# compared), the privacy check (a fifth metadata key refused), and `cloud/lab down`, which must
# leave no process behind. Prints how long `up` and `down` took.
#
# Usage: .ci/cloud.sh   (after `npm ci --prefix cloud` and .ci/run's apt installs)
set -euo pipefail
cd "$(dirname "$0")/.."

node --test cloud/test/

export CLOUD_DIR
CLOUD_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cloud-smoke.XXXXXX")"
work="$(mktemp -d "${TMPDIR:-/tmp}/cloud-smoke-data.XXXXXX")"
trap 'cloud/lab down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

t0=$(date +%s%N)
CLOUD_TOKENS=ci-token cloud/lab up | tee "$work/up.out"
up_ms=$((($(date +%s%N) - t0) / 1000000))
url="$(tail -n 1 "$work/up.out")"

b64() { printf %s "$1" | base64 -w0; }
tus=(-H "Authorization: Bearer ci-token" -H "Tus-Resumable: 1.0.0")
head -c 6000000 /dev/urandom >"$work/photo.jpg"
: >"$work/created.head"; : >"$work/created.body"
curl -sS -D "$work/created.head" -o "$work/created.body" -X POST "$url" "${tus[@]}" -H "Upload-Length: 6000000" \
  -H "Upload-Metadata: user_id $(b64 u1),device_type $(b64 cam),serial_number $(b64 S1),storage_path $(b64 DCIM/1.jpg)" ||
  echo "cloud smoke: the creation through haproxy failed (curl exit $?)"
location="$(tr -d '\r' <"$work/created.head" | sed -n 's/^[Ll]ocation: //p')"
[ -n "$location" ] || {
  echo "cloud smoke: the creation through haproxy gave no Location; the answer was:"
  cat "$work/created.head" "$work/created.body"
  tail -n 20 "$CLOUD_DIR"/log/{haproxy,tus1,tus2}.log 2>/dev/null || true
  exit 1
}
status="$(curl -sS -o /dev/null -w '%{http_code}' -X PATCH "$location" "${tus[@]}" -H "Upload-Offset: 0" \
  -H "Content-Type: application/offset+octet-stream" --data-binary @"$work/photo.jpg")"
[ "$status" = 204 ] || { echo "cloud smoke: PATCH answered $status, not 204"; exit 1; }
cloud/lab get "${location##*/}" "$work/back.jpg"
cmp "$work/photo.jpg" "$work/back.jpg" || { echo "cloud smoke: the object read back from S3 differs"; exit 1; }
status="$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$url" "${tus[@]}" -H "Upload-Length: 1" \
  -H "Upload-Metadata: user_id $(b64 u1),filename $(b64 a.jpg)")"
[ "$status" = 400 ] || { echo "cloud smoke: a 'filename' metadata key was answered $status, not 400"; exit 1; }
status="$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$url" -H "Tus-Resumable: 1.0.0" -H "Upload-Length: 1")"
[ "$status" = 401 ] || { echo "cloud smoke: a creation without a token was answered $status, not 401"; exit 1; }

# A length declared late (creation-defer-length, as clients streaming a recording use), across
# instances: two HEADs (a client resuming) leave the upload's info in both instances' view,
# the balancer's round robin takes the PATCH that declares the length to one and the last
# PATCH to the other. If that one still holds the info without the length (a per-process
# cache, CLOUD_CACHE=memory, or @tus/s3-store's shared cache without cloud/server.mjs's
# correction), the upload never completes: this is what the shared cache is for.
location="$(curl -sS -D - -o /dev/null -X POST "$url" "${tus[@]}" -H "Upload-Defer-Length: 1" \
  -H "Upload-Metadata: user_id $(b64 u1),device_type $(b64 cam),serial_number $(b64 S1),storage_path $(b64 DCIM/2.mp4)" |
  tr -d '\r' | sed -n 's/^[Ll]ocation: //p')"
[ -n "$location" ] || { echo "cloud smoke: a creation with a deferred length gave no Location"; exit 1; }
curl -sS -o /dev/null -I "$location" "${tus[@]}"
curl -sS -o /dev/null -I "$location" "${tus[@]}"
head -c 3000000 "$work/photo.jpg" >"$work/first"
tail -c +3000001 "$work/photo.jpg" >"$work/rest"
status="$(curl -sS -o /dev/null -w '%{http_code}' -X PATCH "$location" "${tus[@]}" -H "Upload-Offset: 0" \
  -H "Upload-Length: 6000000" -H "Content-Type: application/offset+octet-stream" --data-binary @"$work/first")"
[ "$status" = 204 ] || { echo "cloud smoke: the PATCH declaring the length answered $status, not 204"; exit 1; }
status="$(curl -sS -o /dev/null -w '%{http_code}' -X PATCH "$location" "${tus[@]}" -H "Upload-Offset: 3000000" \
  -H "Content-Type: application/offset+octet-stream" --data-binary @"$work/rest")"
[ "$status" = 204 ] || { echo "cloud smoke: the last PATCH of the deferred upload answered $status, not 204"; exit 1; }
for i in 1 2; do
  head="$(curl -sS -I "$location" "${tus[@]}" | tr -d '\r')"
  grep -qix "Upload-Offset: 6000000" <<<"$head" && grep -qix "Upload-Length: 6000000" <<<"$head" || {
    echo "cloud smoke: HEAD $i of the deferred upload, on an instance, does not say complete:"; echo "$head"; exit 1; }
done
cloud/lab get "${location##*/}" "$work/back2.jpg" || { echo "cloud smoke: the deferred upload's object is not in S3"; exit 1; }
cmp "$work/photo.jpg" "$work/back2.jpg" || { echo "cloud smoke: the deferred upload's object differs"; exit 1; }

pids="$(cat "$CLOUD_DIR"/run/*.pid)"
t0=$(date +%s%N)
cloud/lab down
down_ms=$((($(date +%s%N) - t0) / 1000000))
for pid in $pids; do
  st="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
  st="${st##*) }"
  if [ "${st:0:1}" != Z ]; then echo "cloud smoke: pid $pid outlived cloud/lab down"; exit 1; fi
done
echo "cloud smoke: ok (up ${up_ms} ms, down ${down_ms} ms)"
