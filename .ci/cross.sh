#!/usr/bin/env bash
# The camera's SoCs (docs/deploying.md, "Supported targets"): for each first-class target,
#
#   1. cross-builds the release binary and its .deb with cargo-deb (`--target`), so the binary
#      tested below is the one shipped;
#   2. checks the .deb: Architecture, Depends, the binary's ELF machine and class, stripped,
#      under the 6 MiB flash goal;
#   3. installs it into a throwaway root (`dpkg --root`, maintainer scripts run for real against
#      it, as .ci/package.sh does for x86_64) and runs the installed binary under qemu-user:
#      `--version`, `check-config` on the installed config (exit 0), a misspelt key (exit 2);
#   4. runs the end-to-end suite (tests/it, incl. the interop suite against @tus/server, the
#      4 GiB test and the FAT32/exFAT card tests) with the ARM binary as the daemon under test,
#      behind qemu-user
#      (CAMBACKUP_TEST_RUNNER / CAMBACKUP_TEST_BIN: testkit/src/daemon.rs). The tests and the
#      receivers stay native; only the daemon and the CLI are emulated.
#
#   .ci/cross.sh                                   # both targets
#   .ci/cross.sh armv7-unknown-linux-gnueabihf     # one
#   CROSS_TESTS=0 .ci/cross.sh                     # build, package and check only
#   CROSS_SUITE_TARGETS=armv7-unknown-linux-gnueabihf .ci/cross.sh   # both built and checked,
#                                                  # the suite under qemu on armv7 only (CI)
#
# Run as root on Debian (CI is): installs Debian's cross gcc and libc (the linker, and the C
# compiler for SQLite and ring's assembly), qemu-user, the rustup targets and cargo-deb.
# Prints the time of each step; "cross: N passed, 0 failed" at the end, or stops at the first
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

# triple | Debian arch | qemu-user binary | sysroot of the cross libc | readelf machine | class
TARGETS_TABLE="
aarch64-unknown-linux-gnu     arm64 qemu-aarch64 /usr/aarch64-linux-gnu    AArch64 ELF64
armv7-unknown-linux-gnueabihf armhf qemu-arm     /usr/arm-linux-gnueabihf ARM     ELF32
"
MAX_BINARY_BYTES=$((6 * 1024 * 1024)) # the flash goal (docs/deploying.md)
CARGO_DEB_VERSION=$(sed -n 's/^CARGO_DEB_VERSION=//p' .ci/package.sh)
passed=0

step() { printf '\n== cross: %s (%s)\n' "$*" "$(date +%T)"; }
ok() { passed=$((passed + 1)); printf 'ok: %s\n' "$*"; }
fail() { printf 'cross: FAIL: %s\n' "$*" >&2; exit 1; }
row() { awk -v t="$1" '$1 == t' <<<"$TARGETS_TABLE"; }

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(awk 'NF { print $1 }' <<<"$TARGETS_TABLE")
for t in "${targets[@]}"; do [ -n "$(row "$t")" ] || fail "unknown target $t"; done

step "tools"
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || missing+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
# qemu-user (not -static, not -binfmt): the tests name the emulator themselves, so nothing is
# registered with the kernel's binfmt_misc and the host's behaviour is left alone.
command -v qemu-aarch64 >/dev/null && command -v qemu-arm >/dev/null || missing+=(qemu-user)
command -v file >/dev/null || missing+=(file)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v deb-systemd-helper >/dev/null || missing+=(init-system-helpers)
command -v systemd-sysusers >/dev/null || missing+=(systemd)
# tests/it/card_fs.rs, run below with the ARM daemon: the card images are made and mounted by
# the native test (testkit/src/card.rs); only the daemon reading them is emulated.
command -v mkfs.vfat >/dev/null || missing+=(dosfstools)
command -v fsck.vfat >/dev/null || missing+=(dosfstools)
command -v mkfs.exfat >/dev/null || missing+=(exfatprogs)
command -v mount.exfat-fuse >/dev/null || missing+=(exfat-fuse)
command -v fusermount >/dev/null || missing+=(fuse)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
rustup target add "${targets[@]}"
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
echo "$(aarch64-linux-gnu-gcc --version | head -1); $(qemu-aarch64 --version | head -1); $(cargo deb --version)"

work=$(mktemp -d /tmp/cambackup-cross.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The man page and completions the .debs install: made once on the host (they do not depend on
# the target).
packaging/gen-assets.sh

for t in "${targets[@]}"; do
    read -r _ arch qemu sysroot machine class <<<"$(row "$t")"
    run() { "$qemu" -L "$sysroot" "$@"; }

    step "$t: cargo deb --target $t (release profile)"
    s=$SECONDS
    cargo deb --locked --target "$t" >"$work/cargo-deb.out"
    deb=$(tail -n 1 "$work/cargo-deb.out")
    [ -f "$deb" ] || fail "cargo deb did not print a .deb path (got: $deb)"
    ok "built $deb in $((SECONDS - s)) s"

    step "$t: the package"
    got=$(dpkg-deb -f "$deb" Architecture)
    [ "$got" = "$arch" ] || fail "$deb: Architecture $got, want $arch"
    depends=$(dpkg-deb -f "$deb" Depends)
    grep -q "libc6" <<<"$depends" || fail "$deb: Depends has no libc6: $depends"
    mkdir -p "$work/$t"
    dpkg-deb -x "$deb" "$work/$t"
    bin="$work/$t/usr/bin/cambackup"
    readelf -h "$bin" | grep -Eq "Machine: +$machine\$" || fail "$bin: $(readelf -h "$bin" | grep Machine)"
    readelf -h "$bin" | grep -Eq "Class: +$class\$" || fail "$bin: $(readelf -h "$bin" | grep Class)"
    file "$bin" | grep -q ', stripped' || fail "$bin is not stripped: $(file "$bin")"
    size=$(stat -c %s "$bin")
    [ "$size" -lt "$MAX_BINARY_BYTES" ] || fail "$bin is $size bytes, over the 6 MiB flash goal"
    ok "Architecture: $arch; Depends: $depends; $(file -b "$bin" | cut -d, -f1-2); $size bytes stripped"

    step "$t: installed into a throwaway root, run under $qemu"
    root="$work/root-$t"
    mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/log"
    : >"$root/var/lib/dpkg/status"
    : >"$root/var/lib/dpkg/available"
    # --force-architecture: the root's dpkg database is this amd64 host's idea of the machine.
    dpkg --root="$root" --force-script-chrootless --force-depends --force-architecture -i "$deb" \
        >"$work/dpkg.out" 2>&1 || { cat "$work/dpkg.out"; fail "dpkg -i $deb"; }
    [ "$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status} ${Architecture}' cambackup)" \
        = "install ok installed $arch" ] || fail "cambackup:$arch is not installed in the throwaway root"
    awk -F: '$1 == "cambackup"' "$root/etc/passwd" | grep -q . || fail "postinst did not create the user"
    version=$(run "$root/usr/bin/cambackup" --version) || fail "--version under $qemu"
    # `cambackup 0.1.0 (5aeb0de)`: the version, and the commit it was built from.
    case "$version" in
    "cambackup $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1) ("*")") ;;
    *) fail "--version printed: $version" ;;
    esac
    out=$(run "$root/usr/bin/cambackup" check-config --config "$root/etc/cambackup/cambackup.toml" 2>&1) \
        || fail "check-config refused the installed default config: $out"
    sed 's/^settle_secs =/setle_secs =/' "$root/etc/cambackup/cambackup.toml" >"$work/misspelt.toml"
    set +e
    out=$(run "$root/usr/bin/cambackup" check-config --config "$work/misspelt.toml" 2>&1)
    rc=$?
    set -e
    [ "$rc" = 2 ] && grep -q media.setle_secs <<<"$out" || fail "check-config on a misspelt key: exit $rc: $out"
    ok "installed; postinst ran; $version; check-config: 0 on the installed config, 2 on a misspelt key"

    # CROSS_SUITE_TARGETS (space-separated triples) limits the suite to those targets; unset,
    # every target runs it.
    if [ "${CROSS_TESTS:-1}" != 0 ] && [[ " ${CROSS_SUITE_TARGETS:-$t} " == *" $t "* ]]; then
        # Without tests/it/cloud.rs: the reference tier (Swift, haproxy, Redis, @tus/server) is
        # the server's side, the same for every camera; the ARM daemon's tus client is the one
        # the suite already drives against @tus/server and the receiver. Under qemu its minutes
        # would double the step.
        step "$t: the end-to-end suite (tests/it) with the daemon under $qemu"
        [ -d interop/node_modules ] || npm ci --prefix interop --no-audit --no-fund
        s=$SECONDS
        CAMBACKUP_TEST_RUNNER="$qemu -L $sysroot" CAMBACKUP_TEST_BIN="$PWD/target/$t/release/cambackup" \
            cargo test --locked --test it -- --skip cloud:: 2>&1 | tee "$work/it.out" | grep -E '^test result|FAILED|panicked' || true
        grep -q '^test result: ok' "$work/it.out" || { tail -n 200 "$work/it.out"; fail "tests/it under $qemu"; }
        ok "tests/it under $qemu: $(sed -nE 's/^test result: ok\. ([0-9]+ passed; [0-9]+ failed).*/\1/p' "$work/it.out") in $((SECONDS - s)) s"
    fi
done

printf '\ncross: %d passed, 0 failed\n' "$passed"
