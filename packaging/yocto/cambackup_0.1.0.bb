SUMMARY = "Backs up a camera's photos and videos to a tus 1.0 server"
DESCRIPTION = "cambackup watches the camera's card and uploads new photos and videos to a \
tus 1.0 server once the user has switched automatic upload on and the camera is idle, \
charging and on an allowed network. The camera's app talks to it over a Unix socket."
SECTION = "net"
LICENSE = "MIT | Apache-2.0"
# The sources carry no license files yet (Cargo.toml says "MIT OR Apache-2.0"): point at the
# common texts until they do.
LIC_FILES_CHKSUM = " \
    file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302 \
    file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10 \
"

# REPLACE: your copy of the repository and the release's commit.
SRC_URI = "git://git.example.com/cambackup.git;protocol=https;branch=main"
SRCREV = "0000000000000000000000000000000000000000"
S = "${WORKDIR}/git"
# Releases from 5.1 (styhead) on unpack into UNPACKDIR: there use
# S = "${UNPACKDIR}/git"

inherit cargo cargo-update-recipe-crates systemd useradd

# The targets built and tested upstream (docs/deploying.md, "Supported targets"): aarch64,
# 32-bit ARM (ARMv7-A hard-float, e.g. Cortex-A7; older ARM cores are not tested) and x86_64,
# with glibc. TCLIBC = "musl" may work but is not tested.
COMPATIBLE_HOST = "(aarch64|arm|x86_64).*-linux"

# Every crate of Cargo.lock as a crate:// SRC_URI entry with its checksum, so that do_fetch gets
# them and cargo builds --frozen. Regenerate after each Cargo.lock change with
#   bitbake -c update_crates cambackup
# (packaging/yocto/update-crates.py writes the same list without bitbake; .ci/package.sh fails
# when the committed list no longer matches Cargo.lock).
require ${BPN}-crates.inc

# The crate's release profile strips the binary; OE splits debug info itself and its QA fails
# an already-stripped binary.
CARGO_BUILD_FLAGS += "--config profile.release.strip=false"

do_install:append() {
    install -D -m 0644 ${S}/systemd/cambackup.service ${D}${systemd_system_unitdir}/cambackup.service
    install -D -m 0644 ${S}/systemd/cambackup.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/cambackup.conf
    # The maker's settings: replace this file from your own layer (a bbappend with your
    # cambackup.toml in SRC_URI) rather than editing it on the device.
    install -D -m 0644 ${S}/examples/cambackup.toml ${D}${sysconfdir}/cambackup/cambackup.toml
}

# The unit runs the daemon as this system user (User=cambackup, Group=cambackup). Add the app
# bridge's user to the group `cambackup` so it can reach the control socket.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --no-create-home --home-dir / --shell /sbin/nologin cambackup"

SYSTEMD_SERVICE:${PN} = "cambackup.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

CONFFILES:${PN} = "${sysconfdir}/cambackup/cambackup.toml"
FILES:${PN} += "${nonarch_libdir}/tmpfiles.d/cambackup.conf"

# TLS trust: reqwest with rustls-tls-native-roots reads the system's CA bundle.
RDEPENDS:${PN} += "ca-certificates"
