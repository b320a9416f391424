//! Whether a link costs the user money per byte although it is not cellular: a phone's hotspot
//! (Android or iPhone), a travel router on mobile data. INTERFACE.md section 3: a Wi-Fi is metered
//! when `conditions.metered_flag` exists, when the app says so (`PUT /v1/network`), or when the
//! network says so.
//!
//! What each source can tell, cheapest and most certain first:
//! - the app's answer (`PUT /v1/network {"metered": true|false}`): the user's word, it wins over
//!   everything else, both ways; `null` hands the decision back to the daemon ([`Answers`]:
//!   per Wi-Fi network when its name is known, else for every network);
//! - the firmware's flag file (`conditions.metered_flag`): the firmware knows its own Wi-Fi;
//! - the access point's beacon (read from wpa_supplicant, [`super::wpa`]): Apple's Personal
//!   Hotspot element, or Microsoft's Network Cost element saying the network costs money. The
//!   hotspot says it of itself, so it ranks above DHCP's sign (which an Android phone sends
//!   too, so either names a phone) and well above the gateway hint;
//! - Android's hotspot (and its USB tethering) puts `ANDROID_METERED` in DHCP option 43
//!   (vendor-specific information). Read from systemd-networkd's lease file
//!   (`conditions.networkd_leases`, files named by ifindex, `VENDOR_SPECIFIC=` in hex) or from a
//!   file per interface that the firmware's udhcpc/dhcpcd hook writes
//!   (`conditions.dhcp_vendor_dir/IFNAME`: option 43 as hex or raw bytes; docs/uplink.md);
//! - an iPhone hotspot hands out 172.20.10.0/28 with the gateway 172.20.10.1. Only a hint: any
//!   router can use that address, and an iPhone sends nothing more telling over DHCP. It counts
//!   (blocks) because a false "metered" costs a delayed backup, a false "unmetered" costs money.
//!
//! Invariants: the readers never fail (a missing file is "no sign"); [`decide`] is pure; the
//! flag file and the app's answer speak about Wi-Fi only, the network's own signs (DHCP, gateway)
//! about any link that is not cellular (an Android phone's USB tethering is Ethernet); cellular
//! is always metered.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Serialize;

use super::wpa::{Beacon, Ssid};
use super::{read_attr, Network, Problem, Reading};

/// The gateway an iPhone's Personal Hotspot gives its clients.
pub const IPHONE_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 20, 10, 1);

/// What Android's tethering puts in DHCP option 43 when the upstream is metered.
const ANDROID_METERED: &[u8] = b"ANDROID_METERED";

/// Why a link counts as metered (or, for [`MeteredBy::App`], as not metered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeteredBy {
    /// A cellular interface: always metered.
    Cellular,
    /// The app said so (`PUT /v1/network`), either way: for this Wi-Fi network (by its SSID),
    /// or for every network it gave no answer of its own.
    App,
    /// `conditions.metered_flag` exists.
    FirmwareFlag,
    /// The access point beacons Apple's Personal Hotspot element (an iPhone or iPad sharing its
    /// mobile data).
    AppleHotspotBeacon,
    /// The access point beacons Microsoft's Network Cost element with a metered cost (Windows'
    /// Mobile Hotspot, or a router configured so).
    NetworkCostBeacon,
    /// The DHCP lease carries `ANDROID_METERED` (an Android hotspot or USB tethering).
    AndroidDhcp,
    /// The IPv4 default gateway is 172.20.10.1, an iPhone hotspot's (a hint; see module docs).
    IphoneGateway,
}

impl MeteredBy {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            MeteredBy::Cellular => "cellular",
            MeteredBy::App => "app",
            MeteredBy::FirmwareFlag => "firmware_flag",
            MeteredBy::AppleHotspotBeacon => "apple_hotspot_beacon",
            MeteredBy::NetworkCostBeacon => "network_cost_beacon",
            MeteredBy::AndroidDhcp => "android_dhcp",
            MeteredBy::IphoneGateway => "iphone_gateway",
        }
    }
}

/// Whether a link is metered, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Metered {
    /// Uploads over it cost the user per byte.
    pub metered: bool,
    /// The source that decided; `None`: no sign either way (not metered).
    pub because: Option<MeteredBy>,
}

/// The signs about one link, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signs {
    /// The app's answer: `Some(true|false)`, or `None` to let the daemon decide.
    pub app: Option<bool>,
    /// The firmware's flag file exists.
    pub flag: bool,
    /// The link's DHCP lease says `ANDROID_METERED`.
    pub android_dhcp: bool,
    /// What the Wi-Fi's access point beacons ([`super::wpa`]); default when unknown.
    pub beacon: Beacon,
}

/// Decides whether a link of kind `network`, whose IPv4 default gateway is `gateway_v4`, is
/// metered from the signs. Pure; see the module docs for the order. It takes the link's two
/// facts rather than `network::Link`, which carries its verdict: so `network` uses this module
/// and not the other way round.
pub fn decide(network: Network, gateway_v4: Option<Ipv4Addr>, signs: Signs) -> Metered {
    let yes = |by| Metered {
        metered: true,
        because: Some(by),
    };
    match network {
        Network::Cellular => return yes(MeteredBy::Cellular),
        Network::Offline => return Metered::default(),
        Network::Wifi | Network::Ethernet => {}
    }
    let wifi = network == Network::Wifi;
    if let (true, Some(app)) = (wifi, signs.app) {
        return Metered {
            metered: app,
            because: Some(MeteredBy::App),
        };
    }
    if wifi && signs.flag {
        yes(MeteredBy::FirmwareFlag)
    } else if wifi && signs.beacon.apple_hotspot {
        yes(MeteredBy::AppleHotspotBeacon)
    } else if wifi && signs.beacon.network_cost_metered {
        yes(MeteredBy::NetworkCostBeacon)
    } else if signs.android_dhcp {
        yes(MeteredBy::AndroidDhcp)
    } else if gateway_v4 == Some(IPHONE_GATEWAY) {
        yes(MeteredBy::IphoneGateway)
    } else {
        Metered::default()
    }
}

/// How many Wi-Fi networks' "not metered" answers are kept at most: past this the oldest
/// "not metered" answer goes (see [`Answers::set_network`]).
pub const NETWORKS_KEPT: usize = 64;

/// The app's answer for one Wi-Fi network, kept in the user's choices (`choices.json`, as
/// `store::ledger::MeteredNetwork`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAnswer {
    /// The network, by its SSID's bytes (as phones remember a network; a network of several
    /// access points is one network). No BSSID is kept: it would say where the camera was.
    pub ssid: Ssid,
    /// The app's word: metered or not; `None`: the daemon decides on this network (the answer
    /// for every network does not apply here).
    pub metered: Option<bool>,
}

/// The app's answers (`PUT /v1/network`): one per Wi-Fi network whose SSID was known when it
/// answered, and one for the rest (`global`: Ethernet, or a Wi-Fi whose name cannot be read,
/// or a network without an answer of its own). A network's own answer, "the daemon decides"
/// included, wins on that network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answers {
    /// The answer for every network without its own (`None`: the daemon decides).
    pub global: Option<bool>,
    /// Per network, oldest answer first, one per SSID.
    pub networks: Vec<NetworkAnswer>,
}

impl Answers {
    /// The answer in force on a link whose Wi-Fi network is `ssid` (`None`: not a Wi-Fi, or
    /// its name is unknown): its own, else the one for every network.
    pub fn for_network(&self, ssid: Option<&Ssid>) -> Option<bool> {
        match ssid.and_then(|s| self.networks.iter().find(|a| a.ssid == *s)) {
            Some(own) => own.metered,
            None => self.global,
        }
    }

    /// The app's `PUT /v1/network` on a link whose Wi-Fi network is `ssid` (`None`: unknown).
    /// A known network gets the answer as its own, `null` ("the daemon decides") included, so
    /// that "you decide" hands the decision back there and nowhere else: the answer for every
    /// network stays for the others. Without a name the answer is the one for every network.
    pub fn apply(&mut self, ssid: Option<&Ssid>, metered: Option<bool>) {
        match ssid {
            Some(s) => self.set_network(s, metered),
            None => self.global = metered,
        }
    }

    /// Remembers `metered` for the network `ssid` (`None`: the daemon decides there), as the
    /// newest. Past [`NETWORKS_KEPT`] entries the oldest "not metered" answer other than this
    /// one goes: dropping it can only narrow what may be sent (the network falls back to the
    /// answer for every network, at most as wide). A "metered" or "daemon decides" answer is
    /// never dropped: either would let the answer for every network (`false`, now or later)
    /// widen what is sent on a network the user spoke about. With none to drop the list grows:
    /// each entry is one of the user's answers, so it grows only as fast as the user answers.
    pub fn set_network(&mut self, ssid: &Ssid, metered: Option<bool>) {
        self.networks.retain(|a| a.ssid != *ssid);
        self.networks.push(NetworkAnswer {
            ssid: ssid.clone(),
            metered,
        });
        while self.networks.len() > NETWORKS_KEPT {
            let older = &self.networks[..self.networks.len() - 1];
            let Some(drop) = older.iter().position(|a| a.metered == Some(false)) else {
                break;
            };
            self.networks.remove(drop);
        }
    }
}

/// Whether the flag file exists. Unset in the config: never. A path that cannot be checked
/// (permission) reads as present: "metered" delays a backup, "unmetered" may cost money.
pub fn read_flag(path: Option<&Path>) -> Reading<bool> {
    let Some(path) = path else {
        return Reading::ok(false);
    };
    match std::fs::symlink_metadata(path) {
        Ok(_) => Reading::ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Reading::ok(false),
        Err(e) => Reading {
            value: true,
            problem: Some(Problem::io(path, &e)),
        },
    }
}

/// Whether `interface`'s DHCP lease carries `ANDROID_METERED`, from systemd-networkd's lease
/// file (`leases/IFINDEX`, the ifindex from `sysfs/class/net/IF/ifindex`) and/or the firmware
/// hook's file (`vendor_dir/IFNAME`). Either source unset or its file missing: no sign.
pub fn read_android_dhcp(
    sysfs: &Path,
    interface: &str,
    networkd_leases: Option<&Path>,
    vendor_dir: Option<&Path>,
) -> Reading<bool> {
    let mut problem = None;
    if let Some(dir) = networkd_leases {
        let index_path = sysfs.join("class/net").join(interface).join("ifindex");
        match read_attr(&index_path) {
            Ok(index) => match read_optional(&dir.join(index.trim())) {
                Ok(Some(lease)) if networkd_lease_metered(&lease) => return Reading::ok(true),
                Ok(_) => {}
                Err(p) => problem = Some(p),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => problem = Some(Problem::io(&index_path, &e)),
        }
    }
    if let Some(dir) = vendor_dir {
        match read_optional(&dir.join(interface)) {
            Ok(Some(text)) if option43_metered(&text) => return Reading::ok(true),
            Ok(_) => {}
            Err(p) => {
                problem.get_or_insert(p);
            }
        }
    }
    Reading {
        value: false,
        problem,
    }
}

/// A file's text, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, Problem> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Problem::io(path, &e)),
    }
}

/// systemd-networkd's lease file (an env file) has `VENDOR_SPECIFIC=` with option 43 in hex.
pub fn networkd_lease_metered(lease: &str) -> bool {
    lease
        .lines()
        .filter_map(|l| l.trim().strip_prefix("VENDOR_SPECIFIC="))
        .any(option43_metered)
}

/// Option 43 as a hook wrote it: hex (udhcpc's `$opt43`, dhcpcd's
/// `$new_vendor_encapsulated_options`, colons and spaces allowed) or the raw bytes.
pub fn option43_metered(text: &str) -> bool {
    // Bytes, not chars: a hook file may hold anything (fuzz/regressions/dhcp/), and a pair of
    // digits must not be cut out of a multi-byte character.
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !matches!(c, b':' | b' ' | b'\n' | b'\r' | b'\t' | b'"'))
        .collect();
    let hex = (digits.len().is_multiple_of(2)
        && !digits.is_empty()
        && digits.iter().all(u8::is_ascii_hexdigit))
    .then(|| {
        digits
            .chunks(2)
            .map(|pair| {
                let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                digit(pair[0]) << 4 | digit(pair[1])
            })
            .collect::<Vec<u8>>()
    });
    let contains = |b: &[u8]| {
        b.windows(ANDROID_METERED.len())
            .any(|w| w == ANDROID_METERED)
    };
    hex.as_deref().is_some_and(contains) || contains(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::fake;
    use super::*;

    const HOME: Option<Ipv4Addr> = Some(Ipv4Addr::new(192, 168, 1, 1));
    const IPHONE: Option<Ipv4Addr> = Some(IPHONE_GATEWAY);

    fn m(metered: bool, because: Option<MeteredBy>) -> Metered {
        Metered { metered, because }
    }

    #[test]
    fn decide_table() {
        use MeteredBy::{
            AndroidDhcp, App, AppleHotspotBeacon, FirmwareFlag, IphoneGateway, NetworkCostBeacon,
        };
        use Network::{Cellular, Ethernet, Wifi};
        let none = Signs::default();
        let apple = Beacon {
            apple_hotspot: true,
            ..Beacon::default()
        };
        let cost = Beacon {
            network_cost_metered: true,
            ..Beacon::default()
        };
        let rows: &[(&str, Network, Option<Ipv4Addr>, Signs, Metered)] = &[
            ("home wifi, no sign", Wifi, HOME, none, m(false, None)),
            (
                "cellular always",
                Cellular,
                HOME,
                none,
                m(true, Some(MeteredBy::Cellular)),
            ),
            (
                "cellular even if the app says unmetered",
                Cellular,
                None,
                Signs {
                    app: Some(false),
                    ..none
                },
                m(true, Some(MeteredBy::Cellular)),
            ),
            (
                "flag",
                Wifi,
                HOME,
                Signs { flag: true, ..none },
                m(true, Some(FirmwareFlag)),
            ),
            (
                "android dhcp",
                Wifi,
                HOME,
                Signs {
                    android_dhcp: true,
                    ..none
                },
                m(true, Some(AndroidDhcp)),
            ),
            (
                "iphone gateway",
                Wifi,
                IPHONE,
                none,
                m(true, Some(IphoneGateway)),
            ),
            (
                "app says metered",
                Wifi,
                HOME,
                Signs {
                    app: Some(true),
                    ..none
                },
                m(true, Some(App)),
            ),
            (
                "app says unmetered over every hint",
                Wifi,
                IPHONE,
                Signs {
                    app: Some(false),
                    flag: true,
                    android_dhcp: true,
                    beacon: Beacon {
                        apple_hotspot: true,
                        network_cost_metered: true,
                    },
                },
                m(false, Some(App)),
            ),
            (
                "an iphone's beacon",
                Wifi,
                HOME,
                Signs {
                    beacon: apple,
                    android_dhcp: true,
                    ..none
                },
                m(true, Some(AppleHotspotBeacon)),
            ),
            (
                "a network cost beacon over the iphone gateway hint",
                Wifi,
                IPHONE,
                Signs {
                    beacon: cost,
                    ..none
                },
                m(true, Some(NetworkCostBeacon)),
            ),
            (
                "the flag before the beacon",
                Wifi,
                HOME,
                Signs {
                    beacon: apple,
                    flag: true,
                    ..none
                },
                m(true, Some(FirmwareFlag)),
            ),
            (
                "the app's no over a beacon",
                Wifi,
                HOME,
                Signs {
                    beacon: apple,
                    app: Some(false),
                    ..none
                },
                m(false, Some(App)),
            ),
            (
                "android usb tethering is ethernet, still metered",
                Ethernet,
                HOME,
                Signs {
                    android_dhcp: true,
                    ..none
                },
                m(true, Some(AndroidDhcp)),
            ),
            (
                "the flag speaks about wifi only",
                Ethernet,
                HOME,
                Signs {
                    flag: true,
                    app: Some(true),
                    ..none
                },
                m(false, None),
            ),
            (
                "iphone usb tethering",
                Ethernet,
                IPHONE,
                none,
                m(true, Some(IphoneGateway)),
            ),
        ];
        for (name, net, gw, signs, want) in rows {
            assert_eq!(decide(*net, *gw, *signs), *want, "{name}");
        }
    }

    fn net(i: usize) -> Ssid {
        Ssid::from_bytes(format!("net{i}").as_bytes())
    }

    #[test]
    fn answers_per_network_win_there() {
        let mut a = Answers {
            global: Some(true),
            ..Answers::default()
        };
        a.set_network(&net(1), Some(false));
        assert_eq!(a.for_network(Some(&net(1))), Some(false));
        assert_eq!(
            a.for_network(Some(&net(2))),
            Some(true),
            "the global answer"
        );
        assert_eq!(a.for_network(None), Some(true));
        // Two SSIDs that read the same (GBK "家", "办": both "��") are two networks.
        a.set_network(&Ssid::from_bytes(b"\xbc\xd2"), Some(false));
        assert_eq!(
            a.for_network(Some(&Ssid::from_bytes(b"\xb0\xec"))),
            Some(true)
        );
        // Without a name the app's answer is the one for every network.
        a.apply(None, Some(false));
        assert_eq!(
            (a.global, a.for_network(Some(&net(2)))),
            (Some(false), Some(false))
        );
        a.apply(None, None);
        assert_eq!(a.global, None);
    }

    /// "You decide" on a network hands the decision back there, and only there: with a
    /// global "not metered" left from before, "metered" then `null` on a hotspot lets the
    /// daemon decide on the hotspot (its beacon counts), keeps the global "not metered"
    /// elsewhere, and clears nothing on a network with no answer of its own.
    #[test]
    fn null_on_a_network_is_the_daemons_decision_there_only() {
        let hotspot = Ssid::from_bytes(b"iPhone");
        let mut a = Answers {
            global: Some(false),
            ..Answers::default()
        };
        a.apply(Some(&hotspot), Some(true));
        assert_eq!(a.for_network(Some(&hotspot)), Some(true));
        a.apply(Some(&hotspot), None);
        assert_eq!(
            a.for_network(Some(&hotspot)),
            None,
            "the daemon decides there"
        );
        assert_eq!(a.global, Some(false), "the answer elsewhere stays");
        assert_eq!(a.for_network(Some(&net(9))), Some(false));
        // On a network with no answer of its own: the same, the global answer stays.
        a.apply(Some(&net(3)), None);
        assert_eq!(a.global, Some(false));
        assert_eq!(a.for_network(Some(&net(3))), None);
        assert_eq!(a.for_network(None), Some(false));
        // Answering again replaces the entry, newest last.
        a.apply(Some(&hotspot), Some(false));
        assert_eq!(
            a.networks
                .iter()
                .map(|n| (n.ssid.key(), n.metered))
                .collect::<Vec<_>>(),
            [("net3", None), ("iPhone", Some(false))]
        );
    }

    /// The cap drops only "not metered" answers, and never the one just given: a "metered" or
    /// "daemon decides" answer is the user's protection and stays, the list growing instead.
    #[test]
    fn the_cap_drops_only_not_metered_answers() {
        let mut a = Answers::default();
        // A "metered" among many "not metered": the oldest "not metered" go.
        a.set_network(&net(0), Some(true));
        for i in 1..=NETWORKS_KEPT + 10 {
            a.set_network(&net(i), Some(false));
        }
        assert_eq!(a.networks.len(), NETWORKS_KEPT);
        assert_eq!(a.for_network(Some(&net(0))), Some(true));
        assert!(a.networks.iter().all(|n| n.ssid != net(1)));
        assert_eq!(a.networks.last().unwrap().ssid, net(NETWORKS_KEPT + 10));

        // Every entry "metered" or "daemon decides": a new "not metered" is kept, and so is
        // every "metered" when another one comes: the list grows.
        let mut a = Answers::default();
        for i in 0..NETWORKS_KEPT {
            a.set_network(&net(i), if i % 2 == 0 { Some(true) } else { None });
        }
        a.set_network(&net(100), Some(false));
        assert_eq!(a.for_network(Some(&net(100))), Some(false));
        a.set_network(&net(101), Some(true));
        assert_eq!(
            a.networks.len(),
            NETWORKS_KEPT + 1,
            "the older not metered went"
        );
        assert!(a.networks.iter().all(|n| n.ssid != net(100)));
        for i in 0..NETWORKS_KEPT {
            let want = if i % 2 == 0 { Some(true) } else { None };
            assert_eq!(a.for_network(Some(&net(i))), want, "net{i}");
            assert!(a.networks.iter().any(|n| n.ssid == net(i)), "net{i}");
        }
        a.set_network(&net(102), Some(true));
        assert_eq!(a.networks.len(), NETWORKS_KEPT + 2);
    }

    #[test]
    fn option_43_in_each_format() {
        let hex = "414e44524f49445f4d455445524544";
        assert!(option43_metered(hex));
        assert!(option43_metered(&hex.to_uppercase()));
        assert!(option43_metered(
            "41:4e:44:52:4f:49:44:5f:4d:45:54:45:52:45:44\n"
        ));
        assert!(option43_metered("ANDROID_METERED\n"));
        assert!(!option43_metered("414e44524f4944"));
        assert!(!option43_metered(""));
        assert!(!option43_metered("0104c0a80101"));
        // Not hex, and not a panic: a multi-byte character where a digit pair would be (found
        // by fuzzing), or a sign `from_str_radix` would take.
        assert!(!option43_metered("a\u{e9}b"));
        assert!(!option43_metered("+4+E"));
        assert!(option43_metered("\u{e9}ANDROID_METERED"));
        let lease =
            format!("# This is private data.\nADDRESS=192.168.43.20\nVENDOR_SPECIFIC={hex}\n");
        assert!(networkd_lease_metered(&lease));
        assert!(!networkd_lease_metered("ADDRESS=192.168.1.20\n"));
    }

    #[test]
    fn readers_find_the_lease_by_ifindex_and_the_hook_file_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let leases = dir.path().join("leases");
        let vendor = dir.path().join("vendor");
        fake::write(&sys, "class/net/wlan0/ifindex", "3");
        let read = || read_android_dhcp(&sys, "wlan0", Some(&leases), Some(&vendor));
        assert_eq!(read(), Reading::ok(false));
        fake::write(
            &leases,
            "3",
            "VENDOR_SPECIFIC=414E44524F49445F4D455445524544",
        );
        assert_eq!(read(), Reading::ok(true));
        std::fs::remove_file(leases.join("3")).unwrap();
        fake::write(&vendor, "wlan0", "414e44524f49445f4d455445524544");
        assert_eq!(read(), Reading::ok(true));
        // Another interface's hook file says nothing about this one.
        assert_eq!(
            read_android_dhcp(&sys, "eth0", Some(&leases), Some(&vendor)),
            Reading::ok(false)
        );
        fake::unreadable(&vendor, "wlan0");
        let r = read();
        assert!(!r.value);
        assert!(r.problem.unwrap().path.ends_with("vendor/wlan0"));
    }

    #[test]
    fn the_flag_file_unset_missing_present() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("metered");
        assert_eq!(read_flag(None), Reading::ok(false));
        assert_eq!(read_flag(Some(&flag)), Reading::ok(false));
        std::fs::write(&flag, "").unwrap();
        assert_eq!(read_flag(Some(&flag)), Reading::ok(true));
    }
}
