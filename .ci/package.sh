#!/usr/bin/env bash
# Builds the Debian package and checks it the way a camera maker's image build would use it:
#
#   1. the unit: `systemd-analyze security` (exposure must stay under 2.0, "OK"); the Yocto
#      recipe's crate list matches Cargo.lock;
#   2. the .deb, built with cargo-deb (release profile);
#   3. installed with dpkg into a throwaway root (`dpkg --root` with an empty admin dir), its
#      maintainer scripts run for real against that root (DPKG_ROOT): user, state dir, enablement;
#   4. the installed binary validates the installed default config (exit 0) and refuses a
#      misspelt key (exit 2); run as the unit would run it (its user, umask, environment), the
#      daemon sends READY=1 and WATCHDOG=1 and stops cleanly on SIGTERM;
#   5. `systemd-analyze verify` on the installed unit with the installed binary at its ExecStart path;
#   6. reinstall (the upgrade path) and purge: state dir and conffile gone.
#
# Why `dpkg --root` and not debootstrap: it runs the real maintainer scripts in a few seconds with
# nothing downloaded but the tools below, and every script of ours honours DPKG_ROOT. What it does
# not give is the package's dependencies inside the root (hence --force-depends) and a chroot to
# run the binary in: the binary runs from the root on this host, which is the same Debian.
#
# Run as root on Debian (CI is); installs what it needs with apt-get and cargo. Prints
# "package: N passed, 0 failed" at the end, or stops at the first failure.
set -euo pipefail

cd "$(dirname "$0")/.."
CARGO_DEB_VERSION=3.8.0
SECURITY_THRESHOLD=19 # systemd-analyze counts exposure in tenths: 19 means "at most 1.9"
passed=0

step() { printf '\n== package: %s\n' "$*"; }
ok() { passed=$((passed + 1)); printf 'ok: %s\n' "$*"; }
fail() { printf 'package: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root: dpkg --root and systemd-sysusers --root create files owned by other users"

step "tools"
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)        # cargo-deb's $auto depends
command -v deb-systemd-helper >/dev/null || missing+=(init-system-helpers)
command -v python3 >/dev/null || missing+=(python3)   # crate list check, notify listener
command -v setpriv >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
    # About 2 minutes on a 2-core machine (measured: docs/packaging.md).
    time cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
echo "$(cargo deb --version), $(systemd-analyze --version | head -1), dpkg $(dpkg-query -W -f='${Version}' dpkg)"

work=$(mktemp -d /tmp/cambackup-package.XXXXXX)
trap 'umount "$work/run-as-unit/media" 2>/dev/null || true; rm -rf "$work"' EXIT

step "unit: systemd-analyze security (offline)"
systemd-analyze security --offline=true --threshold="$SECURITY_THRESHOLD" systemd/cambackup.service \
    >"$work/security.txt" 2>&1 || { cat "$work/security.txt"; fail "exposure above 1.9"; }
ok "$(grep 'Overall exposure level' "$work/security.txt")"

step "yocto: crate list matches Cargo.lock"
python3 packaging/yocto/update-crates.py Cargo.lock >"$work/crates.inc"
diff -u packaging/yocto/cambackup-crates.inc "$work/crates.inc" >/dev/null \
    || fail "packaging/yocto/cambackup-crates.inc is stale: run packaging/yocto/update-crates.py > packaging/yocto/cambackup-crates.inc"
ok "packaging/yocto/cambackup-crates.inc lists the $(grep -c 'crate://' "$work/crates.inc") crates of Cargo.lock"

step "build the .deb"
# The man page and completions first (packaging/gen-assets.sh), from the release binary.
cargo build --release --locked --bin cambackup
packaging/gen-assets.sh target/release/cambackup
cargo deb --locked >"$work/cargo-deb.out"
deb=$(tail -n 1 "$work/cargo-deb.out")
[ -f "$deb" ] || fail "cargo deb did not print a .deb path (got: $deb)"
dpkg-deb --info "$deb" >/dev/null || fail "$deb is not a valid package"
ok "built $deb ($(stat -c %s "$deb") bytes)"

step "install into a throwaway root"
root="$work/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/log"
: >"$root/var/lib/dpkg/status"
: >"$root/var/lib/dpkg/available"
dpkg_root() { dpkg --root="$root" --force-script-chrootless --force-depends "$@"; }
dpkg_root -i "$deb"
[ "$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}' cambackup)" = "install ok installed" ] \
    || fail "cambackup is not installed in the throwaway root"
for f in usr/bin/cambackup etc/cambackup/cambackup.toml usr/lib/systemd/system/cambackup.service \
    usr/lib/sysusers.d/cambackup.conf usr/lib/tmpfiles.d/cambackup.conf; do
    [ -e "$root/$f" ] || fail "/$f is not installed"
done
for f in usr/share/man/man1/cambackup.1.gz usr/share/man/man1/cambackup-status.1.gz usr/share/bash-completion/completions/cambackup \
    usr/share/zsh/vendor-completions/_cambackup usr/share/fish/vendor_completions.d/cambackup.fish; do
    [ -s "$root/$f" ] || fail "/$f is not installed"
done
grep -q 'check-config' "$root/usr/share/bash-completion/completions/cambackup" \
    || fail "the bash completions do not know \`check-config\`"
# The man page renders: man -l (man-db), else mandoc, else groff; warnings count as failures.
page="$root/usr/share/man/man1/cambackup.1.gz"
if command -v man >/dev/null && man --version >/dev/null 2>&1; then
    rendered=$(MANWIDTH=80 man -l "$page" 2>"$work/man.err")
elif command -v mandoc >/dev/null; then
    rendered=$(zcat "$page" | mandoc -T utf8 -W warning 2>"$work/man.err")
else
    command -v groff >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq groff-base; }
    rendered=$(zcat "$page" | groff -man -Tutf8 -ww 2>"$work/man.err")
fi
[ ! -s "$work/man.err" ] || { cat "$work/man.err"; fail "the man page renders with warnings"; }
grep -q 'completions' <<<"$rendered" || fail "the rendered man page does not list the subcommands (completions)"
ok "the man pages (cambackup.1 renders and lists the subcommands, one page each) and the bash, zsh and fish completions are installed"
grep -qx /etc/cambackup/cambackup.toml "$root/var/lib/dpkg/info/cambackup.conffiles" \
    || fail "/etc/cambackup/cambackup.toml is not a conffile"
ok "files installed; the config is a conffile"
uid=$(awk -F: '$1 == "cambackup" { print $3 }' "$root/etc/passwd")
[ -n "$uid" ] || fail "postinst did not create the user cambackup (systemd-sysusers)"
[ "$(stat -c '%a %u' "$root/var/lib/cambackup")" = "700 $uid" ] \
    || fail "/var/lib/cambackup is $(stat -c '%a %u' "$root/var/lib/cambackup"), want 700 $uid"
[ -L "$root/etc/systemd/system/multi-user.target.wants/cambackup.service" ] \
    || fail "postinst did not enable cambackup.service"
ok "postinst created user cambackup (uid $uid), /var/lib/cambackup 0700, enabled the unit"

step "installed binary validates the installed config"
bin="$root/usr/bin/cambackup"
out=$("$bin" check-config --config "$root/etc/cambackup/cambackup.toml" 2>&1) \
    || fail "check-config refused the installed default config: $out"
grep -q 'endpoint = "https://upload.example.com/files/"' <<<"$out" \
    || fail "check-config exited 0 but did not print the effective settings: $out"
ok "check-config accepts /etc/cambackup/cambackup.toml"
sed 's/^settle_secs =/setle_secs =/' "$root/etc/cambackup/cambackup.toml" >"$work/misspelt.toml"
set +e
out=$("$bin" check-config --config "$work/misspelt.toml" 2>&1)
rc=$?
set -e
[ "$rc" = 2 ] || fail "check-config on a misspelt key exited $rc, want 2: $out"
grep -q 'media.setle_secs' <<<"$out" || fail "check-config did not name the misspelt key: $out"
ok "check-config refuses a misspelt key with exit 2 and names it"

step "installed binary as the unit runs it: user, umask, READY=1, WATCHDOG=1, an upload, SIGTERM"
# No systemd as PID 1 here: run the daemon the way the unit would (its user, UMask=0077,
# CAMBACKUP_LOG, NOTIFY_SOCKET, WATCHDOG_USEC/WATCHDOG_PID) and listen on the notify socket.
# Not covered: the unit's sandboxing (namespaces, seccomp), which only systemd applies.
run="$work/run-as-unit"
mkdir -p "$run/state" "$run/rt" "$run/media"
# The packaged config sets media.mount_required: the card must be a mount point, as on the
# camera. A small tmpfs stands in for the SD card.
mount -t tmpfs -o size=16m cambackup-card "$run/media"
chown "$uid:$uid" "$run/state" "$run/rt"
chmod 700 "$run/state"
chmod 755 "$work" "$run" "$run/media"
sed -e "s|^root = .*|root = \"$run/media\"|" -e "s|^dir = .*|dir = \"$run/state\"|" \
    -e "s|^socket = .*|socket = \"$run/rt/control.sock\"|" \
    "$root/etc/cambackup/cambackup.toml" >"$run/cambackup.toml"
# A real tus server on loopback (@tus/server from interop/'s lockfile) and a photo on the card.
[ -d interop/node_modules ] || npm ci --prefix interop --no-audit --no-fund
tus_store="$work/tus-store"
mkdir -p "$tus_store" "$run/media/DCIM/100MEDIA"
TUS_TOKEN=ci-token node interop/server.mjs "$tus_store" "$work/tus.log" >"$work/tus.url" &
tus_pid=$!
trap 'kill $tus_pid 2>/dev/null || true; umount "$run/media" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -s "$work/tus.url" ] && break; sleep 0.1; done
tus_url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$work/tus.url")
head -c 3000000 /dev/urandom >"$run/media/DCIM/100MEDIA/P0001.JPG"
chmod 755 "$run/media/DCIM" "$run/media/DCIM/100MEDIA"
chmod 644 "$run/media/DCIM/100MEDIA/P0001.JPG"
touch -d '1 hour ago' "$run/media/DCIM/100MEDIA/P0001.JPG"
# This machine's own /sys may show no default route; give the daemon a camera on Wi-Fi.
mkdir -p "$run/sys/class/net/wlan0/wireless" "$run/proc/net"
echo up >"$run/sys/class/net/wlan0/operstate"
printf 'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\nwlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n' >"$run/proc/net/route"
chmod -R a+rX "$run/sys" "$run/proc"
sed -i -e "s|^endpoint = .*|endpoint = \"$tus_url\"|" -e "s|^sysfs = .*|sysfs = \"$run/sys\"|" \
    -e "s|^proc = .*|proc = \"$run/proc\"|" "$run/cambackup.toml"
chmod 644 "$run/cambackup.toml"
python3 - "$run/notify.sock" >"$run/notify.log" 2>&1 <<'EOF' &
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
s.settimeout(1.0)
end = time.time() + 30
while time.time() < end:
    try:
        msg = s.recv(4096).decode()
    except socket.timeout:
        continue
    print(msg.strip(), flush=True)
    if "STOPPING=1" in msg:
        break
EOF
listener=$!
for _ in $(seq 50); do [ -S "$run/notify.sock" ] && break; sleep 0.1; done
[ -S "$run/notify.sock" ] || fail "the notify listener did not start"
NOTIFY_SOCKET="$run/notify.sock" WATCHDOG_USEC=2000000 CAMBACKUP_LOG=info \
    sh -c 'export WATCHDOG_PID=$$; umask 077; exec setpriv --reuid="$1" --regid="$1" --clear-groups --no-new-privs -- "$2" daemon --config "$3"' \
    sh "$uid" "$bin" "$run/cambackup.toml" >"$run/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do grep -q WATCHDOG=1 "$run/notify.log" && break; sleep 0.1; done
# And it uploads: pair, consent (relaxing the conditions this CI machine cannot meet: it has no
# battery or Wi-Fi), and the photo must arrive byte-identical at a real tus server on loopback.
ctl() { curl -sS --fail-with-body --unix-socket "$run/rt/control.sock" -H 'content-type: application/json' "$@"; }
ctl -X PUT http://localhost/v1/account -d '{"user_id":"ci-user","token":"ci-token"}' >/dev/null \
  || { cat "$run/daemon.log"; fail "pairing over the socket failed"; }
ctl -X PATCH http://localhost/v1/settings \
  -d '{"auto_upload":true,"network":"any","require_charging":false,"require_idle":false}' >/dev/null \
  || { cat "$run/daemon.log"; fail "setting consent over the socket failed"; }
arrived=
for _ in $(seq 300); do
  for f in "$tus_store"/*; do
    case "$f" in *.json) continue ;; esac
    [ -f "$f" ] && cmp -s "$f" "$run/media/DCIM/100MEDIA/P0001.JPG" && arrived=$f && break 2
  done
  sleep 0.1
done
[ -n "$arrived" ] || { cat "$run/daemon.log"; fail "the photo did not arrive at the tus server"; }
ok "as uid $uid: a photo uploaded byte-identical to @tus/server"
kill -TERM "$daemon"
set +e
wait "$daemon"
rc=$?
wait "$listener"
set -e
grep -qx READY=1 "$run/notify.log" || { cat "$run/daemon.log"; fail "the daemon did not send READY=1"; }
grep -qx WATCHDOG=1 "$run/notify.log" || { cat "$run/daemon.log"; fail "the daemon did not send WATCHDOG=1 with WATCHDOG_USEC set"; }
grep -qx STOPPING=1 "$run/notify.log" || { cat "$run/daemon.log"; fail "the daemon did not send STOPPING=1 on SIGTERM"; }
[ "$rc" = 0 ] || { cat "$run/daemon.log"; fail "the daemon exited $rc after SIGTERM"; }
[ -z "$(find "$run/state" -type f -perm /077)" ] || fail "the daemon left files in its state dir readable by others"
ok "as uid $uid: READY=1, WATCHDOG=1, STOPPING=1, exit 0 on SIGTERM; state files private"

step "unit: systemd-analyze verify"
# verify needs the unit's dependencies (sysinit.target, ...) and an executable at ExecStart=.
# A second root holds this host's units, the installed unit and the installed binary.
vroot="$work/verify"
mkdir -p "$vroot/usr/lib/systemd" "$vroot/usr/bin"
cp -a /usr/lib/systemd/system "$vroot/usr/lib/systemd/"
cp "$root/usr/lib/systemd/system/cambackup.service" "$vroot/usr/lib/systemd/system/"
cp "$bin" "$vroot/usr/bin/cambackup"
# verify exits 0 on unknown keys and only warns: any output at all is a failure.
if ! systemd-analyze verify --root="$vroot" cambackup.service >"$work/verify.txt" 2>&1 \
    || [ -s "$work/verify.txt" ]; then
    cat "$work/verify.txt"
    fail "systemd-analyze verify"
fi
ok "systemd-analyze verify: clean"

step "upgrade (reinstall) and purge"
mkdir -p "$root/var/lib/cambackup" && echo state >"$root/var/lib/cambackup/cambackup.db"
dpkg_root -i "$deb"
[ -f "$root/var/lib/cambackup/cambackup.db" ] || fail "reinstalling lost the state directory"
ok "reinstall keeps the state directory"
dpkg_root --purge cambackup
for f in var/lib/cambackup etc/cambackup/cambackup.toml usr/bin/cambackup; do
    [ ! -e "$root/$f" ] || fail "purge left /$f"
done
ok "purge removes the state directory, the config and the binary"

printf '\npackage: %d passed, 0 failed\n' "$passed"
