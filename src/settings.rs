//! The user's settings (INTERFACE.md section 4): what the app may change, stored in the database.
//!
//! Invariant: a [`Settings`] value is always valid; a patch is checked field by field at the edge
//! ([`SettingsPatch`]) and applied whole or not at all. A setting is declared once, as a row of
//! the table below (`settings_table!`): the struct, the patch, the checks, what withdraws, the
//! CLI's parser and help, the saved choices and the docs test all follow from that row.

use std::fmt;

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

/// Whether the daemon may free space on the card by deleting backed-up originals (INTERFACE.md
/// section 4 `free_space`): the user's consent to deletion, off unless the user turns it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreeSpace {
    /// Never delete anything from the card.
    #[default]
    Off,
    /// When the card runs low, delete verified backed-up originals, oldest first.
    WhenLow,
}

impl FreeSpace {
    pub const ALL: [FreeSpace; 2] = [FreeSpace::Off, FreeSpace::WhenLow];

    /// From its name.
    pub fn parse(s: &str) -> Option<FreeSpace> {
        FreeSpace::ALL.into_iter().find(|f| f.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FreeSpace::Off => "off",
            FreeSpace::WhenLow => "when_low",
        }
    }
}

/// A daily window in the device's local time, `HH:MM-HH:MM`: from the start (included) to the
/// end (excluded); an end before the start crosses midnight (`22:00-06:00`); an end equal to
/// the start is the whole day (`00:00-00:00`), as a clock that goes round once reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight, 0..1440.
    pub start: u16,
    /// Minutes after midnight, 0..1440; equal to `start` for the whole day.
    pub end: u16,
}

/// The highest `cellular_daily_mib` (1 PiB a day): larger numbers are typing mistakes.
pub const MAX_CELLULAR_DAILY_MIB: u64 = 1 << 30;

/// The most windows a schedule may list.
pub const MAX_WINDOWS: usize = 48;

impl Window {
    /// From `HH:MM-HH:MM` (00:00 to 23:59 each).
    pub fn parse(s: &str) -> Result<Window, String> {
        let bad = || format!("`{s}` is not a window like \"01:00-07:00\" (HH:MM-HH:MM, 24-hour)");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        Ok(Window { start, end })
    }

    /// Whether `minute` (after local midnight) is inside the window.
    pub fn contains(self, minute: u16) -> bool {
        if self.start == self.end {
            true
        } else if self.start < self.end {
            self.start <= minute && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Window, D::Error> {
        let s = String::deserialize(d)?;
        Window::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The highest `max_rate_kib_per_sec` (about 1 TiB/s): larger numbers are typing mistakes.
pub const MAX_RATE_KIB_PER_SEC: u64 = 1 << 30;

/// The settings table: each setting is one row, and what every setting needs follows from it:
/// the [`Settings`] struct and its default, the [`SettingsPatch`] of `PATCH /v1/settings`, the
/// checks of both (the API's, the CLI's and `[defaults]`'s: [`SettingsPatch::validate`]), what
/// a change withdraws ([`Settings::only_withdraws`], [`Settings::withdrawn_part`]), what an
/// unrecorded choice allows ([`Settings::unrecorded`], for `choices.json`), the CLI's parser
/// ([`SettingsPatch::from_cli`], by the value's [`SettingValue`] type) and help
/// ([`Settings::HELP`]), `check-config`'s `[defaults]` (by [`Settings::NAMES`]), and the docs
/// test (INTERFACE.md section 4 and the OpenAPI schemas name each of [`Settings::NAMES`]).
///
/// A row: the doc comment, `name: Type = default,` then in braces
/// - `help`: what `cambackup settings --help` says of its values;
/// - `allows_less`: whether the new value (second) allows no more than the old (first): a
///   change every field of which allows less is a withdrawal, in force even on a full disk;
/// - `check` (optional): the bounds a type cannot hold, as the problem named in the 400;
/// - `unrecorded` (optional): the value when `choices.json` has no record of the user's word
///   (a setting that grants something the user must have said yes to: it allows nothing).
macro_rules! settings_table {
    ($(
        $(#[$doc:meta])*
        $name:ident: $ty:ty = $default:expr, {
            help: $help:literal,
            allows_less: $less:expr,
            $(check: $check:expr,)?
            $(unrecorded: $unrecorded:expr,)?
        }
    )*) => {
        /// The user's choices. `auto_upload` is the consent: nothing goes up automatically
        /// without it.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $( $(#[$doc])* pub $name: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings { $( $name: $default, )* }
            }
        }

        /// A partial update from `PATCH /v1/settings` or `cambackup settings KEY VALUE`.
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct SettingsPatch {
            $(
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )*
        }

        impl Settings {
            /// The settings' names, in the order they are declared, serialized and shown.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Each setting's name and what `cambackup settings --help` says of its values.
            pub const HELP: &'static [(&'static str, &'static str)] =
                &[$((stringify!($name), $help)),*];

            /// The settings with `patch` applied (each value as its type normalizes it:
            /// duplicate data types collapse).
            pub fn apply(&self, patch: &SettingsPatch) -> Settings {
                let mut s = self.clone();
                $(
                    if let Some(v) = &patch.$name {
                        s.$name = SettingValue::normalized(v.clone());
                    }
                )*
                s
            }

            /// Whether `new` only withdraws: it allows nothing these settings did not (less or
            /// the same, field by field). A withdrawal takes effect even when it cannot be
            /// saved (a full state disk); anything that allows more is a grant, and a grant
            /// that cannot be saved is refused. A change that both narrows and widens is a
            /// grant.
            pub fn only_withdraws(&self, new: &Settings) -> bool {
                true $( && {
                    let less: fn(&$ty, &$ty) -> bool = $less;
                    less(&self.$name, &new.$name)
                } )*
            }

            /// The part of `new` that only withdraws: field by field, `new`'s value where it
            /// allows no more than this one's, else this one's. What a change that both
            /// narrows and widens puts in force when the disk has no room to save it: the
            /// withdrawal holds whatever the disk says, the grant is refused.
            pub fn withdrawn_part(&self, new: &Settings) -> Settings {
                let mut out = self.clone();
                $(
                    let less: fn(&$ty, &$ty) -> bool = $less;
                    if less(&self.$name, &new.$name) {
                        out.$name = new.$name.clone();
                    }
                )*
                out
            }

            /// These settings as a choices file with no record of the user's word reads them:
            /// each setting that grants what only the user may grant at what allows nothing.
            pub fn unrecorded(self) -> Settings {
                #[allow(unused_mut)]
                let mut s = self;
                $( $( s.$name = $unrecorded; )? )*
                s
            }

            /// Checks every value as [`SettingsPatch::validate`] checks a patch (the maker's
            /// `[defaults]` take the app's bounds).
            pub fn validate(&self) -> Result<(), InvalidSetting> {
                SettingsPatch { $( $name: Some(self.$name.clone()), )* }.validate()
            }
        }

        impl SettingsPatch {
            /// Checks the values a type cannot: refused here, at the edge, naming the field.
            pub fn validate(&self) -> Result<(), InvalidSetting> {
                $($(
                    if let Some(v) = &self.$name {
                        let check: fn(&$ty) -> Result<(), String> = $check;
                        check(v).map_err(|problem| InvalidSetting {
                            field: stringify!($name),
                            problem,
                        })?;
                    }
                )?)*
                Ok(())
            }

            /// A patch of the one setting `key` from the command line (`cambackup settings
            /// KEY VALUE`): `value` read by the setting's type, then checked as the API checks
            /// it. `None`: there is no such setting.
            pub fn from_cli(key: &str, value: &str) -> Option<Result<SettingsPatch, String>> {
                let mut p = SettingsPatch::default();
                let read = match key {
                    $(
                        stringify!($name) => {
                            <$ty as SettingValue>::from_cli(key, value).map(|v| p.$name = Some(v))
                        }
                    )*
                    _ => return None,
                };
                Some(read.and_then(|()| p.validate().map_err(|e| e.to_string())).map(|()| p))
            }
        }
    };
}

settings_table! {
    auto_upload: bool = false, {
        help: "true|false: the consent to upload automatically",
        allows_less: |old, new| *old || !*new,
        unrecorded: false,
    }
    network: NetworkPref = NetworkPref::Wifi, {
        help: "wifi|unmetered|any",
        allows_less: |old, new| network_rank(*new) <= network_rank(*old),
        unrecorded: NetworkPref::Wifi,
    }
    require_charging: bool = true, {
        help: "true|false",
        allows_less: |old, new| *new || !*old,
    }
    require_idle: bool = true, {
        help: "true|false",
        allows_less: |old, new| *new || !*old,
    }
    data_types: Vec<Kind> = vec![Kind::Photo, Kind::Video], {
        help: "a comma list of photo,video; empty for none",
        allows_less: |old, new| new.iter().all(|k| old.contains(k)),
    }
    /// The cap on the upload rate, in KiB/s; 0 = no limit.
    max_rate_kib_per_sec: u64 = 0, {
        help: "the upload rate cap in KiB/s; 0 for none",
        allows_less: |old, new| limit(*new) <= limit(*old),
        check: |v| at_most(*v, MAX_RATE_KIB_PER_SEC),
    }
    /// When automatic uploads may run, in local time; empty = any time.
    schedule: Vec<Window> = Vec::new(), {
        help: "a comma list of daily windows in local time like 01:00-07:00; empty for any time",
        allows_less: |old, new| (0..24 * 60).all(|m| !in_hours(new, m) || in_hours(old, m)),
        check: |w| match w.len() {
            n if n > MAX_WINDOWS => Err(format!("{n} windows; at most {MAX_WINDOWS}")),
            _ => Ok(()),
        },
    }
    /// The most MiB uploads may send over cellular per local day; 0 = no limit.
    cellular_daily_mib: u64 = 0, {
        help: "MiB per day over cellular; 0 for no limit",
        allows_less: |old, new| limit(*new) <= limit(*old),
        check: |v| at_most(*v, MAX_CELLULAR_DAILY_MIB),
    }
    /// The user's consent to free space on the card (`off` unless the user says otherwise).
    free_space: FreeSpace = FreeSpace::Off, {
        help: "off|when_low: delete backed-up files when the card runs low",
        allows_less: |old, new| *new == FreeSpace::Off || *old == FreeSpace::WhenLow,
        unrecorded: FreeSpace::Off,
    }
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

/// A setting's type: how the command line writes a value of it (`cambackup settings KEY
/// VALUE`), and the form a value is kept in. A new setting of a type below needs nothing
/// more than its row in the table.
pub trait SettingValue: Sized + Clone {
    /// The value from its command-line text; the error names `key` and says what is allowed.
    fn from_cli(key: &str, value: &str) -> Result<Self, String>;

    /// The value as it is kept (the same unless the type says otherwise).
    fn normalized(self) -> Self {
        self
    }
}

impl SettingValue for bool {
    fn from_cli(key: &str, value: &str) -> Result<bool, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok(true),
            "false" | "off" | "no" | "0" => Ok(false),
            _ => Err(format!("`{key}` is true or false, not `{value}`")),
        }
    }
}

impl SettingValue for u64 {
    fn from_cli(key: &str, value: &str) -> Result<u64, String> {
        value
            .trim()
            .parse()
            .map_err(|_| format!("`{key}` is a whole number (0: no limit), not `{value}`"))
    }
}

impl SettingValue for NetworkPref {
    fn from_cli(key: &str, value: &str) -> Result<NetworkPref, String> {
        NetworkPref::parse(value.trim()).ok_or_else(|| {
            format!(
                "`{key}` is one of wifi, unmetered (Wi-Fi or Ethernet), any (cellular too), \
                 not `{value}`"
            )
        })
    }
}

impl SettingValue for FreeSpace {
    fn from_cli(key: &str, value: &str) -> Result<FreeSpace, String> {
        FreeSpace::parse(value.trim()).ok_or_else(|| {
            format!(
                "`{key}` is off or when_low (delete backed-up files when the card runs low), \
                 not `{value}`"
            )
        })
    }
}

impl SettingValue for Vec<Kind> {
    fn from_cli(key: &str, value: &str) -> Result<Vec<Kind>, String> {
        comma_list(value)
            .map(|k| {
                Kind::parse(k).ok_or_else(|| {
                    format!("`{key}` is a comma list of photo, video, not `{value}`")
                })
            })
            .collect()
    }

    /// Sorted, each kind once.
    fn normalized(mut self) -> Vec<Kind> {
        self.sort();
        self.dedup();
        self
    }
}

impl SettingValue for Vec<Window> {
    fn from_cli(key: &str, value: &str) -> Result<Vec<Window>, String> {
        comma_list(value)
            .map(|w| Window::parse(w).map_err(|e| format!("`{key}`: {e}")))
            .collect()
    }
}

/// The items of a comma list, trimmed; empty items are dropped, so "" is the empty list.
fn comma_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// A limit of which 0 means "no limit", ordered by what it allows (0 is the widest).
fn limit(v: u64) -> u64 {
    if v == 0 {
        u64::MAX
    } else {
        v
    }
}

/// A bound's problem: `v` over `max` (where 0 means no limit).
fn at_most(v: u64, max: u64) -> Result<(), String> {
    if v > max {
        Err(format!(
            "{v} is over the most allowed, {max} (0 means no limit)"
        ))
    } else {
        Ok(())
    }
}

impl Settings {
    /// The upload rate cap in bytes per second (0: none).
    pub fn max_rate_bytes_per_sec(&self) -> u64 {
        self.max_rate_kib_per_sec.saturating_mul(1024)
    }

    /// What the data plan allows over cellular per local day, in bytes; `None`: no limit.
    pub fn cellular_daily_bytes(&self) -> Option<u64> {
        (self.cellular_daily_mib > 0).then(|| self.cellular_daily_mib.saturating_mul(1 << 20))
    }

    /// Whether files of `kind` may go up automatically.
    pub fn wants(&self, kind: Kind) -> bool {
        self.data_types.contains(&kind)
    }

    /// The names of the fields whose values differ between `self` and `other`.
    pub fn differing_fields(&self, other: &Settings) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).expect("settings serialize"),
            serde_json::to_value(other).expect("settings serialize"),
        );
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return Vec::new();
        };
        a.iter()
            .filter(|(k, v)| b.get(k.as_str()) != Some(v))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// How many networks a preference allows: Wi-Fi only < anything unmetered < any.
fn network_rank(n: NetworkPref) -> u8 {
    match n {
        NetworkPref::Wifi => 0,
        NetworkPref::Unmetered => 1,
        NetworkPref::Any => 2,
    }
}

/// Whether the schedule allows `minute` (an empty schedule allows any time).
fn in_hours(schedule: &[Window], minute: u16) -> bool {
    schedule.is_empty() || schedule.iter().any(|w| w.contains(minute))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change that both narrows and widens: the narrowing fields are the withdrawal, the
    /// widening ones are left as they were; a destructuring names every field, so a new
    /// setting cannot be forgotten here.
    #[test]
    fn the_withdrawn_part_of_a_change_takes_each_narrower_field_and_leaves_the_wider() {
        let old = Settings {
            auto_upload: true,
            network: NetworkPref::Unmetered,
            require_charging: false,
            require_idle: true,
            data_types: vec![Kind::Photo, Kind::Video],
            max_rate_kib_per_sec: 100,
            schedule: vec![Window::parse("01:00-07:00").unwrap()],
            cellular_daily_mib: 10,
            free_space: FreeSpace::WhenLow,
        };
        let new = Settings {
            auto_upload: false,
            network: NetworkPref::Any,
            require_charging: true,
            require_idle: false,
            data_types: vec![Kind::Photo],
            max_rate_kib_per_sec: 0,
            schedule: vec![Window::parse("02:00-03:00").unwrap()],
            cellular_daily_mib: 20,
            free_space: FreeSpace::Off,
        };
        let Settings {
            auto_upload,
            network,
            require_charging,
            require_idle,
            data_types,
            max_rate_kib_per_sec,
            schedule,
            cellular_daily_mib,
            free_space,
        } = old.withdrawn_part(&new);
        assert!(!auto_upload);
        assert_eq!(network, NetworkPref::Unmetered, "wider: kept");
        assert!(require_charging);
        assert!(require_idle, "wider: kept");
        assert_eq!(data_types, [Kind::Photo]);
        assert_eq!(max_rate_kib_per_sec, 100, "no limit is wider: kept");
        assert_eq!(schedule, new.schedule);
        assert_eq!(cellular_daily_mib, 10, "wider: kept");
        assert_eq!(free_space, FreeSpace::Off);
        let part = old.withdrawn_part(&new);
        assert!(old.only_withdraws(&part));
        assert_eq!(
            part.differing_fields(&new),
            [
                "cellular_daily_mib",
                "max_rate_kib_per_sec",
                "network",
                "require_idle"
            ]
        );
        assert_eq!(old.withdrawn_part(&old), old);
    }

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
    fn windows_parse_strictly_and_may_cross_midnight() {
        let rows: &[(&str, Option<(u16, u16)>)] = &[
            ("01:00-07:00", Some((60, 420))),
            ("22:30-06:00", Some((1350, 360))),
            (" 00:00-23:59 ", Some((0, 1439))),
            // The whole day, the way a clock that goes round once reads it.
            ("07:00-07:00", Some((420, 420))),
            ("24:00-01:00", None),
            ("1:00-07:00", None),
            ("01:00", None),
            ("01:60-02:00", None),
            ("", None),
        ];
        for (text, want) in rows {
            let got = Window::parse(text).ok().map(|w| (w.start, w.end));
            assert_eq!(got, *want, "{text:?}");
        }
        let w = Window::parse("22:30-06:00").unwrap();
        assert_eq!(w.to_string(), "22:30-06:00");
        for (minute, inside) in [
            (1349, false),
            (1350, true),
            (0, true),
            (359, true),
            (360, false),
        ] {
            assert_eq!(w.contains(minute), inside, "minute {minute}");
        }
        let all_day = Window::parse("07:00-07:00").unwrap();
        assert!([0, 419, 420, 1439].iter().all(|m| all_day.contains(*m)));
        let p: Result<SettingsPatch, _> = serde_json::from_str(r#"{"schedule": ["25:00-01:00"]}"#);
        assert!(p.unwrap_err().to_string().contains("25:00-01:00"));
    }

    #[test]
    fn a_choices_file_from_before_the_new_settings_reads_with_their_defaults() {
        let old = r#"{"auto_upload": true, "network": "any", "require_charging": false,
                      "require_idle": true, "data_types": ["photo"]}"#;
        let s: Settings = serde_json::from_str(old).unwrap();
        assert!(s.auto_upload);
        assert_eq!(s.max_rate_kib_per_sec, 0);
        assert_eq!(
            s.free_space,
            FreeSpace::Off,
            "freeing space is never on by default"
        );
    }

    #[test]
    fn a_change_that_allows_nothing_more_is_a_withdrawal_and_any_widening_is_a_grant() {
        let base = Settings {
            auto_upload: true,
            network: NetworkPref::Unmetered,
            require_charging: false,
            require_idle: false,
            data_types: vec![Kind::Photo, Kind::Video],
            max_rate_kib_per_sec: 500,
            schedule: vec![Window::parse("01:00-07:00").unwrap()],
            cellular_daily_mib: 10,
            free_space: FreeSpace::WhenLow,
        };
        let rows: &[(&str, &str, bool)] = &[
            ("nothing changes", "{}", true),
            ("consent off", r#"{"auto_upload": false}"#, true),
            ("narrower network", r#"{"network": "wifi"}"#, true),
            ("wider network", r#"{"network": "any"}"#, false),
            ("needs charging", r#"{"require_charging": true}"#, true),
            ("needs idle", r#"{"require_idle": true}"#, true),
            ("fewer kinds", r#"{"data_types": ["photo"]}"#, true),
            ("slower", r#"{"max_rate_kib_per_sec": 100}"#, true),
            ("faster", r#"{"max_rate_kib_per_sec": 600}"#, false),
            ("rate cap lifted", r#"{"max_rate_kib_per_sec": 0}"#, false),
            ("shorter hours", r#"{"schedule": ["02:00-06:00"]}"#, true),
            ("other hours", r#"{"schedule": ["06:00-08:00"]}"#, false),
            ("any time", r#"{"schedule": []}"#, false),
            ("smaller budget", r#"{"cellular_daily_mib": 1}"#, true),
            ("budget lifted", r#"{"cellular_daily_mib": 0}"#, false),
            ("freeing off", r#"{"free_space": "off"}"#, true),
            (
                "off and wider at once",
                r#"{"auto_upload": false, "network": "any"}"#,
                false,
            ),
        ];
        for (what, patch, withdraws) in rows {
            let p: SettingsPatch = serde_json::from_str(patch).unwrap();
            assert_eq!(
                base.only_withdraws(&base.apply(&p)),
                *withdraws,
                "{what}: {patch}"
            );
        }
        let off = Settings {
            auto_upload: false,
            free_space: FreeSpace::Off,
            cellular_daily_mib: 0,
            ..base.clone()
        };
        for (patch, withdraws) in [
            (r#"{"auto_upload": true}"#, false),
            (r#"{"free_space": "when_low"}"#, false),
            (r#"{"cellular_daily_mib": 5}"#, true),
        ] {
            let p: SettingsPatch = serde_json::from_str(patch).unwrap();
            assert_eq!(off.only_withdraws(&off.apply(&p)), withdraws, "{patch}");
        }
    }

    /// The docs follow the table: INTERFACE.md section 4 names every setting, and the OpenAPI
    /// file's `Settings` (all required, in the table's order) and `SettingsPatch` have exactly
    /// the table's settings. A setting added to the table fails here until it is documented.
    #[test]
    fn the_docs_name_every_setting_of_the_table() {
        let doc = include_str!("../docs/INTERFACE.md");
        let start = doc.find("## 4. The user's settings").expect("section 4");
        let section = &doc[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        for name in Settings::NAMES {
            assert!(
                section.contains(&format!("`{name}`")),
                "INTERFACE.md section 4 does not name `{name}`"
            );
        }
        let spec: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(include_str!("../docs/openapi.yaml")).unwrap();
        let schemas = &spec["components"]["schemas"];
        let names = |v: &serde_yaml_ng::Value| -> Vec<String> {
            match v {
                serde_yaml_ng::Value::Mapping(m) => {
                    m.keys().map(|k| k.as_str().unwrap().to_string()).collect()
                }
                serde_yaml_ng::Value::Sequence(s) => {
                    s.iter().map(|k| k.as_str().unwrap().to_string()).collect()
                }
                other => panic!("not a list of names: {other:?}"),
            }
        };
        assert_eq!(names(&schemas["Settings"]["required"]), Settings::NAMES);
        assert_eq!(names(&schemas["Settings"]["properties"]), Settings::NAMES);
        assert_eq!(
            names(&schemas["SettingsPatch"]["properties"]),
            Settings::NAMES
        );
    }

    #[test]
    fn free_space_is_off_or_when_low() {
        let p: SettingsPatch = serde_json::from_str(r#"{"free_space": "when_low"}"#).unwrap();
        assert_eq!(Settings::default().apply(&p).free_space, FreeSpace::WhenLow);
        assert!(serde_json::from_str::<SettingsPatch>(r#"{"free_space": "always"}"#).is_err());
        for f in FreeSpace::ALL {
            assert_eq!(serde_json::to_value(f).unwrap(), f.as_str());
        }
    }
}
