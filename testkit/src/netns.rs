//! A camera and a server in network namespaces of their own, joined by two veth links named
//! like the camera's: `wlan0` and `wwan0` (real kernel routing, binding and link counters; no
//! mocks). Made per test with unique names, so tests run in parallel; deleted on drop.
//!
//! ```text
//!  camera ns                       server ns
//!  wlan0 198.18.1.2/24  ─ veth ─  s-wlan0 198.18.1.1/24   lo: 198.19.0.1/32
//!        2001:db8:1::2/64                 2001:db8:1::1/64      2001:db8:ff::1/128
//!  wwan0 198.18.2.2/24  ─ veth ─  s-wwan0 198.18.2.1/24   (the server listens on [::]:PORT,
//!        2001:db8:2::2/64                 2001:db8:2::1/64     reached by both links)
//! ```
//! The server's name ([`SERVER_NAME`]) has both addresses in an `/etc/hosts` seen only by the
//! daemon: [`Lab::runner`] bind-mounts it in a private mount namespace, then enters the camera's
//! network namespace. Addresses are from the benchmarking (198.18.0.0/15) and documentation
//! (2001:db8::/32) ranges. Default routes are the test's to set ([`Lab::default_route`]).
//!
//! Needs root and `ip` (iproute2); [`Lab::new`] says why it cannot run otherwise, so tests skip
//! with that message.

use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The upload server's host name, resolvable only inside [`Lab::runner`].
pub const SERVER_NAME: &str = "upload.test";
/// The server's IPv4 address (on the server namespace's `lo`).
pub const SERVER_V4: &str = "198.19.0.1";
/// The server's IPv6 address.
pub const SERVER_V6: &str = "2001:db8:ff::1";

/// One of the camera's two links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// `wlan0`, the Wi-Fi (the fake sysfs says it is wireless).
    Wlan,
    /// `wwan0`, the cellular modem.
    Wwan,
}

impl Link {
    /// The camera-side name.
    pub fn camera_dev(self) -> &'static str {
        match self {
            Link::Wlan => "wlan0",
            Link::Wwan => "wwan0",
        }
    }

    /// The server-side end of the veth.
    pub fn server_dev(self) -> &'static str {
        match self {
            Link::Wlan => "s-wlan0",
            Link::Wwan => "s-wwan0",
        }
    }

    fn subnet(self) -> u8 {
        match self {
            Link::Wlan => 1,
            Link::Wwan => 2,
        }
    }

    /// The camera's addresses on this link.
    pub fn camera_addrs(self) -> [IpAddr; 2] {
        let n = self.subnet();
        [
            format!("198.18.{n}.2").parse().unwrap(),
            format!("2001:db8:{n}::2").parse().unwrap(),
        ]
    }

    fn gateway(self, v6: bool) -> String {
        let n = self.subnet();
        if v6 {
            format!("2001:db8:{n}::1")
        } else {
            format!("198.18.{n}.1")
        }
    }
}

/// An IP family, for routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The two namespaces; see the module docs.
pub struct Lab {
    /// The camera's namespace name.
    pub camera: String,
    /// The server's namespace name.
    pub server: String,
    dir: tempfile::TempDir,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Makes the namespaces and links, or says why it cannot (not root, no `ip`, no netns).
    pub fn new() -> Result<Lab, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespace tests need root".into());
        }
        match Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            _ => return Err("network namespace tests need `ip` (iproute2)".into()),
        }
        let tag = format!(
            "cb{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            camera: format!("{tag}-cam"),
            server: format!("{tag}-srv"),
            dir: tempfile::Builder::new()
                .prefix("cambackup-netns-")
                .tempdir()
                .map_err(|e| e.to_string())?,
        };
        try_ip(&["netns", "add", &lab.camera])
            .map_err(|e| format!("cannot make a network namespace: {e}"))?;
        try_ip(&["netns", "add", &lab.server])?;
        // No router solicitations (nobody sends router advertisements here): the links then
        // carry nothing the tests did not cause, and a leak counter can aim at zero.
        for ns in [&lab.camera, &lab.server] {
            try_ip(&[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.default.accept_ra=0",
                "net.ipv6.conf.all.accept_ra=0",
            ])?;
        }
        for link in [Link::Wlan, Link::Wwan] {
            try_ip(&[
                "link",
                "add",
                link.camera_dev(),
                "netns",
                &lab.camera,
                "type",
                "veth",
                "peer",
                "name",
                link.server_dev(),
                "netns",
                &lab.server,
            ])?;
            let n = link.subnet();
            lab.cam(&format!(
                "addr add 198.18.{n}.2/24 dev {}",
                link.camera_dev()
            ));
            lab.cam(&format!(
                "-6 addr add 2001:db8:{n}::2/64 dev {} nodad",
                link.camera_dev()
            ));
            lab.srv(&format!(
                "addr add 198.18.{n}.1/24 dev {}",
                link.server_dev()
            ));
            lab.srv(&format!(
                "-6 addr add 2001:db8:{n}::1/64 dev {} nodad",
                link.server_dev()
            ));
            lab.cam(&format!("link set {} up", link.camera_dev()));
            lab.srv(&format!("link set {} up", link.server_dev()));
        }
        lab.cam("link set lo up");
        lab.srv("link set lo up");
        lab.srv(&format!("addr add {SERVER_V4}/32 dev lo"));
        lab.srv(&format!("-6 addr add {SERVER_V6}/128 dev lo"));
        fs::write(
            lab.hosts_file(),
            format!("127.0.0.1 localhost\n{SERVER_V4} {SERVER_NAME}\n{SERVER_V6} {SERVER_NAME}\n"),
        )
        .map_err(|e| e.to_string())?;
        lab.wait_for_dad();
        lab.wait_for_quiet();
        Ok(lab)
    }

    fn hosts_file(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// Runs `ip -n CAMERA ARGS` (split on spaces); panics with ip's message on failure.
    pub fn cam(&self, args: &str) {
        ip_in(&self.camera, args);
    }

    /// Runs `ip -n SERVER ARGS`.
    pub fn srv(&self, args: &str) {
        ip_in(&self.server, args);
    }

    /// Waits until no address in either namespace is tentative (IPv6 duplicate address
    /// detection done; the addresses are added `nodad`, so this is a check more than a wait).
    pub fn wait_for_dad(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for ns in [&self.camera, &self.server] {
            loop {
                let out = output(&["-n", ns, "-6", "addr", "show", "tentative"]);
                if out.trim().is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "IPv6 DAD did not finish in {ns}: {out}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until neither link has carried a byte for 1.5 s. A link coming up still talks on
    /// its own for a moment: the kernel joins its IPv6 multicast groups and repeats the MLDv2
    /// reports (110 bytes each) at random within `mldv2_unsolicited_report_interval` (1 s),
    /// twice, and the link-local address does duplicate address detection. Counting a leak from
    /// before that is done would blame the daemon for the kernel's chatter (the CI run of
    /// 2026-11-30 did: 110 bytes over wwan0, every request over wlan0).
    pub fn wait_for_quiet(&self) {
        let quiet_for = Duration::from_millis(1500);
        let deadline = Instant::now() + Duration::from_secs(15);
        let both = || (self.rx_bytes(Link::Wlan), self.rx_bytes(Link::Wwan));
        let mut last = both();
        let mut since = Instant::now();
        while since.elapsed() < quiet_for {
            assert!(
                Instant::now() < deadline,
                "the lab's links did not fall quiet within 15 s: {last:?} bytes"
            );
            std::thread::sleep(Duration::from_millis(100));
            let now = both();
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }

    /// Replaces the camera's default route of `family` with one via `link`; `None` removes it.
    pub fn default_route(&self, family: Family, link: Option<Link>) {
        let f = if family == Family::V6 { "-6" } else { "-4" };
        let _ = try_ip(&["-n", &self.camera, f, "route", "del", "default"]);
        if let Some(link) = link {
            self.cam(&format!(
                "{f} route replace default via {} dev {}",
                link.gateway(family == Family::V6),
                link.camera_dev()
            ));
        }
    }

    /// Caps what the camera sends over `link` with a token bucket (`tc qdisc ... tbf`).
    pub fn cap(&self, link: Link, mbit: u32) {
        let status = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.camera,
                "tc",
                "qdisc",
                "replace",
                "dev",
            ])
            .arg(link.camera_dev())
            .args([
                "root",
                "tbf",
                "rate",
                &format!("{mbit}mbit"),
                "burst",
                "64kb",
                "latency",
                "50ms",
            ])
            .status()
            .expect("run tc");
        assert!(status.success(), "tc qdisc on {} failed", link.camera_dev());
    }

    /// Bytes the server side of `link` has received (`statistics/rx_bytes` in the server's
    /// namespace): every byte the camera sent over that link.
    pub fn rx_bytes(&self, link: Link) -> u64 {
        let out = output(&[
            "-n",
            &self.server,
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            link.server_dev(),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        v[0]["stats64"]["rx"]["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no rx bytes in {out}"))
    }

    /// A TCP listener on `[::]:0` (dual-stack) inside the server's namespace.
    pub fn listen(&self) -> TcpListener {
        let path = format!("/run/netns/{}", self.server);
        std::thread::spawn(move || {
            let ns = fs::File::open(&path).expect("open the server namespace");
            // SAFETY: setns on this short-lived thread only; sockets it makes belong to the
            // namespace, and the listener outlives the thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpListener::bind(SocketAddr::from(([0u16; 8], 0))).expect("listen on [::]:0")
        })
        .join()
        .expect("listener thread")
    }

    /// The command line the daemon runs under: a private mount namespace with the lab's
    /// `/etc/hosts`, then the camera's network namespace. The daemon's own command is appended.
    pub fn runner(&self) -> Vec<String> {
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && ns=\"$1\" && shift && exec nsenter --net=\"$ns\" -- \"$@\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            self.hosts_file().display().to_string(),
            format!("/run/netns/{}", self.camera),
        ])
        .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends (and with them the peers).
        let _ = try_ip(&["netns", "del", &self.camera]);
        let _ = try_ip(&["netns", "del", &self.server]);
    }
}

fn try_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_in(ns: &str, args: &str) {
    let mut v = vec!["-n", ns];
    v.extend(args.split_whitespace());
    if let Err(e) = try_ip(&v) {
        panic!("{e}");
    }
}

fn output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
