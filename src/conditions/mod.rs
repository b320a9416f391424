//! What the device says about itself (CONTRACT section 3), read from `conditions.sysfs` and
//! `conditions.proc`. STUB: the conditions helper replaces this file.

use std::time::Duration;

use serde::Serialize;

use crate::config;

/// The network the default route would use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    Wifi,
    Ethernet,
    Cellular,
    Offline,
}

/// One reading of the device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// On external power (charging or full); `None` when the device does not say.
    pub charging: Option<bool>,
    pub battery_percent: Option<u8>,
    pub network: Network,
    pub interface: Option<String>,
    pub temp_c: Option<f64>,
    pub load: Option<f64>,
    /// Recording flag file present or `PUT /v1/recording {"active": true}` in force.
    pub recording: bool,
    /// Seconds since the last write under the media root (`None`: none seen since start).
    pub secs_since_media_write: Option<u64>,
}

/// Signals that come from inside the daemon rather than from files: the firmware's
/// `PUT /v1/recording` and media writes the watcher sees. Shared between tasks.
#[derive(Debug, Default)]
pub struct Activity {}

impl Activity {
    pub fn new() -> Activity {
        Activity {}
    }
    pub fn set_recording(&self, _active: bool) {}
    pub fn recording(&self) -> bool {
        false
    }
    pub fn note_media_write(&self) {}
    pub fn since_last_write(&self) -> Option<Duration> {
        None
    }
}

/// Reads the device files; remembers which were missing so each is logged once.
pub struct Reader {}

impl Reader {
    pub fn new(_cfg: &config::Conditions) -> Reader {
        Reader {}
    }
    pub fn read(&mut self, activity: &Activity) -> Snapshot {
        Snapshot {
            charging: Some(true),
            battery_percent: None,
            network: Network::Wifi,
            interface: None,
            temp_c: None,
            load: None,
            recording: activity.recording(),
            secs_since_media_write: activity.since_last_write().map(|d| d.as_secs()),
        }
    }
}
