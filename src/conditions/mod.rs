//! What the device says about itself (INTERFACE.md section 3), read from `conditions.sysfs`,
//! `conditions.proc`, the recording flag file and the daemon's own [`Activity`].
//!
//! Each source is a module with a pure reader over a root path ([`power::read_power`],
//! [`network::read_network`], [`thermal::read_max_temp`], [`load::read_load`],
//! [`idle::read_recording_flag`]), so tests point it at a temp-dir tree in the kernel's formats.
//! The [`Reader`] puts them together into a [`Snapshot`].
//!
//! Invariant: reading never fails and never panics. A file that is missing or unreadable is an
//! answer ("unknown", or the safe reading documented at each reader), logged once per source with
//! the file's name, and logged again only after the source recovered and then failed again.
//! Nothing here decides whether to upload: that is [`crate::gate`].

pub mod changes;
pub mod idle;
pub mod load;
pub mod metered;
pub mod network;
pub mod power;
pub mod thermal;
pub mod wpa;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::config;

pub use changes::Changes;
pub use idle::Activity;
pub use network::{Family, Link};

/// The network the default route would use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// The route's interface is a wireless LAN device.
    Wifi,
    /// Any other interface that is not cellular (Ethernet, USB gadget Ethernet, ...).
    Ethernet,
    /// The interface's name matches `conditions.cellular_interfaces`.
    Cellular,
    /// No IPv4 or IPv6 default route over an interface that is up (or the route table cannot be
    /// read).
    Offline,
}

impl Network {
    /// The name used in the API and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Wifi => "wifi",
            Network::Ethernet => "ethernet",
            Network::Cellular => "cellular",
            Network::Offline => "offline",
        }
    }
}

/// One reading of the device, shown as `conditions` in `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// On external power (charging or full); `None` when the device does not say.
    pub charging: Option<bool>,
    /// The battery's charge; `None` without a battery (mains only) or when it cannot be read.
    pub battery_percent: Option<u8>,
    /// The network an unbound connection would take: the first of `links` (the lowest-metric
    /// IPv4 default route, else IPv6). Uploads leave through the gate's choice among `links`
    /// (`uplink` in the status), which may be another one.
    pub network: Network,
    /// The interface of that route; `None` when offline.
    pub interface: Option<String>,
    /// Extension: every interface with a default route (IPv4 or IPv6) that is up, in the
    /// kernel's order of preference, with whether it is metered and why.
    pub links: Vec<Link>,
    /// The hottest thermal zone; `None` without thermal zones.
    pub temp_c: Option<f64>,
    /// The 1-minute load average; `None` when it cannot be read.
    pub load: Option<f64>,
    /// Recording flag file present or `PUT /v1/recording {"active": true}` in force.
    pub recording: bool,
    /// Seconds since the last write under the media root (`None`: none seen since start).
    pub secs_since_media_write: Option<u64>,
    /// Minutes after local midnight when this was read (for the user's schedule); `None` when
    /// the local time is unknown. Not shown in the status (it is the clock, not the device).
    #[serde(skip)]
    pub local_minute: Option<u16>,
    /// Bytes uploads sent over cellular today (local day), for the data plan; filled in by the
    /// conditions loop from the store. Shown in the status as `cellular_bytes_today`.
    #[serde(skip)]
    pub cellular_bytes_today: u64,
}

/// Why a reading is (partly) unknown: the file that could not be read and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file or directory that could not be read.
    pub path: PathBuf,
    /// What went wrong, for the log line.
    pub reason: String,
}

impl Problem {
    /// A problem from an I/O error on `path`.
    pub fn io(path: &Path, err: &io::Error) -> Problem {
        Problem {
            path: path.to_owned(),
            reason: err.to_string(),
        }
    }

    /// A problem with a file that was read but does not hold what the kernel writes there.
    pub fn malformed(path: &Path, text: &str) -> Problem {
        Problem {
            path: path.to_owned(),
            reason: format!("unexpected content {:?}", text.trim()),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// What a reader found, and the first problem it ran into on the way (if any). The value is
/// always usable: readers fall back to "unknown" or to the safe reading they document.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading<T> {
    /// The answer, possibly partial.
    pub value: T,
    /// The first file that could not be read, for the log.
    pub problem: Option<Problem>,
}

impl<T> Reading<T> {
    /// A reading with nothing wrong.
    pub fn ok(value: T) -> Reading<T> {
        Reading {
            value,
            problem: None,
        }
    }
}

/// Reads a small sysfs/procfs attribute, without its trailing newline.
fn read_attr(path: &Path) -> io::Result<String> {
    let mut s = std::fs::read_to_string(path)?;
    let end = s.trim_end().len();
    s.truncate(end);
    Ok(s)
}

/// The entries of `dir`, sorted so that readings (and the first problem) are deterministic.
fn sorted_entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// The sources the [`Reader`] reads, each logged about at most once per failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Power,
    Network,
    Thermal,
    Load,
    RecordingFlag,
    MeteredFlag,
    Dhcp,
    Wpa,
}

impl Source {
    const ALL: [Source; 8] = [
        Source::Power,
        Source::Network,
        Source::Thermal,
        Source::Load,
        Source::RecordingFlag,
        Source::MeteredFlag,
        Source::Dhcp,
        Source::Wpa,
    ];

    /// What the daemon assumes while this source cannot be read, for the warning.
    fn fallback(self) -> &'static str {
        match self {
            Source::Power => "charging or the battery level may read as unknown meanwhile",
            Source::Network => {
                "routes over interfaces it cannot check are not used meanwhile \
                 (no route table: offline)"
            }
            Source::Thermal => "only the zones that can be read count meanwhile",
            Source::Load => "the load average is unknown meanwhile",
            Source::RecordingFlag => {
                "assuming no recording from the flag meanwhile (PUT /v1/recording still counts)"
            }
            Source::MeteredFlag => "assuming the Wi-Fi is metered meanwhile",
            Source::Dhcp => "the DHCP lease's metered sign is unknown meanwhile (not metered)",
            Source::Wpa => {
                "the Wi-Fi network's name and beacon are unknown meanwhile (the app's answer \
                 for every network applies)"
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Source::Power => "power supply",
            Source::Network => "network",
            Source::Thermal => "thermal zone",
            Source::Load => "load average",
            Source::RecordingFlag => "recording flag",
            Source::MeteredFlag => "metered flag",
            Source::Dhcp => "DHCP lease",
            Source::Wpa => "wpa_supplicant",
        }
    }
}

/// What to log after a read, given what was already logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    /// Failing, and not logged yet.
    Failed,
    /// Readable again after a logged failure.
    Recovered,
    /// Nothing new to say.
    Same,
}

/// Remembers which sources are failing and have been logged, so a file that stays unreadable is
/// reported once instead of at every poll.
#[derive(Debug, Default)]
struct Warned([bool; Source::ALL.len()]);

impl Warned {
    fn note(&mut self, source: Source, problem: Option<&Problem>) -> Transition {
        let warned = &mut self.0[source as usize];
        match (problem.is_some(), *warned) {
            (true, false) => {
                *warned = true;
                Transition::Failed
            }
            (false, true) => {
                *warned = false;
                Transition::Recovered
            }
            _ => Transition::Same,
        }
    }
}

/// Reads the device files into a [`Snapshot`]; remembers which were unreadable so each source is
/// logged once.
pub struct Reader {
    sysfs: PathBuf,
    proc: PathBuf,
    recording_flag: PathBuf,
    metered_flag: Option<PathBuf>,
    networkd_leases: Option<PathBuf>,
    dhcp_vendor_dir: Option<PathBuf>,
    wpa_ctrl_dir: PathBuf,
    /// What wpa_supplicant last said per Wi-Fi interface, about which link, and whether that
    /// is its answer now (see [`Reader::read`]).
    wifi: HashMap<String, Named>,
    cellular: GlobSet,
    warned: Warned,
}

/// What identifies a link's network as the route table shows it: a new gateway or a new set of
/// families is a new network, whose name is asked again even on a timed read.
type LinkKey = (Option<std::net::Ipv4Addr>, Vec<Family>);

/// What the reader knows of one Wi-Fi link's network.
#[derive(Debug, Clone)]
struct Named {
    /// The link it is about.
    key: LinkKey,
    /// The last answer wpa_supplicant gave about it (`None`: none yet).
    wifi: Option<wpa::Wifi>,
    /// Whether the last time it was asked it answered: if not, the last answer is kept but
    /// it is asked again at every read until it answers.
    answered: bool,
}

impl Reader {
    /// A reader over the paths in `cfg`.
    pub fn new(cfg: &config::Conditions) -> Reader {
        Reader {
            sysfs: cfg.sysfs.clone(),
            proc: cfg.proc.clone(),
            recording_flag: cfg.recording_flag.clone(),
            metered_flag: cfg.metered_flag.clone(),
            networkd_leases: cfg.networkd_leases.clone(),
            dhcp_vendor_dir: cfg.dhcp_vendor_dir.clone(),
            wpa_ctrl_dir: cfg.wpa_ctrl_dir.clone(),
            wifi: HashMap::new(),
            cellular: cellular_globs(&cfg.cellular_interfaces),
            warned: Warned::default(),
        }
    }

    /// Reads every source now. Cheap (a few dozen small files), so it can run every second while
    /// uploading.
    ///
    /// wpa_supplicant is asked which network each Wi-Fi link is on when the read is `fresh`
    /// (something told the loop that the device changed, or the app asked), when the link is
    /// new, or when its gateway or families changed; a timed read (every second while
    /// uploading) reuses the last answer, if wpa_supplicant gave one (a failure is asked again
    /// at every read, see [`Reader::name_networks`]). Roaming to another network takes the link
    /// down and up (rtnetlink tells), or changes its gateway: either way it is asked again.
    pub async fn read(&mut self, activity: &Activity, fresh: bool) -> Snapshot {
        let power = power::read_power(&self.sysfs);
        self.report(Source::Power, power.problem.as_ref());
        let route = network::read_network(&self.sysfs, &self.proc, &self.cellular);
        self.report(Source::Network, route.problem.as_ref());
        let temp = thermal::read_max_temp(&self.sysfs);
        self.report(Source::Thermal, temp.problem.as_ref());
        let load = load::read_load(&self.proc);
        self.report(Source::Load, load.problem.as_ref());
        let flag = idle::read_recording_flag(&self.recording_flag);
        self.report(Source::RecordingFlag, flag.problem.as_ref());
        let metered_flag = metered::read_flag(self.metered_flag.as_deref());
        self.report(Source::MeteredFlag, metered_flag.problem.as_ref());

        let mut links = route.value.links;
        // Only a read that asked says whether wpa_supplicant can be asked again.
        if let Some(wpa_problem) = self.name_networks(&mut links, fresh).await {
            self.report(Source::Wpa, wpa_problem.as_ref());
        }
        let answers = activity.metered_answers();
        let mut dhcp_problem = None;
        for link in &mut links {
            let dhcp = metered::read_android_dhcp(
                &self.sysfs,
                &link.interface,
                self.networkd_leases.as_deref(),
                self.dhcp_vendor_dir.as_deref(),
            );
            dhcp_problem = dhcp_problem.or(dhcp.problem);
            let wifi = link.wifi.as_ref();
            let signs = metered::Signs {
                app: answers.for_network(wifi.and_then(|w| w.ssid.as_ref())),
                flag: metered_flag.value,
                android_dhcp: dhcp.value,
                beacon: wifi.map(|w| w.beacon).unwrap_or_default(),
            };
            link.metered = metered::decide(link.network, link.gateway_v4, signs);
        }
        self.report(Source::Dhcp, dhcp_problem.as_ref());
        let primary = links.first();

        Snapshot {
            charging: power.value.charging,
            battery_percent: power.value.battery_percent,
            network: primary.map_or(Network::Offline, |l| l.network),
            interface: primary.map(|l| l.interface.clone()),
            links,
            temp_c: temp.value,
            load: load.value,
            recording: flag.value || activity.recording(),
            secs_since_media_write: activity.since_last_write().map(|d| d.as_secs()),
            local_minute: crate::clock::local_now().map(|l| l.minute),
            cellular_bytes_today: 0,
        }
    }

    /// Fills in [`Link::wifi`] of the Wi-Fi links, asking wpa_supplicant where the last answer
    /// may be stale (see [`Reader::read`]); forgets the links that are gone. A failure is never
    /// kept as an answer: a link that did not change keeps the network it was last named (a
    /// timeout, a refused connection or a wpa_supplicant still associating says nothing of a
    /// new network, and "no name" would let the answer for every network apply where the user
    /// called this one metered), and it is asked again at every read, timed ones too, until it
    /// answers. `None`: nothing was asked; else the first problem, for the log.
    async fn name_networks(&mut self, links: &mut [Link], fresh: bool) -> Option<Option<Problem>> {
        let mut asked = false;
        let mut problem = None;
        let mut seen = HashMap::with_capacity(links.len());
        for link in links.iter_mut().filter(|l| l.network == Network::Wifi) {
            let key: LinkKey = (link.gateway_v4, link.families.clone());
            let last = self.wifi.remove(&link.interface).filter(|n| n.key == key);
            let named = match last {
                Some(n) if n.answered && !fresh => n,
                last => {
                    asked = true;
                    let answer = match wpa::query(&self.wpa_ctrl_dir, &link.interface).await {
                        Ok(answer) => answer,
                        Err(p) => {
                            problem.get_or_insert(p);
                            None
                        }
                    };
                    match answer {
                        Some(wifi) => Named {
                            key,
                            wifi: Some(wifi),
                            answered: true,
                        },
                        None => Named {
                            key,
                            wifi: last.and_then(|n| n.wifi),
                            answered: false,
                        },
                    }
                }
            };
            link.wifi = named.wifi.clone();
            seen.insert(link.interface.clone(), named);
        }
        self.wifi = seen;
        asked.then_some(problem)
    }

    fn report(&mut self, source: Source, problem: Option<&Problem>) {
        match (self.warned.note(source, problem), problem) {
            (Transition::Failed, Some(p)) => tracing::warn!(
                "cannot read {} state from {}: {}; {} (logged once until it recovers)",
                source.name(),
                p.path.display(),
                p.reason,
                source.fallback(),
            ),
            (Transition::Recovered, _) => {
                tracing::info!("{} state can be read again", source.name())
            }
            _ => {}
        }
    }
}

/// Compiles `conditions.cellular_interfaces`. The config loader has already refused bad
/// patterns; one that slips through (a config built in code) is skipped with a warning rather
/// than taking the daemon down.
fn cellular_globs(patterns: &[String]) -> GlobSet {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        match Glob::new(pattern) {
            Ok(g) => {
                set.add(g);
            }
            Err(e) => {
                tracing::warn!("ignoring conditions.cellular_interfaces pattern `{pattern}`: {e}")
            }
        }
    }
    set.build().unwrap_or_else(|e| {
        tracing::warn!("ignoring conditions.cellular_interfaces: {e}");
        GlobSet::empty()
    })
}

/// Builders for fake sysfs/procfs trees in the kernel's formats, shared by the readers' tests.
#[cfg(test)]
pub(crate) mod fake {
    use std::fs;
    use std::path::Path;

    /// Writes `text` (plus the kernel's trailing newline) at `root/rel`, creating directories.
    pub fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, format!("{text}\n")).unwrap();
    }

    /// Makes `root/rel` unreadable as a file. A directory in its place fails `read` with
    /// EISDIR even for root, which the tests run as in containers (where chmod 000 would not).
    pub fn unreadable(root: &Path, rel: &str) {
        let path = root.join(rel);
        let _ = fs::remove_file(&path);
        fs::create_dir_all(path).unwrap();
    }

    /// A power supply `name` of `kind` with the given attributes.
    pub fn supply(sysfs: &Path, name: &str, kind: &str, attrs: &[(&str, &str)]) {
        write(sysfs, &format!("class/power_supply/{name}/type"), kind);
        for (k, v) in attrs {
            write(sysfs, &format!("class/power_supply/{name}/{k}"), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_source_is_reported_once_until_it_recovers() {
        let p = Problem {
            path: "/sys/x".into(),
            reason: "gone".into(),
        };
        let mut w = Warned::default();
        assert_eq!(w.note(Source::Power, Some(&p)), Transition::Failed);
        assert_eq!(w.note(Source::Power, Some(&p)), Transition::Same);
        assert_eq!(w.note(Source::Power, Some(&p)), Transition::Same);
        // Another source is tracked on its own.
        assert_eq!(w.note(Source::Load, Some(&p)), Transition::Failed);
        assert_eq!(w.note(Source::Power, None), Transition::Recovered);
        assert_eq!(w.note(Source::Power, None), Transition::Same);
        assert_eq!(w.note(Source::Power, Some(&p)), Transition::Failed);
    }

    #[tokio::test]
    async fn reader_puts_the_sources_together() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let proc = dir.path().join("proc");
        fake::supply(&sys, "usb", "USB", &[("online", "1")]);
        fake::supply(
            &sys,
            "battery",
            "Battery",
            &[("status", "Charging"), ("capacity", "57")],
        );
        fake::write(
            &proc,
            "net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             wwan0\t00000000\t0100000A\t0003\t0\t0\t700\t00000000\t0\t0\t0",
        );
        fake::write(&sys, "class/net/wwan0/operstate", "up");
        fake::write(&sys, "class/thermal/thermal_zone0/temp", "45500");
        fake::write(&proc, "loadavg", "0.42 0.30 0.20 1/123 4567");
        let cfg = config::Conditions {
            sysfs: sys,
            proc,
            recording_flag: dir.path().join("recording"),
            ..Default::default()
        };
        let activity = Activity::new();
        activity.set_recording(true);
        let snap = Reader::new(&cfg).read(&activity, true).await;
        assert_eq!(
            snap,
            Snapshot {
                charging: Some(true),
                battery_percent: Some(57),
                network: Network::Cellular,
                interface: Some("wwan0".into()),
                links: snap.links.clone(),
                temp_c: Some(45.5),
                load: Some(0.42),
                recording: true,
                secs_since_media_write: None,
                local_minute: snap.local_minute,
                cellular_bytes_today: 0,
            }
        );
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["network"], "cellular");
        assert_eq!(
            json["links"],
            serde_json::json!([{"interface": "wwan0", "network": "cellular",
                "families": ["ipv4"], "metered": {"metered": true, "because": "cellular"}}])
        );
    }

    #[tokio::test]
    async fn an_empty_tree_reads_as_mains_powered_and_offline() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config::Conditions {
            sysfs: dir.path().join("sys"),
            proc: dir.path().join("proc"),
            recording_flag: dir.path().join("recording"),
            ..Default::default()
        };
        let snap = Reader::new(&cfg).read(&Activity::new(), true).await;
        assert_eq!(snap.charging, Some(true));
        assert_eq!(snap.battery_percent, None);
        assert_eq!(snap.network, Network::Offline);
        assert_eq!(snap.temp_c, None);
        assert_eq!(snap.load, None);
        assert!(!snap.recording);
    }

    /// A Wi-Fi link behind a fake wpa_supplicant (`testkit::wpa`), its gateway 192.168.1.1.
    fn wifi_tree(dir: &Path) -> config::Conditions {
        let sys = dir.join("sys");
        let proc = dir.join("proc");
        fake::write(
            &proc,
            "net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0",
        );
        fake::write(&sys, "class/net/wlan0/operstate", "up");
        fake::write(&sys, "class/net/wlan0/phy80211/name", "phy0");
        config::Conditions {
            sysfs: sys,
            proc,
            recording_flag: dir.join("recording"),
            wpa_ctrl_dir: dir.join("wpa"),
            ..Default::default()
        }
    }

    fn ssid_of(snap: &Snapshot) -> Option<String> {
        snap.links[0]
            .wifi
            .as_ref()
            .and_then(|w| w.ssid.as_ref())
            .map(|s| s.shown())
    }

    /// A wpa_supplicant that does not answer (busy, restarting) is no answer, not "no name":
    /// the network the link was on stays named, so the user's "metered" for it still holds,
    /// and it is asked again at the next read, a timed one too, until it answers. The warning
    /// is logged once for the outage, not taken back by a read that could not ask.
    #[tokio::test]
    async fn a_failed_wpa_query_keeps_the_last_name_and_is_asked_again() {
        use testkit::wpa::{FakeWpa, Network as Net};
        let dir = tempfile::tempdir().unwrap();
        let cfg = wifi_tree(dir.path());
        let wpa = FakeWpa::start(
            &cfg.wpa_ctrl_dir,
            "wlan0",
            Some(Net::named("Hotspot", "02:00:00:00:0c:01")),
        );
        let activity = Activity::new();
        let mut hotspot = crate::conditions::metered::Answers::default();
        hotspot.set_network(&wpa::Ssid::from_bytes(b"Hotspot"), Some(true));
        activity.set_metered_answers(hotspot);
        let mut reader = Reader::new(&cfg);
        let snap = reader.read(&activity, true).await;
        assert_eq!(ssid_of(&snap).as_deref(), Some("Hotspot"));
        assert!(snap.links[0].metered.metered);

        wpa.set_silent(true);
        let snap = reader.read(&activity, true).await;
        assert_eq!(
            ssid_of(&snap).as_deref(),
            Some("Hotspot"),
            "the last name kept"
        );
        assert!(snap.links[0].metered.metered, "still the user's answer");
        let warned = |r: &Reader| r.warned.0[Source::Wpa as usize];
        assert!(warned(&reader));
        let before = wpa.asked();
        let snap = reader.read(&activity, false).await;
        assert_eq!(ssid_of(&snap).as_deref(), Some("Hotspot"));
        assert!(warned(&reader), "no 'can be read again' in the outage");

        // It answers again, on another network: a timed read asks and sees it.
        wpa.set(Some(Net::named("Other", "02:00:00:00:0d:01")));
        wpa.set_silent(false);
        let snap = reader.read(&activity, false).await;
        assert!(wpa.asked() > before, "the timed read asked");
        assert_eq!(ssid_of(&snap).as_deref(), Some("Other"));
        assert!(!snap.links[0].metered.metered);
        assert!(!warned(&reader), "recovered");
        // Answered: timed reads reuse it and ask nothing.
        let asked = wpa.asked();
        reader.read(&activity, false).await;
        assert_eq!(wpa.asked(), asked);
    }
}
