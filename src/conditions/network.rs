//! The network traffic would take now: the interface of the IPv4 default route (CONTRACT
//! section 3), not "some Wi-Fi is up". A Wi-Fi interface that went down while its route is
//! still in the table does not count.

use std::io;
use std::path::Path;

use globset::GlobSet;

use super::{read_attr, Network, Problem, Reading};

/// `RTF_UP` from `<linux/route.h>`: the route is usable.
const RTF_UP: u32 = 0x0001;
/// `RTF_REJECT`: an `unreachable`/`prohibit` route, which sends no traffic anywhere.
const RTF_REJECT: u32 = 0x0200;

/// Where the traffic would go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// What kind of network it is.
    pub network: Network,
    /// The route's interface; `None` when offline.
    pub interface: Option<String>,
}

impl Uplink {
    /// No usable default route.
    pub fn offline() -> Uplink {
        Uplink {
            network: Network::Offline,
            interface: None,
        }
    }
}

/// One IPv4 default route from `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoute {
    /// The interface it goes out of.
    pub interface: String,
    /// Lower wins.
    pub metric: u32,
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
            let (destination, flags, mask) = (hex(f[1])?, hex(f[3])?, hex(f[7])?);
            let metric = f[6].parse().ok()?;
            let usable = flags & RTF_UP != 0 && flags & RTF_REJECT == 0;
            (destination == 0 && mask == 0 && usable).then(|| DefaultRoute {
                interface: f[0].to_owned(),
                metric,
            })
        })
        .collect();
    routes.sort_by_key(|r| r.metric);
    routes
}

/// Reads `proc/net/route` and `sysfs/class/net/*`: the lowest-metric default route whose
/// interface is up, and what kind of network that interface is.
///
/// An unreadable route table reads as offline (with the problem): without it there is no telling
/// where traffic would go, and "offline" blocks uploads rather than risking a metered link.
pub fn read_network(sysfs: &Path, proc: &Path, cellular: &GlobSet) -> Reading<Uplink> {
    let route_path = proc.join("net/route");
    let table = match std::fs::read_to_string(&route_path) {
        Ok(t) => t,
        Err(e) => {
            return Reading {
                value: Uplink::offline(),
                problem: Some(Problem::io(&route_path, &e)),
            }
        }
    };
    let mut problem = None;
    for route in default_routes(&table) {
        let net = sysfs.join("class/net").join(&route.interface);
        match interface_up(&net) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(p) => {
                problem.get_or_insert(p);
                continue;
            }
        }
        return Reading {
            value: Uplink {
                network: classify(&net, &route.interface, cellular),
                interface: Some(route.interface),
            },
            problem,
        };
    }
    Reading {
        value: Uplink::offline(),
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
        fn read(&self) -> Reading<Uplink> {
            read_network(&self.sys(), &self.proc(), &cellular())
        }
    }

    fn up(network: Network, interface: &str) -> Reading<Uplink> {
        Reading::ok(Uplink {
            network,
            interface: Some(interface.into()),
        })
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
        assert_eq!(
            default_routes(&t),
            vec![
                DefaultRoute {
                    interface: "eth0".into(),
                    metric: 100
                },
                DefaultRoute {
                    interface: "wlan0".into(),
                    metric: 600
                },
            ]
        );
    }

    #[test]
    fn wifi_route_is_wifi() {
        let t = Tree::new(&[subnet("wlan0"), default_via("wlan0", 600)]);
        t.wifi("wlan0", "up");
        assert_eq!(t.read(), up(Network::Wifi, "wlan0"));
    }

    #[test]
    fn wireless_extensions_directory_also_means_wifi() {
        let t = Tree::new(&[default_via("eth1", 0)]);
        t.iface("eth1", "up");
        fake::write(&t.sys(), "class/net/eth1/wireless/link", "0");
        assert_eq!(t.read(), up(Network::Wifi, "eth1"));
    }

    #[test]
    fn lowest_metric_wins() {
        let t = Tree::new(&[default_via("wlan0", 600), default_via("eth0", 100)]);
        t.wifi("wlan0", "up").iface("eth0", "up");
        assert_eq!(t.read(), up(Network::Ethernet, "eth0"));
    }

    #[test]
    fn cellular_by_name() {
        let t = Tree::new(&[default_via("wwan0", 700)]);
        t.iface("wwan0", "up");
        assert_eq!(t.read(), up(Network::Cellular, "wwan0"));
    }

    #[test]
    fn ppp_reporting_unknown_operstate_counts_as_up() {
        let t = Tree::new(&[line("ppp0", "00000000", "00000000", "0001", 0, "00000000")]);
        t.iface("ppp0", "unknown");
        assert_eq!(t.read(), up(Network::Cellular, "ppp0"));
    }

    #[test]
    fn stale_route_over_a_down_wifi_is_offline() {
        let t = Tree::new(&[default_via("wlan0", 600)]);
        t.wifi("wlan0", "down");
        assert_eq!(t.read(), Reading::ok(Uplink::offline()));
    }

    #[test]
    fn stale_route_over_a_down_wifi_falls_back_to_the_next_route() {
        let t = Tree::new(&[default_via("wlan0", 600), default_via("wwan0", 700)]);
        t.wifi("wlan0", "dormant").iface("wwan0", "up");
        assert_eq!(t.read(), up(Network::Cellular, "wwan0"));
    }

    #[test]
    fn route_over_a_vanished_interface_is_ignored() {
        let t = Tree::new(&[default_via("usb0", 0)]);
        assert_eq!(t.read(), Reading::ok(Uplink::offline()));
    }

    #[test]
    fn no_default_route_is_offline() {
        let t = Tree::new(&[subnet("wlan0")]);
        t.wifi("wlan0", "up");
        assert_eq!(t.read(), Reading::ok(Uplink::offline()));
    }

    #[test]
    fn unreadable_route_table_is_offline_with_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let r = read_network(dir.path(), dir.path(), &cellular());
        assert_eq!(r.value, Uplink::offline());
        assert!(r.problem.unwrap().path.ends_with("net/route"));
    }

    #[test]
    fn unreadable_operstate_skips_that_route_with_a_problem() {
        let t = Tree::new(&[default_via("wlan0", 600), default_via("eth0", 900)]);
        t.iface("eth0", "up");
        fake::unreadable(&t.sys(), "class/net/wlan0/operstate");
        let r = t.read();
        assert_eq!(r.value, up(Network::Ethernet, "eth0").value);
        assert!(r.problem.unwrap().path.ends_with("wlan0/operstate"));
    }
}
