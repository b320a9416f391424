################################################################################
#
# cambackup
#
################################################################################

# REPLACE: your copy of the repository and the release's tag or commit. For development,
# CAMBACKUP_OVERRIDE_SRCDIR = /path/to/checkout in local.mk builds a working tree instead.
CAMBACKUP_VERSION = v0.1.0
CAMBACKUP_SITE = https://git.example.com/cambackup.git
CAMBACKUP_SITE_METHOD = git
CAMBACKUP_LICENSE = MIT or Apache-2.0
# The sources carry no license files yet; set CAMBACKUP_LICENSE_FILES once they do, or
# `make legal-info` reports the license as unverified.

# The cargo-package infrastructure vendors every crate of Cargo.lock into the source tarball
# at download time and builds with cargo --offline --locked: no crate list to maintain here.

define CAMBACKUP_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(@D)/examples/cambackup.toml \
		$(TARGET_DIR)/etc/cambackup/cambackup.toml
endef
CAMBACKUP_POST_INSTALL_TARGET_HOOKS += CAMBACKUP_INSTALL_CONFIG

# The preset enables the unit whatever the other presets say: Buildroot applies presets
# (systemctl preset-all) when it assembles the root file system.
define CAMBACKUP_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/systemd/cambackup.service \
		$(TARGET_DIR)/usr/lib/systemd/system/cambackup.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/cambackup.tmpfiles \
		$(TARGET_DIR)/usr/lib/tmpfiles.d/cambackup.conf
	mkdir -p $(TARGET_DIR)/usr/lib/systemd/system-preset
	echo "enable cambackup.service" > \
		$(TARGET_DIR)/usr/lib/systemd/system-preset/50-cambackup.preset
endef

# The unit runs the daemon as this system user. Add the app bridge's user to the group
# cambackup (its own _USERS line, groups field) so that it can reach the control socket.
define CAMBACKUP_USERS
	cambackup -1 cambackup -1 * - - - cambackup media backup daemon
endef

$(eval $(cargo-package))
