//! The gate: the one place that decides whether an upload may run.
//!
//! [`decide`] is a pure function of a device [`Snapshot`], the user's [`Settings`] and the
//! operator's [`config::Conditions`]; it names every reason that blocks uploads, as INTERFACE.md
//! section 5's `blocked_by` values. [`HoldDown`] keeps a flapping answer (a bouncing charger
//! contact, Wi-Fi roaming) from starting and aborting uploads every second.
//!
//! The network rule also names the way out: [`choose_uplink`] picks, among the interfaces that
//! carry a default route (IPv4 or IPv6), the one uploads may leave through, and [`Verdict::uplink`]
//! carries it to the upload client, which binds every connection to it.
//!
//! Invariant: no other module re-derives these rules; the scheduler and the status endpoint both
//! ask [`decide`]; no upload connection is made unless [`Verdict::uplink`] names an interface.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::conditions::{Link, Network, Snapshot};
use crate::config;
use crate::settings::{NetworkPref, Settings, Window};

/// One reason uploads may not run (INTERFACE.md section 5 `blocked_by`). The variants are in the
/// order [`decide`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Block {
    /// The user has not consented to automatic uploads (`auto_upload` false).
    AutoUploadOff,
    /// Charging is required and the camera is not on external power (or cannot tell).
    NotCharging,
    /// The battery is below `conditions.min_battery_percent`, charging or not.
    BatteryLow,
    /// Every default route is over a network the user's `network` setting excludes.
    NetworkNotAllowed,
    /// The Wi-Fi (or Ethernet) is metered (a phone hotspot, the firmware's flag, the app's
    /// word) and the setting is `wifi` or `unmetered`.
    MeteredNetwork,
    /// No usable default route.
    Offline,
    /// The uplink is up but the server cannot be reached through it: its name does not
    /// resolve, or its host or network is unreachable (Wi-Fi without internet). Found by an
    /// upload's request, not by the gate; lifted when the link changes (or after
    /// `uplink::REPROBE`, for one more try).
    NoInternet,
    /// Something other than the tus server answers on the uplink: a redirect to another
    /// host, a page without `Tus-Resumable`, 511, or a certificate for another name (a
    /// captive portal, or a proxy). Found and lifted like [`Block::NoInternet`].
    CaptivePortal,
    /// Idle is required and the camera records.
    Recording,
    /// Idle is required and the camera wrote media recently (or the load is over the limit).
    Busy,
    /// The hottest thermal zone is over `conditions.max_temp_c`.
    TooHot,
    /// The user's `schedule` lists windows and the local time is in none of them (or unknown).
    OutsideSchedule,
    /// The uplink is cellular and the user's `cellular_daily_mib` is used up today.
    DataBudgetUsed,
}

impl Block {
    pub const ALL: [Block; 13] = [
        Block::AutoUploadOff,
        Block::NotCharging,
        Block::BatteryLow,
        Block::NetworkNotAllowed,
        Block::MeteredNetwork,
        Block::Offline,
        Block::NoInternet,
        Block::CaptivePortal,
        Block::Recording,
        Block::Busy,
        Block::TooHot,
        Block::OutsideSchedule,
        Block::DataBudgetUsed,
    ];

    /// The `blocked_by` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Block::AutoUploadOff => "auto_upload_off",
            Block::NotCharging => "not_charging",
            Block::BatteryLow => "battery_low",
            Block::NetworkNotAllowed => "network_not_allowed",
            Block::MeteredNetwork => "metered_network",
            Block::Offline => "offline",
            Block::NoInternet => "no_internet",
            Block::CaptivePortal => "captive_portal",
            Block::Recording => "recording",
            Block::Busy => "busy",
            Block::TooHot => "too_hot",
            Block::OutsideSchedule => "outside_schedule",
            Block::DataBudgetUsed => "data_budget_used",
        }
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gate's answer: what blocks automatic uploads and what blocks manual ones. Each list names
/// every block that applies, in [`Block`]'s order, so that a change in the answer is a change in
/// the conditions (and the log line saying so is stable).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Verdict {
    /// Blocks on automatic uploads: consent and every condition the user has not relaxed.
    pub auto: Vec<Block>,
    /// Blocks on `cambackup upload`: only the network preference and the temperature.
    pub manual: Vec<Block>,
    /// The interface uploads may leave through (every connection is bound to it); `None` when
    /// the network rule blocks (offline, not allowed, metered).
    pub uplink: Option<String>,
}

impl Verdict {
    /// Whether automatic uploads may run (before the [`HoldDown`]).
    pub fn auto_allowed(&self) -> bool {
        self.auto.is_empty()
    }

    /// Whether manual uploads may run.
    pub fn manual_allowed(&self) -> bool {
        self.manual.is_empty()
    }
}

/// Decides from a device snapshot, the user's settings and the operator's limits.
///
/// Unknown readings count against uploading only where uploading would be the risk: unknown
/// charging is not charging (a camera that cannot say must not drain its battery), while an
/// unknown battery level, temperature or load blocks nothing (a mains-only camera has no
/// battery; many have no thermal zone).
pub fn decide(s: &Snapshot, settings: &Settings, cfg: &config::Conditions) -> Verdict {
    let (mut uplink, network) = match choose_uplink(&s.links, settings.network) {
        Ok(link) => (Some(link), Vec::new()),
        Err(blocks) => (None, blocks),
    };
    let budget_used = uplink.is_some_and(|l| budget_used(l, settings, s.cellular_bytes_today));
    if budget_used {
        uplink = None;
    }
    let uplink = uplink.map(|l| l.interface.clone());
    let too_hot = s.temp_c.is_some_and(|t| t > cfg.max_temp_c);

    let mut auto = Vec::new();
    if !settings.auto_upload {
        auto.push(Block::AutoUploadOff);
    }
    if settings.require_charging && s.charging != Some(true) {
        auto.push(Block::NotCharging);
    }
    if s.battery_percent
        .is_some_and(|b| b < cfg.min_battery_percent)
    {
        auto.push(Block::BatteryLow);
    }
    auto.extend(network.iter().copied());
    if settings.require_idle && s.recording {
        auto.push(Block::Recording);
    }
    if settings.require_idle && busy(s, cfg) {
        auto.push(Block::Busy);
    }
    if too_hot {
        auto.push(Block::TooHot);
    }
    if !in_schedule(&settings.schedule, s.local_minute) {
        auto.push(Block::OutsideSchedule);
    }
    if budget_used {
        auto.push(Block::DataBudgetUsed);
    }

    let mut manual = network;
    if too_hot {
        manual.push(Block::TooHot);
    }
    if budget_used {
        manual.push(Block::DataBudgetUsed);
    }
    Verdict {
        auto,
        manual,
        uplink,
    }
}

/// The network rule, shared by automatic and manual uploads: the link uploads may leave
/// through, or every reason none may be used (in [`Block`] order).
///
/// A link is allowed when its kind is (`wifi`: Wi-Fi; `unmetered`: Wi-Fi or Ethernet; `any`:
/// all) and, unless the setting is `any`, it is not metered. Among the allowed links the first
/// unmetered one in the kernel's order wins (IPv4 routes by metric, then IPv6): when the
/// families disagree (IPv4 default on `wlan0`, IPv6 default on `wwan0`), the Wi-Fi is used under
/// every setting, over whichever family it carries. Under `any` a metered link is used only when
/// no unmetered one is up.
pub fn choose_uplink(links: &[Link], pref: NetworkPref) -> Result<&Link, Vec<Block>> {
    if links.is_empty() {
        return Err(vec![Block::Offline]);
    }
    let mut blocks = Vec::new();
    let mut allowed = Vec::new();
    for link in links {
        let kind_ok = match link.network {
            Network::Offline => false,
            Network::Wifi => true,
            Network::Ethernet => matches!(pref, NetworkPref::Unmetered | NetworkPref::Any),
            Network::Cellular => pref == NetworkPref::Any,
        };
        if !kind_ok {
            blocks.push(Block::NetworkNotAllowed);
        } else if link.metered.metered && pref != NetworkPref::Any {
            blocks.push(Block::MeteredNetwork);
        } else {
            allowed.push(link);
        }
    }
    if let Some(best) = allowed
        .iter()
        .find(|l| !l.metered.metered)
        .or(allowed.first())
    {
        return Ok(best);
    }
    blocks.sort();
    blocks.dedup();
    Err(blocks)
}

/// The schedule rule (automatic uploads only; a manual upload is the user asking now): an
/// empty schedule is any time; otherwise the local minute must fall in a window. An unknown
/// local time is outside: the user asked for certain hours, and we cannot tell.
pub fn in_schedule(windows: &[Window], local_minute: Option<u16>) -> bool {
    windows.is_empty() || local_minute.is_some_and(|m| windows.iter().any(|w| w.contains(m)))
}

/// In how many minutes from `local_minute` the schedule rule's answer changes (a window opens
/// or closes); `None` when it never does (no schedule, or windows that cover the whole day) or
/// the local time is unknown. The conditions loop sleeps until then instead of polling.
pub fn schedule_changes_in(windows: &[Window], local_minute: Option<u16>) -> Option<u16> {
    let now = local_minute?;
    let inside = in_schedule(windows, Some(now));
    (1..=1440u16).find(|d| in_schedule(windows, Some((now + d) % 1440)) != inside)
}

/// The data plan rule (manual uploads too: the plan is the user's money, like the network
/// preference): over a cellular uplink, nothing more once today's use reached the budget.
pub fn budget_used(uplink: &Link, settings: &Settings, used_today: u64) -> bool {
    uplink.network == Network::Cellular
        && settings
            .cellular_daily_bytes()
            .is_some_and(|limit| used_today >= limit)
}

/// What the pacing point (`upload::throttle`) enforces of the data plan, between two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPlan {
    /// The bytes going out count against the plan (a cellular uplink), or must not go out at
    /// all (the budget is used: the gate names no uplink then).
    pub metering: bool,
    /// What today's budget still allows (`u64::MAX`: no limit).
    pub left: u64,
}

/// The data plan at the pacing point, from the gate's verdict and the snapshot it judged:
/// bytes over cellular are counted, and no more than the day's budget goes out, even before
/// the gate's answer stops the upload. With the budget used the gate names no uplink, so
/// "metering" holds the bodies at zero. Pure.
pub fn data_plan(verdict: &Verdict, s: &Snapshot, settings: &Settings) -> DataPlan {
    let link = verdict
        .uplink
        .as_ref()
        .and_then(|i| s.links.iter().find(|l| &l.interface == i));
    let budget_used = verdict.auto.contains(&Block::DataBudgetUsed)
        || verdict.manual.contains(&Block::DataBudgetUsed);
    DataPlan {
        metering: budget_used || link.is_some_and(|l| l.network == Network::Cellular),
        left: settings.cellular_daily_bytes().map_or(u64::MAX, |limit| {
            limit.saturating_sub(s.cellular_bytes_today)
        }),
    }
}

/// Media written within `idle_secs`, or the load over `max_load` when that is set.
fn busy(s: &Snapshot, cfg: &config::Conditions) -> bool {
    let writing = s.secs_since_media_write.is_some_and(|w| w < cfg.idle_secs);
    let loaded = matches!((s.load, cfg.max_load), (Some(l), Some(max)) if l > max);
    writing || loaded
}

/// Debounces the automatic gate: it opens only after the raw answer has been "allowed"
/// continuously for `hold`, and closes at once.
///
/// Closing at once keeps the promise that losing a condition stops an upload within 2 s;
/// opening late keeps a bouncing charger contact or Wi-Fi roaming from starting an upload only to
/// abort it a second later. "Continuously" is as seen by the samples fed in: a closed sample
/// restarts the wait.
#[derive(Debug, Clone)]
pub struct HoldDown {
    hold: Duration,
    /// When the raw answer last turned to "allowed"; `None` while it is "blocked".
    open_since: Option<Instant>,
}

impl HoldDown {
    /// A hold-down of `hold` (`conditions.hold_down_secs`); zero opens at once.
    pub fn new(hold: Duration) -> HoldDown {
        HoldDown {
            hold,
            open_since: None,
        }
    }

    /// Feeds the raw answer (`Verdict::auto_allowed`) seen at `now`; returns whether
    /// automatic uploads may run.
    pub fn update(&mut self, allowed: bool, now: Instant) -> bool {
        if !allowed {
            self.open_since = None;
            return false;
        }
        let since = *self.open_since.get_or_insert(now);
        now.saturating_duration_since(since) >= self.hold
    }

    /// When the gate will open if the raw answer stays "allowed", so the caller can sleep until
    /// then instead of polling; `None` while the raw answer is "blocked".
    pub fn opens_at(&self) -> Option<Instant> {
        self.open_since.map(|t| t + self.hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::metered::{Metered, MeteredBy};
    use crate::conditions::Family;
    use Block::*;

    /// A camera on the charger, on Wi-Fi, cool and idle.
    fn good() -> Snapshot {
        Snapshot {
            charging: Some(true),
            battery_percent: Some(80),
            network: Network::Wifi,
            interface: Some("wlan0".into()),
            links: vec![link("wlan0", Network::Wifi, &[Family::Ipv4])],
            temp_c: Some(40.0),
            load: Some(0.5),
            recording: false,
            secs_since_media_write: Some(3600),
            local_minute: Some(12 * 60),
            cellular_bytes_today: 0,
        }
    }

    fn link(interface: &str, network: Network, families: &[Family]) -> Link {
        let mut l = Link {
            interface: interface.into(),
            network,
            families: families.to_vec(),
            gateway_v4: None,
            metered: Metered::default(),
            wifi: None,
        };
        if network == Network::Cellular {
            l.metered = metered(MeteredBy::Cellular);
        }
        l
    }

    fn metered(by: MeteredBy) -> Metered {
        Metered {
            metered: true,
            because: Some(by),
        }
    }

    /// The only default route is over `network`.
    fn on(s: &mut Snapshot, network: Network) {
        let name = match network {
            Network::Wifi => "wlan0",
            Network::Cellular => "wwan0",
            _ => "eth0",
        };
        s.network = network;
        s.interface = Some(name.into());
        s.links = vec![link(name, network, &[Family::Ipv4])];
    }

    /// The defaults with consent given.
    fn consenting() -> Settings {
        Settings {
            auto_upload: true,
            ..Settings::default()
        }
    }

    /// idle 120 s, 60 °C, 20 %, no load limit.
    fn limits() -> config::Conditions {
        config::Conditions::default()
    }

    struct Row {
        name: &'static str,
        snapshot: fn(&mut Snapshot),
        settings: fn(&mut Settings),
        limits: fn(&mut config::Conditions),
        auto: &'static [Block],
        manual: &'static [Block],
    }

    fn same<T>(_: &mut T) {}

    fn windows(w: &[&str]) -> Vec<Window> {
        w.iter().map(|w| Window::parse(w).unwrap()).collect()
    }

    const ROWS: &[Row] = &[
        Row {
            name: "all conditions hold",
            snapshot: same,
            settings: same,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "consent off blocks only automatic uploads",
            snapshot: same,
            settings: |s| s.auto_upload = false,
            limits: same,
            auto: &[AutoUploadOff],
            manual: &[],
        },
        Row {
            name: "not charging",
            snapshot: |s| s.charging = Some(false),
            settings: same,
            limits: same,
            auto: &[NotCharging],
            manual: &[],
        },
        Row {
            name: "charging unknown counts as not charging",
            snapshot: |s| s.charging = None,
            settings: same,
            limits: same,
            auto: &[NotCharging],
            manual: &[],
        },
        Row {
            name: "require_charging=false lets an uncharged camera upload",
            snapshot: |s| s.charging = Some(false),
            settings: |s| s.require_charging = false,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "battery low even on the charger",
            snapshot: |s| s.battery_percent = Some(19),
            settings: same,
            limits: same,
            auto: &[BatteryLow],
            manual: &[],
        },
        Row {
            name: "battery exactly at the limit is not low",
            snapshot: |s| s.battery_percent = Some(20),
            settings: same,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "battery low applies with require_charging=false too",
            snapshot: |s| {
                s.charging = Some(false);
                s.battery_percent = Some(5);
            },
            settings: |s| s.require_charging = false,
            limits: same,
            auto: &[BatteryLow],
            manual: &[],
        },
        Row {
            name: "no battery (mains only) is not low",
            snapshot: |s| s.battery_percent = None,
            settings: same,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "offline blocks both",
            snapshot: |s| {
                s.network = Network::Offline;
                s.interface = None;
                s.links.clear();
            },
            settings: |s| s.network = NetworkPref::Any,
            limits: same,
            auto: &[Offline],
            manual: &[Offline],
        },
        Row {
            name: "cellular with preference wifi blocks both",
            snapshot: |s| on(s, Network::Cellular),
            settings: same,
            limits: same,
            auto: &[NetworkNotAllowed],
            manual: &[NetworkNotAllowed],
        },
        Row {
            name: "cellular with preference unmetered blocks both",
            snapshot: |s| on(s, Network::Cellular),
            settings: |s| s.network = NetworkPref::Unmetered,
            limits: same,
            auto: &[NetworkNotAllowed],
            manual: &[NetworkNotAllowed],
        },
        Row {
            name: "network any allows cellular",
            snapshot: |s| on(s, Network::Cellular),
            settings: |s| s.network = NetworkPref::Any,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "ethernet with preference wifi blocks both",
            snapshot: |s| on(s, Network::Ethernet),
            settings: same,
            limits: same,
            auto: &[NetworkNotAllowed],
            manual: &[NetworkNotAllowed],
        },
        Row {
            name: "unmetered allows ethernet",
            snapshot: |s| on(s, Network::Ethernet),
            settings: |s| s.network = NetworkPref::Unmetered,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "recording blocks only automatic uploads",
            snapshot: |s| s.recording = true,
            settings: same,
            limits: same,
            auto: &[Recording],
            manual: &[],
        },
        Row {
            name: "require_idle=false allows uploading while recording",
            snapshot: |s| s.recording = true,
            settings: |s| s.require_idle = false,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "media written within idle_secs is busy",
            snapshot: |s| s.secs_since_media_write = Some(119),
            settings: same,
            limits: same,
            auto: &[Busy],
            manual: &[],
        },
        Row {
            name: "media written idle_secs ago is idle",
            snapshot: |s| s.secs_since_media_write = Some(120),
            settings: same,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "no media write seen is idle",
            snapshot: |s| s.secs_since_media_write = None,
            settings: same,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "require_idle=false ignores media writes",
            snapshot: |s| s.secs_since_media_write = Some(0),
            settings: |s| s.require_idle = false,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "load over max_load is busy",
            snapshot: |s| s.load = Some(2.5),
            settings: same,
            limits: |c| c.max_load = Some(2.0),
            auto: &[Busy],
            manual: &[],
        },
        Row {
            name: "load without max_load is not checked",
            snapshot: |s| s.load = Some(50.0),
            settings: same,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "unknown load is not busy",
            snapshot: |s| s.load = None,
            settings: same,
            limits: |c| c.max_load = Some(2.0),
            auto: &[],
            manual: &[],
        },
        Row {
            name: "too hot blocks both",
            snapshot: |s| s.temp_c = Some(60.5),
            settings: same,
            limits: same,
            auto: &[TooHot],
            manual: &[TooHot],
        },
        Row {
            name: "exactly at max_temp_c is not too hot",
            snapshot: |s| s.temp_c = Some(60.0),
            settings: same,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "no thermal zone is not too hot",
            snapshot: |s| s.temp_c = None,
            settings: same,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "metered wifi blocks both under wifi",
            snapshot: |s| s.links[0].metered = metered(MeteredBy::FirmwareFlag),
            settings: same,
            limits: same,
            auto: &[MeteredNetwork],
            manual: &[MeteredNetwork],
        },
        Row {
            name: "metered wifi blocks both under unmetered",
            snapshot: |s| s.links[0].metered = metered(MeteredBy::IphoneGateway),
            settings: |s| s.network = NetworkPref::Unmetered,
            limits: same,
            auto: &[MeteredNetwork],
            manual: &[MeteredNetwork],
        },
        Row {
            name: "metered wifi is allowed under any",
            snapshot: |s| s.links[0].metered = metered(MeteredBy::AndroidDhcp),
            settings: |s| s.network = NetworkPref::Any,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "metered wifi and cellular name both reasons",
            snapshot: |s| {
                s.links[0].metered = metered(MeteredBy::App);
                s.links
                    .push(link("wwan0", Network::Cellular, &[Family::Ipv6]));
            },
            settings: same,
            limits: same,
            auto: &[NetworkNotAllowed, MeteredNetwork],
            manual: &[NetworkNotAllowed, MeteredNetwork],
        },
        Row {
            name: "ipv6 default over cellular does not block the wifi",
            snapshot: |s| {
                s.links
                    .push(link("wwan0", Network::Cellular, &[Family::Ipv6]))
            },
            settings: same,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "every block is named, in a stable order",
            snapshot: |s| {
                s.charging = Some(false);
                s.battery_percent = Some(3);
                on(s, Network::Cellular);
                s.recording = true;
                s.secs_since_media_write = Some(1);
                s.temp_c = Some(75.0);
            },
            settings: |s| s.auto_upload = false,
            limits: same,
            auto: &[
                AutoUploadOff,
                NotCharging,
                BatteryLow,
                NetworkNotAllowed,
                Recording,
                Busy,
                TooHot,
            ],
            manual: &[NetworkNotAllowed, TooHot],
        },
        Row {
            name: "everything relaxed: uncharged, cellular, recording, writing",
            snapshot: |s| {
                s.charging = Some(false);
                on(s, Network::Cellular);
                s.recording = true;
                s.secs_since_media_write = Some(1);
            },
            settings: |s| {
                s.require_charging = false;
                s.require_idle = false;
                s.network = NetworkPref::Any;
            },
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "inside the schedule's window",
            snapshot: same,
            settings: |s| s.schedule = windows(&["09:00-17:00"]),
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "outside the schedule blocks only automatic uploads",
            snapshot: same,
            settings: |s| s.schedule = windows(&["01:00-07:00"]),
            limits: same,
            auto: &[OutsideSchedule],
            manual: &[],
        },
        Row {
            name: "a window across midnight holds at 23:30",
            snapshot: |s| s.local_minute = Some(23 * 60 + 30),
            settings: |s| s.schedule = windows(&["22:00-06:00"]),
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "a window across midnight holds at 00:10",
            snapshot: |s| s.local_minute = Some(10),
            settings: |s| s.schedule = windows(&["22:00-06:00"]),
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "a window's end is outside it",
            snapshot: |s| s.local_minute = Some(6 * 60),
            settings: |s| s.schedule = windows(&["22:00-06:00"]),
            limits: same,
            auto: &[OutsideSchedule],
            manual: &[],
        },
        Row {
            name: "any of several windows",
            snapshot: same,
            settings: |s| s.schedule = windows(&["01:00-02:00", "11:30-12:30"]),
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "an unknown local time is outside a schedule",
            snapshot: |s| s.local_minute = None,
            settings: |s| s.schedule = windows(&["00:00-23:59"]),
            limits: same,
            auto: &[OutsideSchedule],
            manual: &[],
        },
        Row {
            name: "an unknown local time without a schedule is any time",
            snapshot: |s| s.local_minute = None,
            settings: same,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "consent off and outside the schedule, in block order",
            snapshot: |s| s.temp_c = Some(70.0),
            settings: |s| {
                s.auto_upload = false;
                s.schedule = windows(&["01:00-07:00"]);
            },
            limits: same,
            auto: &[AutoUploadOff, TooHot, OutsideSchedule],
            manual: &[TooHot],
        },
        Row {
            name: "cellular within the day's budget",
            snapshot: |s| {
                on(s, Network::Cellular);
                s.cellular_bytes_today = 99 << 20;
            },
            settings: |s| {
                s.network = NetworkPref::Any;
                s.cellular_daily_mib = 100;
            },
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "cellular with the day's budget used blocks both",
            snapshot: |s| {
                on(s, Network::Cellular);
                s.cellular_bytes_today = 100 << 20;
            },
            settings: |s| {
                s.network = NetworkPref::Any;
                s.cellular_daily_mib = 100;
            },
            limits: same,
            auto: &[DataBudgetUsed],
            manual: &[DataBudgetUsed],
        },
        Row {
            name: "no budget (0) is no limit",
            snapshot: |s| {
                on(s, Network::Cellular);
                s.cellular_bytes_today = 1 << 40;
            },
            settings: |s| s.network = NetworkPref::Any,
            limits: same,
            auto: &[],
            manual: &[],
        },
        Row {
            name: "a used budget does not block Wi-Fi",
            snapshot: |s| s.cellular_bytes_today = 100 << 20,
            settings: |s| s.cellular_daily_mib = 100,
            limits: same,
            auto: &[],
            manual: &[],
        },
    ];

    #[test]
    fn decide_table() {
        for row in ROWS {
            let (mut s, mut st, mut c) = (good(), consenting(), limits());
            (row.snapshot)(&mut s);
            (row.settings)(&mut st);
            (row.limits)(&mut c);
            let v = decide(&s, &st, &c);
            assert_eq!(v.auto, row.auto, "auto: {}", row.name);
            assert_eq!(v.manual, row.manual, "manual: {}", row.name);
            assert_eq!(v.auto_allowed(), row.auto.is_empty(), "{}", row.name);
            assert_eq!(v.manual_allowed(), row.manual.is_empty(), "{}", row.name);
        }
    }

    /// The data plan at the pacing point (`data_plan`), row by row: (name, network, bytes used
    /// today, budget in MiB, metering, left).
    #[test]
    fn the_data_plan_meters_cellular_and_holds_a_used_budget() {
        let rows: &[(&str, Network, u64, u64, bool, u64)] = &[
            ("wifi, no budget", Network::Wifi, 0, 0, false, u64::MAX),
            (
                "wifi, a budget left",
                Network::Wifi,
                1 << 20,
                100,
                false,
                99 << 20,
            ),
            (
                "cellular, no budget",
                Network::Cellular,
                1 << 40,
                0,
                true,
                u64::MAX,
            ),
            (
                "cellular within the budget",
                Network::Cellular,
                99 << 20,
                100,
                true,
                1 << 20,
            ),
            (
                "cellular, the budget used",
                Network::Cellular,
                100 << 20,
                100,
                true,
                0,
            ),
        ];
        for &(name, network, used, mib, metering, left) in rows {
            let (mut s, mut st) = (good(), consenting());
            on(&mut s, network);
            s.cellular_bytes_today = used;
            st.network = NetworkPref::Any;
            st.cellular_daily_mib = mib;
            let v = decide(&s, &st, &limits());
            let plan = data_plan(&v, &s, &st);
            assert_eq!(plan, DataPlan { metering, left }, "{name}");
        }
    }

    #[test]
    fn the_schedule_changes_at_the_next_window_edge() {
        let w = |s: &str| Window::parse(s).unwrap();
        let night = [w("23:00-06:00")];
        type Row<'a> = (&'a str, &'a [Window], Option<u16>, Option<u16>);
        let rows: &[Row] = &[
            ("no schedule", &[], Some(600), None),
            ("unknown time", &night, None, None),
            ("the whole day", &[w("00:00-00:00")], Some(600), None),
            (
                "before the window opens",
                &night,
                Some(22 * 60 + 30),
                Some(30),
            ),
            (
                "inside, until it closes",
                &night,
                Some(23 * 60),
                Some(7 * 60),
            ),
            ("inside after midnight", &night, Some(5 * 60 + 59), Some(1)),
            ("just closed", &night, Some(6 * 60), Some(17 * 60)),
            (
                "two windows",
                &[w("01:00-02:00"), w("02:00-03:00")],
                Some(90),
                Some(90),
            ),
        ];
        for (name, windows, now, want) in rows {
            assert_eq!(schedule_changes_in(windows, *now), *want, "{name}");
        }
    }

    #[test]
    fn auto_blocks_come_in_block_order() {
        for row in ROWS {
            assert!(row.auto.windows(2).all(|w| w[0] < w[1]), "{}", row.name);
        }
    }

    #[test]
    fn block_names_are_the_contracts() {
        let all = [
            AutoUploadOff,
            NotCharging,
            BatteryLow,
            NetworkNotAllowed,
            Offline,
            Recording,
            Busy,
            TooHot,
            MeteredNetwork,
            OutsideSchedule,
            DataBudgetUsed,
        ];
        let json = serde_json::to_value(all).unwrap();
        let names: Vec<&str> = all.iter().map(|b| b.as_str()).collect();
        assert_eq!(json, serde_json::json!(names));
        assert_eq!(
            names,
            [
                "auto_upload_off",
                "not_charging",
                "battery_low",
                "network_not_allowed",
                "offline",
                "recording",
                "busy",
                "too_hot",
                "metered_network",
                "outside_schedule",
                "data_budget_used"
            ]
        );
    }

    #[test]
    fn choose_uplink_table() {
        use NetworkPref::{Any, Unmetered, Wifi};
        let wlan = || link("wlan0", Network::Wifi, &[Family::Ipv4]);
        let wlan_v6 = || link("wlan0", Network::Wifi, &[Family::Ipv6]);
        let wwan_v4 = || link("wwan0", Network::Cellular, &[Family::Ipv4]);
        let wwan_v6 = || link("wwan0", Network::Cellular, &[Family::Ipv6]);
        let eth = || link("eth0", Network::Ethernet, &[Family::Ipv4]);
        let hotspot = || {
            let mut l = wlan();
            l.metered = metered(MeteredBy::IphoneGateway);
            l
        };
        type Want = Result<&'static str, Vec<Block>>;
        let rows: Vec<(&str, Vec<Link>, NetworkPref, Want)> = vec![
            ("offline", vec![], Any, Err(vec![Offline])),
            (
                "ipv4 wifi, ipv6 cellular, wifi",
                vec![wlan(), wwan_v6()],
                Wifi,
                Ok("wlan0"),
            ),
            (
                "ipv4 wifi, ipv6 cellular, any: the wifi",
                vec![wlan(), wwan_v6()],
                Any,
                Ok("wlan0"),
            ),
            (
                "ipv4 cellular, ipv6 wifi, wifi",
                vec![wwan_v4(), wlan_v6()],
                Wifi,
                Ok("wlan0"),
            ),
            (
                "ipv4 cellular, ipv6 wifi, any: still the wifi",
                vec![wwan_v4(), wlan_v6()],
                Any,
                Ok("wlan0"),
            ),
            ("cellular only, any", vec![wwan_v4()], Any, Ok("wwan0")),
            (
                "cellular only, unmetered",
                vec![wwan_v4()],
                Unmetered,
                Err(vec![NetworkNotAllowed]),
            ),
            (
                "ethernet first under unmetered",
                vec![eth(), wlan()],
                Unmetered,
                Ok("eth0"),
            ),
            (
                "ethernet skipped under wifi",
                vec![eth(), wlan()],
                Wifi,
                Ok("wlan0"),
            ),
            (
                "hotspot under wifi",
                vec![hotspot()],
                Wifi,
                Err(vec![MeteredNetwork]),
            ),
            ("hotspot under any", vec![hotspot()], Any, Ok("wlan0")),
            (
                "hotspot and cellular under any: the first metered",
                vec![hotspot(), wwan_v6()],
                Any,
                Ok("wlan0"),
            ),
            (
                "cellular before ethernet under any: the unmetered one",
                vec![wwan_v4(), eth()],
                Any,
                Ok("eth0"),
            ),
        ];
        for (name, links, pref, want) in rows {
            let got = choose_uplink(&links, pref).map(|l| l.interface.as_str());
            assert_eq!(got, want, "{name}");
        }
    }

    fn secs(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    #[test]
    fn hold_down_opens_after_the_gate_held_open_long_enough() {
        let t0 = Instant::now();
        let mut h = HoldDown::new(secs(5.0));
        assert!(!h.update(false, t0));
        assert_eq!(h.opens_at(), None);
        assert!(!h.update(true, t0 + secs(1.0)));
        assert_eq!(h.opens_at(), Some(t0 + secs(6.0)));
        assert!(!h.update(true, t0 + secs(5.9)));
        assert!(h.update(true, t0 + secs(6.0)));
        assert!(h.update(true, t0 + secs(100.0)));
    }

    #[test]
    fn hold_down_closes_at_once_and_a_flap_restarts_the_wait() {
        let t0 = Instant::now();
        let mut h = HoldDown::new(secs(5.0));
        assert!(!h.update(true, t0));
        assert!(h.update(true, t0 + secs(5.0)));
        // The charger contact bounces: closed at once...
        assert!(!h.update(false, t0 + secs(5.5)));
        // ...and open again only after another full hold.
        assert!(!h.update(true, t0 + secs(6.0)));
        assert!(!h.update(false, t0 + secs(7.0)));
        assert!(!h.update(true, t0 + secs(8.0)));
        assert!(!h.update(true, t0 + secs(12.9)));
        assert!(h.update(true, t0 + secs(13.0)));
    }

    #[test]
    fn zero_hold_down_opens_at_once() {
        let t0 = Instant::now();
        let mut h = HoldDown::new(Duration::ZERO);
        assert!(h.update(true, t0));
        assert!(!h.update(false, t0));
    }
}
