//! The user's settings (INTERFACE.md section 4): what the app may change, stored in the database.
//!
//! Invariant: a [`Settings`] value is always valid; a patch is checked field by field at the edge
//! ([`SettingsPatch`]) and applied whole or not at all.

use serde::{Deserialize, Serialize};

use crate::media::Kind;

/// Which networks the user allows uploads over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkPref {
    /// Wi-Fi only.
    Wifi,
    /// Wi-Fi or Ethernet: anything but cellular.
    Unmetered,
    /// Cellular too.
    Any,
}

impl NetworkPref {
    pub const ALL: [NetworkPref; 3] = [NetworkPref::Wifi, NetworkPref::Unmetered, NetworkPref::Any];

    /// From its name.
    pub fn parse(s: &str) -> Option<NetworkPref> {
        NetworkPref::ALL.into_iter().find(|n| n.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkPref::Wifi => "wifi",
            NetworkPref::Unmetered => "unmetered",
            NetworkPref::Any => "any",
        }
    }
}

/// The user's choices. `auto_upload` is the consent: nothing goes up automatically without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub auto_upload: bool,
    pub network: NetworkPref,
    pub require_charging: bool,
    pub require_idle: bool,
    pub data_types: Vec<Kind>,
    /// The cap on the upload rate, in KiB/s; 0 = no limit.
    pub max_rate_kib_per_sec: u64,
}

/// The highest `max_rate_kib_per_sec` (about 1 TiB/s): larger numbers are typing mistakes.
pub const MAX_RATE_KIB_PER_SEC: u64 = 1 << 30;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            auto_upload: false,
            network: NetworkPref::Wifi,
            require_charging: true,
            require_idle: true,
            data_types: vec![Kind::Photo, Kind::Video],
            max_rate_kib_per_sec: 0,
        }
    }
}

/// A partial update from `PATCH /v1/settings` or `cambackup settings KEY VALUE`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub auto_upload: Option<bool>,
    pub network: Option<NetworkPref>,
    pub require_charging: Option<bool>,
    pub require_idle: Option<bool>,
    pub data_types: Option<Vec<Kind>>,
    pub max_rate_kib_per_sec: Option<u64>,
}

/// A patch that names a field with a value out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {problem}")]
pub struct InvalidSetting {
    /// The setting's name.
    pub field: &'static str,
    /// What is wrong, and what is allowed.
    pub problem: String,
}

impl SettingsPatch {
    /// Checks the values a type cannot: refused here, at the edge, naming the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(r) = self.max_rate_kib_per_sec {
            if r > MAX_RATE_KIB_PER_SEC {
                return Err(InvalidSetting {
                    field: "max_rate_kib_per_sec",
                    problem: format!(
                        "{r} is over the most allowed, {MAX_RATE_KIB_PER_SEC} (0 means no limit)"
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The settings with `patch` applied. Duplicate data types collapse.
    pub fn apply(&self, patch: &SettingsPatch) -> Settings {
        let mut s = self.clone();
        if let Some(v) = patch.auto_upload {
            s.auto_upload = v;
        }
        if let Some(v) = patch.network {
            s.network = v;
        }
        if let Some(v) = patch.require_charging {
            s.require_charging = v;
        }
        if let Some(v) = patch.require_idle {
            s.require_idle = v;
        }
        if let Some(v) = &patch.data_types {
            let mut v = v.clone();
            v.sort();
            v.dedup();
            s.data_types = v;
        }
        if let Some(v) = patch.max_rate_kib_per_sec {
            s.max_rate_kib_per_sec = v;
        }
        s
    }

    /// The upload rate cap in bytes per second (0: none).
    pub fn max_rate_bytes_per_sec(&self) -> u64 {
        self.max_rate_kib_per_sec.saturating_mul(1024)
    }

    /// Whether files of `kind` may go up automatically.
    pub fn wants(&self, kind: Kind) -> bool {
        self.data_types.contains(&kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_changes_only_named_fields() {
        let s = Settings::default();
        let p: SettingsPatch = serde_json::from_str(r#"{"auto_upload": true}"#).unwrap();
        let t = s.apply(&p);
        assert!(t.auto_upload);
        assert_eq!(t.network, s.network);
        assert_eq!(t.data_types, s.data_types);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(serde_json::from_str::<SettingsPatch>(r#"{"auto_uplaod": true}"#).is_err());
        assert!(serde_json::from_str::<SettingsPatch>(r#"{"network": "5g"}"#).is_err());
        assert!(serde_json::from_str::<SettingsPatch>(r#"{"data_types": ["audio"]}"#).is_err());
        assert!(serde_json::from_str::<SettingsPatch>(r#"{"max_rate_kib_per_sec": -1}"#).is_err());
        let too_fast: SettingsPatch =
            serde_json::from_str(r#"{"max_rate_kib_per_sec": 9999999999999}"#).unwrap();
        assert_eq!(
            too_fast.validate().unwrap_err().field,
            "max_rate_kib_per_sec"
        );
    }

    #[test]
    fn a_choices_file_from_before_the_new_settings_reads_with_their_defaults() {
        let old = r#"{"auto_upload": true, "network": "any", "require_charging": false,
                      "require_idle": true, "data_types": ["photo"]}"#;
        let s: Settings = serde_json::from_str(old).unwrap();
        assert!(s.auto_upload);
        assert_eq!(s.max_rate_kib_per_sec, 0);
    }
}
