//! What the status and the privacy page say about the way out (issue 15): the interface uploads
//! leave through, the binding in force, and whether the network is metered and why.
//!
//! Invariant: pure functions of the snapshot, the gate's verdict and the client's binding; the
//! status never claims an interface the client is not bound to (the binding, not the verdict,
//! names it).

use serde::Serialize;

use crate::conditions::metered::{Answers, MeteredBy};
use crate::conditions::wpa::{Ssid, Wifi};
use crate::conditions::{Family, Link, Network, Snapshot};
use crate::upload::bind::{BindMode, Binding};

/// `status.uplink`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UplinkStatus {
    /// The interface every upload connection is bound to; `None`: no upload connection is made.
    pub interface: Option<String>,
    /// How connections are held to it: `device` (SO_BINDTODEVICE) or `address` (bound to its
    /// address, the fallback where the kernel refuses device binding); `None` when unbound.
    pub binding: Option<BindMode>,
    /// The kind of network of that interface, or, when none is approved, of the first link
    /// (the one the block is about); `None` when offline.
    pub network: Option<Network>,
    /// The address families it carries the default route of.
    pub families: Vec<Family>,
    /// Whether that network is metered...
    pub metered: bool,
    /// ...and which sign says so (`app` also when the app said it is not).
    pub metered_because: Option<MeteredBy>,
    /// The app's `PUT /v1/network` answer in force on that network: its own, or else the one
    /// for every network (`None`: the daemon decides).
    pub metered_override: Option<bool>,
    /// The Wi-Fi network of that interface, when wpa_supplicant tells (issue 25). Private: for
    /// the app only (the support bundle leaves it out unless `--with-names`).
    pub network_name: Option<NetworkName>,
}

/// A Wi-Fi network as the status shows it, from the live read (nothing of it is stored but
/// the SSID's key, with the app's answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkName {
    /// The SSID for people: UTF-8 as it is, other bytes as U+FFFD ([`Ssid::shown`]).
    pub ssid: String,
    /// The access point's address, `aa:bb:cc:dd:ee:ff`.
    pub bssid: String,
}

impl NetworkName {
    /// The name of `wifi`, when wpa_supplicant named its network.
    pub fn of(wifi: &Wifi) -> Option<(Ssid, NetworkName)> {
        let ssid = wifi.ssid.clone()?;
        let shown = NetworkName {
            ssid: ssid.shown(),
            bssid: wifi.bssid.clone(),
        };
        Some((ssid, shown))
    }
}

/// The link the status describes: the one the client is bound to, else the first (the one a
/// block is about).
fn described<'a>(snapshot: Option<&'a Snapshot>, binding: &Binding) -> Option<&'a Link> {
    let links = snapshot.map(|s| s.links.as_slice()).unwrap_or(&[]);
    binding
        .interface()
        .and_then(|i| links.iter().find(|l| l.interface == i))
        .or(links.first())
}

/// The Wi-Fi network an app's `PUT /v1/network` answer is about: the one the status names
/// ([`UplinkStatus::network_name`]), else the first Wi-Fi link whose network is known (the
/// camera's Wi-Fi behind a cellular link the kernel prefers). `None`: no Wi-Fi network is
/// known, and the answer is for every network.
pub fn answered_network(
    snapshot: Option<&Snapshot>,
    binding: &Binding,
) -> Option<(Ssid, NetworkName)> {
    let named = |l: &Link| l.wifi.as_ref().and_then(NetworkName::of);
    described(snapshot, binding).and_then(named).or_else(|| {
        snapshot
            .map(|s| s.links.as_slice())
            .unwrap_or(&[])
            .iter()
            .find_map(named)
    })
}

/// Puts [`UplinkStatus`] together. `binding` is the client's, which follows the verdict within
/// one conditions poll.
pub fn describe(snapshot: Option<&Snapshot>, binding: &Binding, answers: &Answers) -> UplinkStatus {
    let interface = binding.interface().map(str::to_string);
    let link = described(snapshot, binding);
    let named = link.and_then(|l| l.wifi.as_ref()).and_then(NetworkName::of);
    let (ssid, network_name) = named.unzip();
    UplinkStatus {
        binding: binding.mode(),
        network: link.map(|l| l.network),
        families: link.map(|l| l.families.clone()).unwrap_or_default(),
        metered: link.is_some_and(|l| l.metered.metered),
        metered_because: link.and_then(|l| l.metered.because),
        metered_override: answers.for_network(ssid.as_ref()),
        network_name,
        interface,
    }
}

/// One sentence for `GET /v1/privacy`: which way the bytes leave.
pub fn privacy_sentence(u: &UplinkStatus) -> String {
    match (&u.interface, u.binding) {
        (Some(i), Some(BindMode::Device)) => format!(
            "only through {i} ({}): every upload connection is bound to that interface",
            u.network.map_or("unknown", Network::as_str)
        ),
        (Some(i), Some(BindMode::Address)) => format!(
            "only through {i} ({}): every upload connection is bound to its address \
             (the kernel refuses binding to the interface itself)",
            u.network.map_or("unknown", Network::as_str)
        ),
        (Some(i), None) => format!(
            "to this device only (the endpoint is a loopback address); uploads may run while \
             {i} is the approved interface"
        ),
        _ => "nowhere now: no network interface is approved for uploads".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::metered::Metered;
    use crate::conditions::Link;

    fn snap(links: Vec<Link>) -> Snapshot {
        Snapshot {
            charging: None,
            battery_percent: None,
            network: Network::Wifi,
            interface: None,
            links,
            temp_c: None,
            load: None,
            recording: false,
            secs_since_media_write: None,
            local_minute: None,
            cellular_bytes_today: 0,
        }
    }

    fn link(i: &str, network: Network, metered: Option<MeteredBy>) -> Link {
        Link {
            interface: i.into(),
            network,
            families: vec![Family::Ipv4],
            gateway_v4: None,
            metered: Metered {
                metered: metered.is_some(),
                because: metered,
            },
            wifi: None,
        }
    }

    #[test]
    fn describes_the_bound_interface_or_the_blocked_one() {
        let s = snap(vec![
            link("wwan0", Network::Cellular, Some(MeteredBy::Cellular)),
            link("wlan0", Network::Wifi, None),
        ]);
        let none = Answers::default();
        let u = describe(Some(&s), &Binding::Device("wlan0".into()), &none);
        assert_eq!(u.interface.as_deref(), Some("wlan0"));
        assert_eq!(u.binding, Some(BindMode::Device));
        assert_eq!((u.network, u.metered), (Some(Network::Wifi), false));
        assert!(privacy_sentence(&u).starts_with("only through wlan0 (wifi)"));

        let global = Answers {
            global: Some(true),
            ..none.clone()
        };
        let u = describe(Some(&s), &Binding::Refused, &global);
        assert_eq!((u.interface, u.binding), (None, None));
        assert_eq!(u.metered_because, Some(MeteredBy::Cellular));
        assert_eq!(u.metered_override, Some(true));
        let json = serde_json::to_value(describe(None, &Binding::Refused, &none)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"interface": null, "binding": null, "network": null,
                "families": [], "metered": false, "metered_because": null,
                "metered_override": null, "network_name": null})
        );
    }

    #[test]
    fn names_the_wifi_network_and_its_own_answer() {
        let home = Ssid::from_bytes(b"Home");
        let shown = NetworkName {
            ssid: "Home".into(),
            bssid: "02:00:00:00:01:00".into(),
        };
        let mut wifi = link("wlan0", Network::Wifi, None);
        wifi.wifi = Some(Wifi {
            bssid: "02:00:00:00:01:00".into(),
            ssid: Some(home.clone()),
            beacon: Default::default(),
        });
        let cell = link("wwan0", Network::Cellular, Some(MeteredBy::Cellular));
        let mut answers = Answers {
            global: Some(true),
            ..Default::default()
        };
        answers.set_network(&home, Some(false));
        let s = snap(vec![wifi.clone(), cell.clone()]);
        let u = describe(Some(&s), &Binding::Device("wlan0".into()), &answers);
        assert_eq!(u.network_name, Some(shown.clone()));
        assert_eq!(u.metered_override, Some(false), "its own answer wins");
        let json = serde_json::to_value(&u).unwrap();
        assert_eq!(
            json["network_name"],
            serde_json::json!({"ssid": "Home", "bssid": "02:00:00:00:01:00"})
        );
        // Cellular first and nothing bound: the status is about wwan0 and names no Wi-Fi, but
        // the app's answer is about the Wi-Fi it can see.
        let s = snap(vec![cell.clone(), wifi.clone()]);
        let u = describe(Some(&s), &Binding::Refused, &answers);
        assert_eq!((u.network_name, u.metered_override), (None, Some(true)));
        assert_eq!(
            answered_network(Some(&s), &Binding::Refused),
            Some((home, shown))
        );
        assert_eq!(answered_network(None, &Binding::Refused), None);
        // An empty SSID is no name: the answer for every network.
        wifi.wifi.as_mut().unwrap().ssid = None;
        let s = snap(vec![wifi, cell]);
        let u = describe(Some(&s), &Binding::Device("wlan0".into()), &answers);
        assert_eq!((u.network_name, u.metered_override), (None, Some(true)));
        assert_eq!(answered_network(Some(&s), &Binding::Refused), None);
    }
}
