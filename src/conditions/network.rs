//! The networks traffic could leave through: the interfaces of the IPv4 (`net/route`) and IPv6
//! (`net/ipv6_route`) default routes that are up (INTERFACE.md section 3), not "some Wi-Fi is up".
//!
//! Invariants:
//! - both address families count: an interface that carries only the IPv6 default route is an
//!   uplink like any other, so a dual-stack server can never be reached over a link nobody
//!   looked at;
//! - the links come in the kernel's order of preference: IPv4 default routes by metric, then
//!   IPv6 default routes by metric, each interface once (its first place wins);
//! - a Wi-Fi interface that went down while its route is still in the table does not count;
//! - a missing `net/ipv6_route` is a kernel without IPv6 (no IPv6 routes, no problem); a missing
//!   `net/route` is a problem and reads as offline.
//!
//! Which of these links uploads may use is the gate's decision ([`crate::gate::choose_uplink`]);
//! the upload client is then bound to that one interface, so the kernel's own choice per
//! connection no longer matters.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use globset::GlobSet;
use serde::Serialize;

use super::metered::Metered;
use super::wpa::Wifi;
use super::{read_attr, Network, Problem, Reading};

/// `RTF_UP` from `<linux/route.h>`: the route is usable.
const RTF_UP: u32 = 0x0001;
/// `RTF_REJECT`: an `unreachable`/`prohibit` route, which sends no traffic anywhere.
const RTF_REJECT: u32 = 0x0200;

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One interface that carries a default route and is up: a way out. Shown in
/// `conditions.links` of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The interface, e.g. `wlan0`.
    pub interface: String,
    /// What kind of network it is.
    pub network: Network,
    /// The families whose default route goes out of it, IPv4 first.
    pub families: Vec<Family>,
    /// The IPv4 default route's gateway, if it has one (the iPhone hotspot hint reads it).
    #[serde(skip)]
    pub gateway_v4: Option<Ipv4Addr>,
    /// Whether it is metered, and why; filled in by the [`super::Reader`] from the signs
    /// ([`super::metered`]), not metered as read here.
    pub metered: Metered,
    /// The Wi-Fi network it is on, when wpa_supplicant tells ([`super::wpa`]); filled in by the
    /// [`super::Reader`]. Not in `conditions.links`: the name is shown once, in
    /// `status.uplink.network_name`, and kept out of the support bundle.
    #[serde(skip)]
    pub wifi: Option<Wifi>,
}

/// Where traffic could go: every [`Link`], in the kernel's order of preference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Uplinks {
    /// Empty when offline.
    pub links: Vec<Link>,
}

impl Uplinks {
    /// No usable default route.
    pub fn offline() -> Uplinks {
        Uplinks::default()
    }

    /// What an unbound IPv4 connection would take (the first link): `conditions.network`.
    #[cfg(test)]
    pub fn primary(&self) -> Option<&Link> {
        self.links.first()
    }
}

/// One default route from `/proc/net/route` or `/proc/net/ipv6_route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoute {
    /// The interface it goes out of.
    pub interface: String,
    /// Lower wins.
    pub metric: u32,
    /// The next hop, if the route has one (an on-link default route has none).
    pub gateway: Option<IpAddr>,
}

/// The usable IPv4 default routes in `/proc/net/route` text, lowest metric first (ties keep the
/// table's order, which is the order the kernel tries them in).
///
/// The format: a header line, then one tab-separated line per route: `Iface Destination Gateway
/// Flags RefCnt Use Metric Mask MTU Window IRTT`, addresses and flags in hex. Addresses are the
/// raw network-order word printed as a host integer, so their byte order depends on the CPU; a
/// default route is all zeros (destination 0.0.0.0, mask 0.0.0.0) either way. Lines that do not
/// parse are skipped: one odd line must not hide the others.
pub fn default_routes(route_table: &str) -> Vec<DefaultRoute> {
    let mut routes: Vec<DefaultRoute> = route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let (destination, gateway, flags, mask) =
                (hex(f[1])?, hex(f[2])?, hex(f[3])?, hex(f[7])?);
            let metric = f[6].parse().ok()?;
            let usable = flags & RTF_UP != 0 && flags & RTF_REJECT == 0;
            (destination == 0 && mask == 0 && usable).then(|| DefaultRoute {
                interface: f[0].to_owned(),
                metric,
                // The word is in network order in memory: its native bytes are the address.
                gateway: (gateway != 0).then(|| IpAddr::V4(Ipv4Addr::from(gateway.to_ne_bytes()))),
            })
        })
        .collect();
    routes.sort_by_key(|r| r.metric);
    routes
}

/// The usable IPv6 default routes in `/proc/net/ipv6_route` text, lowest metric first.
///
/// The format (no header): `dest dest_len src src_len next_hop metric refcnt use flags device`,
/// addresses as 32 hex digits in network order, lengths, metric and flags in hex. A default
/// route has destination `::` and length 0. The kernel lists `unreachable` defaults on `lo`
/// with `RTF_REJECT`; they are skipped like other unusable routes.
pub fn default_routes_v6(route_table: &str) -> Vec<DefaultRoute> {
    let mut routes: Vec<DefaultRoute> = route_table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let dest = u128::from_str_radix(f[0], 16).ok()?;
            let dest_len = u8::from_str_radix(f[1], 16).ok()?;
            let gateway = u128::from_str_radix(f[4], 16).ok()?;
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            let usable = flags & RTF_UP != 0 && flags & RTF_REJECT == 0;
            (dest == 0 && dest_len == 0 && usable && f[9] != "lo").then(|| DefaultRoute {
                interface: f[9].to_owned(),
                metric,
                gateway: (gateway != 0).then(|| IpAddr::V6(Ipv6Addr::from(gateway))),
            })
        })
        .collect();
    routes.sort_by_key(|r| r.metric);
    routes
}

/// Reads `proc/net/route`, `proc/net/ipv6_route` and `sysfs/class/net/*`: every interface that
/// carries a default route of either family and is up, and what kind of network it is.
///
/// An unreadable IPv4 route table reads as offline (with the problem): without it there is no
/// telling where traffic would go, and "offline" blocks uploads rather than risking a metered
/// link. An unreadable (not missing) IPv6 table is a problem too, and reads the same way.
pub fn read_network(sysfs: &Path, proc: &Path, cellular: &GlobSet) -> Reading<Uplinks> {
    let route_path = proc.join("net/route");
    let table = match std::fs::read_to_string(&route_path) {
        Ok(t) => t,
        Err(e) => {
            return Reading {
                value: Uplinks::offline(),
                problem: Some(Problem::io(&route_path, &e)),
            }
        }
    };
    let v6_path = proc.join("net/ipv6_route");
    let v6_table = match std::fs::read_to_string(&v6_path) {
        Ok(t) => t,
        // No IPv6 in this kernel (or the namespace): no IPv6 route can take traffic.
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Reading {
                value: Uplinks::offline(),
                problem: Some(Problem::io(&v6_path, &e)),
            }
        }
    };
    let routes = default_routes(&table)
        .into_iter()
        .map(|r| (Family::Ipv4, r))
        .chain(
            default_routes_v6(&v6_table)
                .into_iter()
                .map(|r| (Family::Ipv6, r)),
        );
    let mut problem = None;
    let mut links: Vec<Link> = Vec::new();
    for (family, route) in routes {
        if let Some(link) = links.iter_mut().find(|l| l.interface == route.interface) {
            if !link.families.contains(&family) {
                link.families.push(family);
            }
            continue;
        }
        let net = sysfs.join("class/net").join(&route.interface);
        match interface_up(&net) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(p) => {
                problem.get_or_insert(p);
                continue;
            }
        }
        let gateway_v4 = match route.gateway {
            Some(IpAddr::V4(g)) => Some(g),
            _ => None,
        };
        links.push(Link {
            network: classify(&net, &route.interface, cellular),
            interface: route.interface,
            families: vec![family],
            gateway_v4,
            metered: Metered::default(),
            wifi: None,
        });
    }
    Reading {
        value: Uplinks { links },
        problem,
    }
}

/// Whether the interface at `net` (`class/net/IF`) carries traffic, from its `operstate`.
///
/// "unknown" counts as up: drivers that do not track carrier (ppp, tun, many wwan raw-IP
/// modems) report it while they pass traffic, and the kernel itself treats it as running
/// (`netif_oper_up()` accepts `IF_OPER_UP` and `IF_OPER_UNKNOWN`). "dormant" (Wi-Fi associated
/// but not yet authenticated), "lowerlayerdown" and "down" do not. An interface that is gone
/// (no directory) is simply not up: its stale route is ignored.
fn interface_up(net: &Path) -> Result<bool, Problem> {
    let path = net.join("operstate");
    match read_attr(&path) {
        Ok(state) => Ok(matches!(state.as_str(), "up" | "unknown")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Problem::io(&path, &e)),
    }
}

/// Wi-Fi if the kernel marks the interface as wireless (`wireless/` for wireless extensions,
/// `phy80211` for cfg80211 drivers), cellular if its name matches the operator's patterns,
/// otherwise Ethernet.
fn classify(net: &Path, interface: &str, cellular: &GlobSet) -> Network {
    if net.join("wireless").exists() || net.join("phy80211").exists() {
        Network::Wifi
    } else if cellular.is_match(interface) {
        Network::Cellular
    } else {
        Network::Ethernet
    }
}

#[cfg(test)]
mod tests {
    use globset::{Glob, GlobSetBuilder};

    use super::super::fake;
    use super::*;

    const HEADER: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT       ";

    /// A route line as the kernel prints it (padded with spaces to 127 columns).
    fn line(iface: &str, dest: &str, gw: &str, flags: &str, metric: u32, mask: &str) -> String {
        format!("{iface}\t{dest}\t{gw}\t{flags}\t0\t0\t{metric}\t{mask}\t0\t0\t0                ")
    }

    fn table(lines: &[String]) -> String {
        let mut t = String::from(HEADER);
        for l in lines {
            t.push('\n');
            t.push_str(l);
        }
        t.push('\n');
        t
    }

    fn cellular() -> GlobSet {
        let mut b = GlobSetBuilder::new();
        for p in ["wwan*", "rmnet*", "ppp*"] {
            b.add(Glob::new(p).unwrap());
        }
        b.build().unwrap()
    }

    struct Tree(tempfile::TempDir);

    impl Tree {
        fn new(routes: &[String]) -> Tree {
            let t = Tree(tempfile::tempdir().unwrap());
            fake::write(&t.proc(), "net/route", &table(routes));
            t
        }
        fn sys(&self) -> std::path::PathBuf {
            self.0.path().join("sys")
        }
        fn proc(&self) -> std::path::PathBuf {
            self.0.path().join("proc")
        }
        fn iface(&self, name: &str, operstate: &str) -> &Tree {
            fake::write(
                &self.sys(),
                &format!("class/net/{name}/operstate"),
                operstate,
            );
            self
        }
        fn wifi(&self, name: &str, operstate: &str) -> &Tree {
            self.iface(name, operstate);
            fake::write(
                &self.sys(),
                &format!("class/net/{name}/phy80211/name"),
                "phy0",
            );
            self
        }
        fn v6(&self, routes: &[String]) -> &Tree {
            fake::write(&self.proc(), "net/ipv6_route", &routes.join("\n"));
            self
        }
        fn read(&self) -> Reading<Uplinks> {
            read_network(&self.sys(), &self.proc(), &cellular())
        }
    }

    fn link(network: Network, interface: &str, families: &[Family]) -> Link {
        Link {
            interface: interface.into(),
            network,
            families: families.to_vec(),
            gateway_v4: None,
            metered: Metered::default(),
            wifi: None,
        }
    }

    /// The reading's primary link (what `conditions.network` shows), gateway left out.
    fn primary(r: &Reading<Uplinks>) -> Option<(Network, String)> {
        r.value.primary().map(|l| (l.network, l.interface.clone()))
    }

    fn up(network: Network, interface: &str) -> Option<(Network, String)> {
        Some((network, interface.into()))
    }

    /// An IPv6 default route line as the kernel prints it.
    fn default_v6(iface: &str, metric: u32) -> String {
        format!(
            "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
             fe800000000000000000000000000001 {metric:08x} 00000001 00000000 00000003 {iface:>8}"
        )
    }

    /// A default route via a gateway (RTF_UP | RTF_GATEWAY).
    fn default_via(iface: &str, metric: u32) -> String {
        line(iface, "00000000", "0101A8C0", "0003", metric, "00000000")
    }

    /// The on-link subnet route that comes with every address.
    fn subnet(iface: &str) -> String {
        line(iface, "0001A8C0", "00000000", "0001", 0, "00FFFFFF")
    }

    #[test]
    fn parses_the_kernel_format_and_orders_by_metric() {
        let t = table(&[
            default_via("wlan0", 600),
            subnet("wlan0"),
            default_via("eth0", 100),
            // Not up, a reject route, a /1 split route: none is a usable default route.
            line("usb0", "00000000", "0101A8C0", "0002", 1, "00000000"),
            line("*", "00000000", "00000000", "0201", 0, "00000000"),
            line("tun0", "00000000", "0100080A", "0003", 0, "00000080"),
            "garbage line".into(),
        ]);
        let gw = Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)));
        if cfg!(target_endian = "little") {
            assert_eq!(
                default_routes(&t),
                vec![
                    DefaultRoute {
                        interface: "eth0".into(),
                        metric: 100,
                        gateway: gw,
                    },
                    DefaultRoute {
                        interface: "wlan0".into(),
                        metric: 600,
                        gateway: gw,
                    },
                ]
            );
        }
    }

    #[test]
    fn wifi_route_is_wifi() {
        let t = Tree::new(&[subnet("wlan0"), default_via("wlan0", 600)]);
        t.wifi("wlan0", "up");
        assert_eq!(primary(&t.read()), up(Network::Wifi, "wlan0"));
    }

    #[test]
    fn wireless_extensions_directory_also_means_wifi() {
        let t = Tree::new(&[default_via("eth1", 0)]);
        t.iface("eth1", "up");
        fake::write(&t.sys(), "class/net/eth1/wireless/link", "0");
        assert_eq!(primary(&t.read()), up(Network::Wifi, "eth1"));
    }

    #[test]
    fn lowest_metric_wins() {
        let t = Tree::new(&[default_via("wlan0", 600), default_via("eth0", 100)]);
        t.wifi("wlan0", "up").iface("eth0", "up");
        assert_eq!(primary(&t.read()), up(Network::Ethernet, "eth0"));
    }

    #[test]
    fn cellular_by_name() {
        let t = Tree::new(&[default_via("wwan0", 700)]);
        t.iface("wwan0", "up");
        assert_eq!(primary(&t.read()), up(Network::Cellular, "wwan0"));
    }

    #[test]
    fn ppp_reporting_unknown_operstate_counts_as_up() {
        let t = Tree::new(&[line("ppp0", "00000000", "00000000", "0001", 0, "00000000")]);
        t.iface("ppp0", "unknown");
        assert_eq!(primary(&t.read()), up(Network::Cellular, "ppp0"));
    }

    #[test]
    fn stale_route_over_a_down_wifi_is_offline() {
        let t = Tree::new(&[default_via("wlan0", 600)]);
        t.wifi("wlan0", "down");
        assert_eq!(t.read(), Reading::ok(Uplinks::offline()));
    }

    #[test]
    fn stale_route_over_a_down_wifi_falls_back_to_the_next_route() {
        let t = Tree::new(&[default_via("wlan0", 600), default_via("wwan0", 700)]);
        t.wifi("wlan0", "dormant").iface("wwan0", "up");
        assert_eq!(primary(&t.read()), up(Network::Cellular, "wwan0"));
    }

    #[test]
    fn route_over_a_vanished_interface_is_ignored() {
        let t = Tree::new(&[default_via("usb0", 0)]);
        assert_eq!(t.read(), Reading::ok(Uplinks::offline()));
    }

    #[test]
    fn no_default_route_is_offline() {
        let t = Tree::new(&[subnet("wlan0")]);
        t.wifi("wlan0", "up");
        assert_eq!(t.read(), Reading::ok(Uplinks::offline()));
    }

    #[test]
    fn unreadable_route_table_is_offline_with_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let r = read_network(dir.path(), dir.path(), &cellular());
        assert_eq!(r.value, Uplinks::offline());
        assert!(r.problem.unwrap().path.ends_with("net/route"));
    }

    #[test]
    fn unreadable_operstate_skips_that_route_with_a_problem() {
        let t = Tree::new(&[default_via("wlan0", 600), default_via("eth0", 900)]);
        t.iface("eth0", "up");
        fake::unreadable(&t.sys(), "class/net/wlan0/operstate");
        let r = t.read();
        assert_eq!(primary(&r), up(Network::Ethernet, "eth0"));
        assert!(r.problem.unwrap().path.ends_with("wlan0/operstate"));
    }

    #[test]
    fn parses_the_ipv6_table_and_skips_lo_rejects_and_prefixes() {
        let t = [
            default_v6("wwan0", 1024),
            default_v6("wlan0", 600),
            // The kernel's unreachable default on lo, flags RTF_REJECT | RTF_UP.
            "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
             00000000000000000000000000000000 ffffffff 00000001 00000000 00200201       lo"
                .into(),
            // A /64 on-link route is not a default route.
            "20010db8000100000000000000000000 40 00000000000000000000000000000000 00 \
             00000000000000000000000000000000 00000100 00000001 00000000 00000001    wlan0"
                .into(),
            "garbage".into(),
        ]
        .join("\n");
        let r = default_routes_v6(&t);
        let names: Vec<(&str, u32)> = r.iter().map(|r| (r.interface.as_str(), r.metric)).collect();
        assert_eq!(names, [("wlan0", 600), ("wwan0", 1024)]);
        assert_eq!(r[0].gateway, Some("fe80::1".parse().unwrap()));
    }

    #[test]
    fn ipv4_on_wifi_and_ipv6_on_cellular_are_two_links_ipv4_first() {
        let t = Tree::new(&[default_via("wlan0", 600)]);
        t.wifi("wlan0", "up").iface("wwan0", "up");
        t.v6(&[default_v6("wwan0", 100)]);
        let r = t.read();
        assert_eq!(r.problem, None);
        let mut wlan = link(Network::Wifi, "wlan0", &[Family::Ipv4]);
        wlan.gateway_v4 = r.value.links[0].gateway_v4;
        assert_eq!(
            r.value.links,
            vec![wlan, link(Network::Cellular, "wwan0", &[Family::Ipv6])]
        );
    }

    #[test]
    fn one_interface_with_both_families_is_one_link() {
        let t = Tree::new(&[default_via("wlan0", 600)]);
        t.wifi("wlan0", "up").v6(&[default_v6("wlan0", 1024)]);
        let r = t.read();
        assert_eq!(r.value.links.len(), 1);
        assert_eq!(r.value.links[0].families, [Family::Ipv4, Family::Ipv6]);
    }

    #[test]
    fn an_ipv6_only_uplink_is_not_offline() {
        let t = Tree::new(&[subnet("wlan0")]);
        t.wifi("wlan0", "up").v6(&[default_v6("wlan0", 1024)]);
        assert_eq!(primary(&t.read()), up(Network::Wifi, "wlan0"));
    }

    #[test]
    fn the_iphone_hint_needs_the_ipv4_gateway() {
        // 172.20.10.1 as the kernel prints it on a little-endian CPU: 010A14AC.
        let gw = u32::from_ne_bytes([172, 20, 10, 1]);
        let t = Tree::new(&[line(
            "wlan0",
            "00000000",
            &format!("{gw:08X}"),
            "0003",
            600,
            "00000000",
        )]);
        t.wifi("wlan0", "up");
        assert_eq!(
            t.read().value.links[0].gateway_v4,
            Some(Ipv4Addr::new(172, 20, 10, 1))
        );
    }
}
