//! Keeping upload connections on the approved interface (issue 15: "Wi-Fi only means Wi-Fi").
//!
//! The gate names the interface uploads may leave through ([`crate::gate::Verdict::uplink`]);
//! this module decides how the upload client holds every connection to it:
//! - **device**: `SO_BINDTODEVICE` on each socket before it connects. The kernel then routes the
//!   connection only over that interface, whatever the route table says later: a default route
//!   moving to `wwan0` leaves a bound connection without a way out, never with another one.
//!   Unprivileged on a socket not yet bound since Linux 5.7; older kernels want `CAP_NET_RAW`.
//! - **address**: where the kernel refuses that, the socket is bound to one of the interface's
//!   own addresses and the name lookup keeps only that family. Weaker: Linux picks the way out
//!   by destination, not by source address, so this holds only while the interface carries the
//!   default route of that family (the gate's choice and the conditions loop, polling every
//!   second while uploading, keep it so; a route change can leak up to a second of traffic);
//!   docs/uplink.md says so.
//! - **none**: no interface approved, or address binding has no address to use: the client
//!   makes no connection at all.
//!
//! Loopback endpoints (`http://127.0.0.1`, allowed by the config for a relay on the device and
//! for tests) are never bound: those connections do not leave the device, and binding them to
//! `wlan0` would only break them. The gate's verdict still decides whether they may run.
//!
//! Invariants: [`choose`] is pure; the probe never fails the daemon (a refusal is an answer);
//! no binding is ever "the kernel decides" in the daemon ([`Binding::Unbound`] is for tests
//! and tools that build a client without a gate).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use crate::conditions::Family;

/// How connections are held to the interface; `status.uplink.binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindMode {
    /// `SO_BINDTODEVICE`.
    Device,
    /// Bound to the interface's own address, lookups of one family.
    Address,
}

/// What the upload client's connections are bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Not bound: the kernel routes each connection (clients built outside the daemon).
    Unbound,
    /// No connection may be made (no approved interface, or nothing to bind to).
    Refused,
    /// `SO_BINDTODEVICE` to this interface.
    Device(String),
    /// The interface's own address (and lookups of its family only).
    Address { interface: String, addr: IpAddr },
    /// Every configured endpoint is on this device: nothing to bind, the gate approved this
    /// interface.
    Loopback(String),
}

impl Binding {
    /// The interface connections leave through, if bound.
    pub fn interface(&self) -> Option<&str> {
        match self {
            Binding::Device(i) | Binding::Address { interface: i, .. } | Binding::Loopback(i) => {
                Some(i)
            }
            Binding::Unbound | Binding::Refused => None,
        }
    }

    /// The mode in force, for the status; `None` when not bound.
    pub fn mode(&self) -> Option<BindMode> {
        match self {
            Binding::Device(_) => Some(BindMode::Device),
            Binding::Address { .. } => Some(BindMode::Address),
            Binding::Unbound | Binding::Refused | Binding::Loopback(_) => None,
        }
    }
}

/// How to hold connections to `interface` (carrying default routes of `families`): by device
/// when the kernel allows it, else by one of its addresses of a family it carries the default
/// route for (IPv4 first), else not at all. Pure.
pub fn choose(
    interface: &str,
    device_allowed: bool,
    addresses: &[IpAddr],
    families: &[Family],
) -> Binding {
    if device_allowed {
        return Binding::Device(interface.to_string());
    }
    let usable = |a: &&IpAddr| match a {
        IpAddr::V4(v4) => {
            families.contains(&Family::Ipv4) && !v4.is_loopback() && !v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            families.contains(&Family::Ipv6)
                && !v6.is_loopback()
                // fe80::/10 needs a scope id and reaches no server.
                && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    };
    let pick = addresses
        .iter()
        .filter(usable)
        .find(|a| a.is_ipv4())
        .or_else(|| addresses.iter().find(usable));
    match pick {
        Some(addr) => Binding::Address {
            interface: interface.to_string(),
            addr: *addr,
        },
        None => Binding::Refused,
    }
}

/// Whether this process may bind a socket to `interface` with `SO_BINDTODEVICE`: tried on a
/// fresh TCP socket, closed at once. `EPERM` on kernels before 5.7 without `CAP_NET_RAW`;
/// `ENODEV` when the interface is gone.
pub fn probe_device(interface: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with NUL"))?;
    // SAFETY: plain socket calls on an fd this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes = name.as_bytes_with_nul();
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            bytes.as_ptr().cast(),
            bytes.len() as libc::socklen_t,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// The addresses on `interface` (from `getifaddrs`).
pub fn addresses(interface: &str) -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs hands out a list this function walks read-only and frees.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            if std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() != interface.as_bytes() {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// A name resolver that keeps only addresses of one family: with address binding, a connection
/// to the other family would not be bound at all.
pub struct FamilyResolver {
    /// Keep IPv4 (`true`) or IPv6 (`false`) answers.
    pub ipv4: bool,
}

impl reqwest::dns::Resolve for FamilyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let ipv4 = self.ipv4;
        Box::pin(async move {
            let host = format!("{}:0", name.as_str());
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host)
                .await?
                .filter(|a| a.is_ipv4() == ipv4)
                .collect();
            if addrs.is_empty() {
                let family = if ipv4 { "IPv4" } else { "IPv6" };
                return Err(format!(
                    "{} has no {family} address, the only family the upload interface can be \
                     held to by address binding",
                    name.as_str()
                )
                .into());
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// The resolver for an address binding.
pub fn resolver_for(addr: IpAddr) -> Arc<FamilyResolver> {
    Arc::new(FamilyResolver {
        ipv4: addr.is_ipv4(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_table() {
        let v4: IpAddr = "198.18.1.2".parse().unwrap();
        let v6: IpAddr = "2001:db8:1::2".parse().unwrap();
        let ll: IpAddr = "fe80::1".parse().unwrap();
        let both = [Family::Ipv4, Family::Ipv6];
        let addr = |a: IpAddr| Binding::Address {
            interface: "wlan0".into(),
            addr: a,
        };
        type Row<'a> = (&'a str, bool, Vec<IpAddr>, &'a [Family], Binding);
        let rows: Vec<Row> = vec![
            (
                "device when allowed",
                true,
                vec![],
                &both,
                Binding::Device("wlan0".into()),
            ),
            (
                "address: ipv4 first",
                false,
                vec![ll, v6, v4],
                &both,
                addr(v4),
            ),
            (
                "address: the family of the route",
                false,
                vec![v4, v6],
                &[Family::Ipv6],
                addr(v6),
            ),
            (
                "link-local is no address to bind",
                false,
                vec![ll],
                &both,
                Binding::Refused,
            ),
            (
                "no address of the routed family",
                false,
                vec![v4],
                &[Family::Ipv6],
                Binding::Refused,
            ),
            ("no address", false, vec![], &both, Binding::Refused),
        ];
        for (name, device, addrs, fams, want) in rows {
            assert_eq!(choose("wlan0", device, &addrs, fams), want, "{name}");
        }
        assert_eq!(addr(v4).mode(), Some(BindMode::Address));
        assert_eq!(Binding::Refused.mode(), None);
        assert_eq!(Binding::Device("x".into()).interface(), Some("x"));
    }

    #[test]
    fn the_loopback_interface_has_its_address_and_a_missing_one_none() {
        let lo = addresses("lo").unwrap();
        assert!(
            lo.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()),
            "{lo:?}"
        );
        assert!(addresses("no-such-if0").unwrap().is_empty());
        // Binding to a missing device fails whatever the privileges.
        assert!(probe_device("no-such-if0").is_err());
    }
}
