//! The gate: the one place that decides whether an upload may run. STUB: the conditions helper
//! replaces this file.

use serde::Serialize;

use crate::conditions::Snapshot;
use crate::config;
use crate::settings::Settings;

/// One reason uploads may not run (CONTRACT section 5 `blocked_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Block {
    AutoUploadOff,
    NotCharging,
    BatteryLow,
    NetworkNotAllowed,
    Offline,
    Recording,
    Busy,
    TooHot,
}

/// The gate's answer: what blocks automatic uploads and what blocks manual ones.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Verdict {
    pub auto: Vec<Block>,
    pub manual: Vec<Block>,
}

impl Verdict {
    pub fn auto_allowed(&self) -> bool {
        self.auto.is_empty()
    }
    pub fn manual_allowed(&self) -> bool {
        self.manual.is_empty()
    }
}

/// Decides from a device snapshot, the user's settings and the operator's limits.
pub fn decide(_s: &Snapshot, settings: &Settings, _cfg: &config::Conditions) -> Verdict {
    let mut v = Verdict::default();
    if !settings.auto_upload {
        v.auto.push(Block::AutoUploadOff);
    }
    v
}
