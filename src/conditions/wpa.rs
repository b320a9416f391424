//! Which Wi-Fi network an interface is on, and what its access point says about itself, from
//! wpa_supplicant's control interface (issue 25): the network's name (its SSID's bytes) keys
//! the app's per-network "metered" answer, and the beacon's vendor elements tell a phone's
//! hotspot.
//!
//! The dialogue is wpa_supplicant's own (`wpa_ctrl.c`, `ctrl_iface_unix.c`): a datagram socket
//! of ours, bound to a name the server can answer to, connected to
//! `conditions.wpa_ctrl_dir/IF` (the directory of `ctrl_interface=DIR=...` in
//! wpa_supplicant.conf), one command per datagram, one reply per command. Ours is bound in
//! Linux's abstract namespace, so there is no file to create or clean up and nothing left behind
//! by a crash; wpa_supplicant replies with `sendto` to the address `recvfrom` gave it, abstract
//! or not. The name is random ([`random_name`]): any local process can bind an abstract name,
//! and one that bound ours first would silence the reader. The commands:
//! - `STATUS`: `wpa_state=COMPLETED` when associated, `bssid=` and `ssid=`, the SSID escaped
//!   by wpa_supplicant's `printf_encode` (`\\`, `\"`, `\e`, `\n`, `\r`, `\t`, else `\xNN` for a
//!   byte outside 32..=126), decoded by [`decode_ssid`] and encoded again by [`encode_ssid`]
//!   into the canonical key [`Ssid`] (an empty one is no name);
//! - `BSS <bssid>`: the scan entry of that access point, whose `ie=` (the last probe response's
//!   or beacon's information elements) and `beacon_ie=` (the last beacon's, when both were
//!   seen) are hex. [`read_elements`] parses them.
//!
//! Invariants: never fails the conditions read and never blocks the runtime (a nonblocking
//! socket, [`TIMEOUT`] for the whole dialogue); no socket, no permission, or no answer is no
//! answer, never a name: the reader ([`super::Reader`]) keeps the last name of a link that did
//! not change and asks again at the next read, and a Wi-Fi never named is "no name", exactly
//! the daemon without this reader. Only the absence of an answer where a socket exists is a
//! [`Problem`] (logged once): a wpa_supplicant that does not run leaves no socket behind and is
//! not worth a warning.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::path::Path;
use std::time::Duration;

use super::Problem;

/// How long one interface's dialogue (`STATUS`, then `BSS`) may take. wpa_supplicant answers
/// from its event loop in well under a millisecond; one that does not answer within this is
/// busy or stuck, and the read goes on without a name.
pub const TIMEOUT: Duration = Duration::from_millis(200);

/// The largest reply read. wpa_supplicant's replies fit in 4 KiB (its reply buffer); more
/// room costs nothing and keeps a long `ie=` line whole.
const REPLY_MAX: usize = 16 * 1024;

/// The information element ID of vendor-specific elements (IEEE 802.11-2020, 9.4.2.25).
const VENDOR_SPECIFIC: u8 = 221;

/// Apple's OUI. An iPhone's or iPad's Personal Hotspot beacons a vendor element with this
/// OUI and OUI type 6 (observed in captures: `dd 0a 00 17 f2 06 01 01 03 03 00 00`, and macOS's
/// CoreWLAN `isPersonalHotspot` is true when it is there: reverseengineering.stackexchange.com
/// question 31710, apple.stackexchange.com question 199163). The payload's meaning is not
/// published; its presence is the sign.
const APPLE_OUI: [u8; 3] = [0x00, 0x17, 0xF2];
/// The OUI type of Apple's hotspot element.
const APPLE_HOTSPOT_TYPE: u8 = 6;

/// Microsoft's OUI, and the OUI type of its Network Cost element ([MS-NCT] Network Cost
/// Transfer Protocol, 2.2.1; learn.microsoft.com "Network cost information element"): after the
/// OUI and the type, a cost attribute of 4 octets, a DWORD in little-endian order whose low 16
/// bits are the cost level and high 16 bits the cost flags; in octets: cost level, reserved,
/// cost flags, reserved. Windows' Mobile Hotspot sends it, and so do routers configured to
/// (OpenWrt's `ms-meteredconnection` guide).
const MICROSOFT_OUI: [u8; 3] = [0x00, 0x50, 0xF2];
/// The OUI type of the Network Cost element.
const NETWORK_COST_TYPE: u8 = 0x11;

/// The Network Cost element's cost levels that Windows itself treats as metered ([MS-NCT]
/// 2.2.1.2: `Fixed` 0x02, usage counts toward a data allotment; `Variable` 0x04, cost per
/// byte). `Unknown` 0x00 and `Unrestricted` 0x01 say nothing here (no sign either way).
const COST_LEVEL_METERED: u8 = 0x02 | 0x04;
/// Its cost flags that mean money whatever the level ([MS-NCT] 2.2.1.3): `Over Data Limit`
/// 0x01 and `Roaming` 0x04. `Congested` 0x02 is not about cost, and `Approaching Data Limit`
/// 0x08 comes with a `Fixed` level, which counts already.
const COST_FLAGS_METERED: u8 = 0x01 | 0x04;

/// The Wi-Fi network an interface is associated with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wifi {
    /// The access point's address, `aa:bb:cc:dd:ee:ff`, as wpa_supplicant writes it. Shown in
    /// the status from this live read, never stored.
    pub bssid: String,
    /// The network's name; `None` when wpa_supplicant names none (an empty `ssid=`), which is
    /// "no name" like a daemon without this reader: no per-network answer applies.
    pub ssid: Option<Ssid>,
    /// What its access point's beacon says.
    pub beacon: Beacon,
}

/// A Wi-Fi network's name (SSID): up to 32 arbitrary octets, kept as their canonical text
/// ([`encode_ssid`], wpa_supplicant's own `printf_encode`), so two names that differ in any
/// byte never share an answer: GBK's "家" (`bc d2`) and "办" (`b0 ec`) both read as "��" when
/// decoded, but are `\xbc\xd2` and `\xb0\xec` here. The text is the key the app's answers are
/// stored under (`choices.json` `metered_networks[].ssid`); [`Ssid::shown`] is for display.
/// Private: it never leaves the camera except to the app over the control socket (not in
/// upload metadata, not in the log, not in the support bundle without `--with-names`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ssid(String);

impl Ssid {
    /// The name of these bytes.
    pub fn from_bytes(bytes: &[u8]) -> Ssid {
        Ssid(encode_ssid(bytes))
    }

    /// The name stored as `key` (what [`Ssid::key`] gave), made canonical again: a key written
    /// by hand, or escaped another way, names the same bytes.
    pub fn from_key(key: &str) -> Ssid {
        Ssid::from_bytes(&decode_ssid(key))
    }

    /// The canonical text, for storing.
    pub fn key(&self) -> &str {
        &self.0
    }

    /// The name for people: UTF-8 as it is, other bytes as U+FFFD (`status.uplink.network_name`).
    pub fn shown(&self) -> String {
        String::from_utf8_lossy(&decode_ssid(&self.0)).into_owned()
    }
}

/// The metered signs in an access point's information elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Beacon {
    /// Apple's Personal Hotspot element (OUI 00:17:F2, type 6).
    pub apple_hotspot: bool,
    /// Microsoft's Network Cost element says the network costs money (see
    /// [`COST_LEVEL_METERED`] and [`COST_FLAGS_METERED`]).
    pub network_cost_metered: bool,
}

impl Beacon {
    fn or(self, other: Beacon) -> Beacon {
        Beacon {
            apple_hotspot: self.apple_hotspot || other.apple_hotspot,
            network_cost_metered: self.network_cost_metered || other.network_cost_metered,
        }
    }
}

/// Parses a sequence of information elements (ID, length, body), as in a beacon after its
/// fixed fields. An element whose length runs past the end ends the parse (what came before
/// counts); a vendor element too short for its OUI and type is skipped.
pub fn read_elements(mut ies: &[u8]) -> Beacon {
    let mut beacon = Beacon::default();
    while let [id, len, rest @ ..] = ies {
        let Some(body) = rest.get(..usize::from(*len)) else {
            break;
        };
        ies = &rest[body.len()..];
        if *id != VENDOR_SPECIFIC {
            continue;
        }
        match body {
            [o0, o1, o2, kind, ..] if [*o0, *o1, *o2] == APPLE_OUI => {
                beacon.apple_hotspot |= *kind == APPLE_HOTSPOT_TYPE;
            }
            [o0, o1, o2, NETWORK_COST_TYPE, cost @ ..] if [*o0, *o1, *o2] == MICROSOFT_OUI => {
                let level = cost.first().copied().unwrap_or(0);
                let flags = cost.get(2).copied().unwrap_or(0);
                beacon.network_cost_metered |=
                    level & COST_LEVEL_METERED != 0 || flags & COST_FLAGS_METERED != 0;
            }
            _ => {}
        }
    }
    beacon
}

/// The beacon signs in a `BSS` reply: its `ie=` and `beacon_ie=` lines, either one's sign
/// counting. Bad hex is no sign.
pub fn parse_bss(reply: &str) -> Beacon {
    reply
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ie=")
                .or_else(|| l.strip_prefix("beacon_ie="))
        })
        .filter_map(|hex| decode_hex(hex.trim()))
        .fold(Beacon::default(), |b, ies| b.or(read_elements(&ies)))
}

/// What a `STATUS` reply says when wpa_supplicant is associated (`wpa_state=COMPLETED`) and
/// names the BSSID: the BSSID, and the SSID unless it is empty. `None` otherwise (scanning,
/// associating, a reply without a BSSID).
pub fn parse_status(reply: &str) -> Option<(String, Option<Ssid>)> {
    let field = |key: &str| {
        reply
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    };
    if field("wpa_state")? != "COMPLETED" {
        return None;
    }
    let bssid = field("bssid")?.trim().to_ascii_lowercase();
    let ssid = decode_ssid(field("ssid").unwrap_or(""));
    Some((bssid, (!ssid.is_empty()).then(|| Ssid::from_bytes(&ssid))))
}

/// wpa_supplicant's `printf_encode` (src/utils/common.c): `\\`, `\"`, `\e`, `\n`, `\r`, `\t`,
/// other bytes outside 32..=126 as `\xNN` (lower-case hex), the rest as they are. One text per
/// byte string, and [`decode_ssid`] gives the bytes back.
pub fn encode_ssid(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x1b => out.push_str("\\e"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            32..=126 => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Undoes wpa_supplicant's `printf_encode` (src/utils/common.c): `\\`, `\"`, `\e`, `\n`,
/// `\r`, `\t` and `\xNN`. A backslash before anything else is kept as it stands.
pub fn decode_ssid(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match b[i + 1] {
            b'\\' => (b'\\', 2),
            b'"' => (b'"', 2),
            b'e' => (0x1b, 2),
            b'n' => (b'\n', 2),
            b'r' => (b'\r', 2),
            b't' => (b'\t', 2),
            b'x' => match b.get(i + 2..i + 4).and_then(hex_byte) {
                Some(v) => (v, 4),
                None => (b'\\', 1),
            },
            _ => (b'\\', 1),
        };
        out.push(byte);
        i += used;
    }
    out
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(pair[0])? << 4 | digit(pair[1])?) as u8)
}

/// Hex text as bytes; `None` if it is not hex.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2).map(hex_byte).collect()
}

/// Asks the wpa_supplicant of `interface` (its socket `dir/interface`) which network it is on
/// and what the access point's beacon says. `Ok(None)`: no socket (wpa_supplicant does not
/// run or manages no such interface), or not associated (yet). `Err`, for the log: no
/// permission to ask (the socket's `ctrl_interface_group`), or a socket that did not answer
/// within [`TIMEOUT`]. Only `Ok(Some)` is an answer the caller may keep.
pub async fn query(dir: &Path, interface: &str) -> Result<Option<Wifi>, Problem> {
    let path = dir.join(interface);
    match tokio::time::timeout(TIMEOUT, dialogue(&path)).await {
        Ok(Ok(wifi)) => Ok(wifi),
        Ok(Err(e)) if quiet(&e) => Ok(None),
        Ok(Err(e)) => Err(Problem::io(&path, &e)),
        Err(_) => Err(Problem {
            path,
            reason: format!("no answer within {} ms", TIMEOUT.as_millis()),
        }),
    }
}

/// Errors that mean "nobody to ask", not a fault: no socket file, a socket nobody listens on
/// (wpa_supplicant stopped and left it), or something else than a datagram socket there. No
/// permission is not among them: the maker gave the daemon the wrong group, which the log
/// should say (once).
fn quiet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    ) || e.raw_os_error() == Some(libc::ENOTSOCK)
        || e.raw_os_error() == Some(libc::EPROTOTYPE)
}

async fn dialogue(path: &Path) -> io::Result<Option<Wifi>> {
    let socket = client_socket(random_name)?;
    socket.connect(path)?;
    let Some((bssid, ssid)) = parse_status(&ask(&socket, "STATUS").await?) else {
        return Ok(None);
    };
    let beacon = parse_bss(&ask(&socket, &format!("BSS {bssid}")).await?);
    Ok(Some(Wifi {
        bssid,
        ssid,
        beacon,
    }))
}

/// How many names [`client_socket`] tries before it gives up.
const BIND_TRIES: usize = 4;

/// A fresh, unpredictable abstract name: a local process that bound the name first would get
/// wpa_supplicant's replies (or keep the daemon from asking); 64 random bits cannot be
/// guessed in advance, and a name taken anyway is only tried again under another one.
fn random_name() -> String {
    format!("cambackup-wpa-{:016x}", fastrand::u64(..))
}

/// A datagram socket bound to an abstract name from `name` (tried again under a new one while
/// the name is taken), so that the server can answer.
fn client_socket(mut name: impl FnMut() -> String) -> io::Result<tokio::net::UnixDatagram> {
    let mut tries = 0;
    let socket = loop {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name().as_bytes())?;
        match std::os::unix::net::UnixDatagram::bind_addr(&addr) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries + 1 < BIND_TRIES => tries += 1,
            bound => break bound?,
        }
    };
    socket.set_nonblocking(true)?;
    tokio::net::UnixDatagram::from_std(socket)
}

/// Sends one command and reads its reply. Unsolicited event messages (`<N>...`, only sent to
/// a client that `ATTACH`ed, which this one never does) are skipped all the same.
async fn ask(socket: &tokio::net::UnixDatagram, command: &str) -> io::Result<String> {
    socket.send(command.as_bytes()).await?;
    let mut buf = vec![0; REPLY_MAX];
    loop {
        let n = socket.recv(&mut buf).await?;
        let reply = String::from_utf8_lossy(&buf[..n]);
        if !reply.starts_with('<') {
            return Ok(reply.into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An iPhone's element as captured (reverseengineering.stackexchange.com 31710).
    const APPLE: &str = "dd0a0017f206010103030000";
    /// A Network Cost element, level `Fixed`.
    const COST_FIXED: &str = "dd080050f21102000000";

    fn hex(s: &str) -> Vec<u8> {
        decode_hex(s).unwrap()
    }

    #[test]
    fn elements_apple_hotspot_and_network_cost() {
        // SSID element first, then the vendor elements, as in a beacon.
        let ssid = "0006695068306e65";
        assert_eq!(
            read_elements(&hex(&format!("{ssid}{APPLE}"))),
            Beacon {
                apple_hotspot: true,
                network_cost_metered: false
            }
        );
        assert!(read_elements(&hex(COST_FIXED)).network_cost_metered);
        let cost = |level: u8, flags: u8| {
            read_elements(&[221, 8, 0x00, 0x50, 0xF2, 0x11, level, 0, flags, 0])
                .network_cost_metered
        };
        assert!(!cost(0x00, 0), "unknown");
        assert!(!cost(0x01, 0), "unrestricted");
        assert!(cost(0x02, 0), "fixed");
        assert!(cost(0x04, 0), "variable");
        assert!(cost(0x01, 0x01), "over the data limit");
        assert!(!cost(0x01, 0x02), "congested is not a cost");
        assert!(cost(0x01, 0x04), "roaming");
        assert!(!cost(0x01, 0x08), "approaching the limit, unrestricted");
        // Other Apple types, other Microsoft types (WPA, WMM, WPS), other vendors: no sign.
        for other in [
            "dd0a0017f207010103030000",
            "dd160050f20101000050f20201000050f20201000050f202",
            "dd070050f202000100",
            "dd080050f31102000000",
            "dd0a0018f206010103030000",
        ] {
            assert_eq!(read_elements(&hex(other)), Beacon::default(), "{other}");
        }
    }

    /// Fuzz-style: every truncation and every length byte of a beacon holding both signs
    /// parses without a panic, and what was whole before the damage still counts.
    #[test]
    fn damaged_elements_never_panic() {
        let whole = hex(&format!("0006695068306e65{APPLE}{COST_FIXED}"));
        for cut in 0..=whole.len() {
            let b = read_elements(&whole[..cut]);
            assert_eq!(b.apple_hotspot, cut >= 8 + 12, "cut at {cut}");
            assert_eq!(b.network_cost_metered, cut == whole.len(), "cut at {cut}");
        }
        for at in 0..whole.len() {
            for v in [0u8, 1, 3, 4, 5, 0x7f, 0xff] {
                let mut damaged = whole.clone();
                damaged[at] = v;
                let _ = read_elements(&damaged);
            }
        }
        // A vendor element too short for its OUI, and one that claims more than there is.
        assert_eq!(read_elements(&[221, 2, 0x00, 0x17]), Beacon::default());
        assert_eq!(
            read_elements(&[221, 0xff, 0x00, 0x17, 0xF2, 6]),
            Beacon::default()
        );
        // The Network Cost element cut after its level: the level still counts.
        assert!(read_elements(&[221, 5, 0x00, 0x50, 0xF2, 0x11, 0x04]).network_cost_metered);
        // A pseudo-random walk over short inputs.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            let len = (x % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    [221, 0x00, 0x17, 0xF2, 0x50, 6, 0x11, (x >> 8) as u8][(x % 8) as usize]
                })
                .collect();
            let _ = read_elements(&bytes);
            x = x.wrapping_mul(2_654_435_761).wrapping_add(1);
        }
    }

    #[test]
    fn status_reply_names_the_network_only_when_associated() {
        let reply = "bssid=02:00:00:00:01:00\nfreq=2412\nssid=Caf\\xc3\\xa9 \\\"Wi-Fi\\\" \\\\o/\n\
                     id=0\nmode=station\nkey_mgmt=WPA2-PSK\nwpa_state=COMPLETED\n\
                     ip_address=192.168.1.20\naddress=02:00:00:00:00:00\n";
        let (bssid, ssid) = parse_status(reply).unwrap();
        assert_eq!(bssid, "02:00:00:00:01:00");
        let ssid = ssid.unwrap();
        assert_eq!(ssid.shown(), "Café \"Wi-Fi\" \\o/");
        assert_eq!(ssid.key(), r#"Caf\xc3\xa9 \"Wi-Fi\" \\o/"#);
        assert_eq!(
            parse_status("wpa_state=SCANNING\naddress=02:00:00:00:00:00\n"),
            None
        );
        assert_eq!(parse_status("wpa_state=COMPLETED\nssid=x\n"), None);
        assert_eq!(parse_status("FAIL\n"), None);
        // An empty SSID (or none) is no name: the access point is still asked for its beacon.
        for reply in [
            "bssid=02:00:00:00:01:00\nssid=\nwpa_state=COMPLETED\n",
            "bssid=02:00:00:00:01:00\nwpa_state=COMPLETED\n",
        ] {
            assert_eq!(
                parse_status(reply),
                Some(("02:00:00:00:01:00".into(), None)),
                "{reply}"
            );
        }
    }

    #[test]
    fn ssid_escapes() {
        assert_eq!(decode_ssid(r"a\tb\nc\rd\ee"), b"a\tb\nc\rd\x1be");
        assert_eq!(decode_ssid(r"\x00\xff\xZZ\q\"), b"\x00\xff\\xZZ\\q\\");
        assert_eq!(decode_ssid(""), b"");
    }

    /// Two SSIDs that differ in any byte are two names, though both show as U+FFFD: GBK's
    /// "家" and "办", which `from_utf8_lossy` made one stored answer.
    #[test]
    fn ssids_are_told_apart_by_their_bytes() {
        let home = Ssid::from_bytes(b"\xbc\xd2");
        let office = Ssid::from_bytes(b"\xb0\xec");
        assert_eq!(home.shown(), office.shown());
        assert_ne!(home, office);
        assert_eq!(home.key(), r"\xbc\xd2");
        // wpa_supplicant's own escaping is the key, and one spelled otherwise names the same bytes.
        let (_, from_status) =
            parse_status("bssid=02:00:00:00:01:00\nssid=\\xbc\\xd2\nwpa_state=COMPLETED\n")
                .unwrap();
        assert_eq!(from_status, Some(home.clone()));
        assert_eq!(Ssid::from_key(r"\xBC\xD2"), home);
        assert_eq!(Ssid::from_key("Home").key(), "Home");
        // Every byte string, through its key and back.
        let mut x: u32 = 0x9e37_79b9;
        for len in 0..=32usize {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect();
                let s = Ssid::from_bytes(&bytes);
                assert_eq!(decode_ssid(s.key()), bytes);
                assert_eq!(Ssid::from_key(s.key()), s);
            }
        }
    }

    #[test]
    fn bss_reply_reads_ie_and_beacon_ie() {
        let reply = format!(
            "id=3\nbssid=02:00:00:00:01:00\nfreq=2412\nie=00044e6f6e65\n\
             beacon_ie=00044e6f6e65{APPLE}\nflags=[WPA2-PSK-CCMP][ESS]\nssid=None\n"
        );
        assert!(parse_bss(&reply).apple_hotspot);
        assert_eq!(parse_bss("ie=zz\n"), Beacon::default());
        assert_eq!(parse_bss("FAIL\n"), Beacon::default());
    }

    #[tokio::test]
    async fn no_socket_is_no_name_and_a_silent_one_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(query(dir.path(), "wlan0").await, Ok(None));
        // A socket whose owner never answers.
        let _silent = std::os::unix::net::UnixDatagram::bind(dir.path().join("wlan0")).unwrap();
        let p = query(dir.path(), "wlan0").await.unwrap_err();
        assert!(p.reason.contains("no answer"), "{p}");
        // A file that is not a socket.
        std::fs::write(dir.path().join("wlan1"), "").unwrap();
        assert_eq!(query(dir.path(), "wlan1").await, Ok(None));
    }

    #[tokio::test]
    async fn a_wpa_supplicant_is_asked_status_then_bss() {
        let dir = tempfile::tempdir().unwrap();
        let server = std::os::unix::net::UnixDatagram::bind(dir.path().join("wlan0")).unwrap();
        let answers = std::thread::spawn(move || {
            let mut asked = Vec::new();
            let mut buf = [0; 256];
            for _ in 0..2 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                let command = String::from_utf8_lossy(&buf[..n]).into_owned();
                let reply = match command.as_str() {
                    "STATUS" => {
                        "bssid=02:00:00:00:01:00\nssid=Phone\nwpa_state=COMPLETED\n".to_string()
                    }
                    c if c.starts_with("BSS ") => format!("bssid=02:00:00:00:01:00\nie={APPLE}\n"),
                    _ => "UNKNOWN COMMAND\n".to_string(),
                };
                // An event first, as to an attached client: skipped.
                server
                    .send_to_addr(b"<3>CTRL-EVENT-SCAN-STARTED ", &from)
                    .unwrap();
                server.send_to_addr(reply.as_bytes(), &from).unwrap();
                asked.push(command);
            }
            asked
        });
        let wifi = query(dir.path(), "wlan0").await.unwrap().unwrap();
        assert_eq!(wifi.ssid, Some(Ssid::from_bytes(b"Phone")));
        assert_eq!(wifi.bssid, "02:00:00:00:01:00");
        assert!(wifi.beacon.apple_hotspot);
        assert_eq!(answers.join().unwrap(), ["STATUS", "BSS 02:00:00:00:01:00"]);
    }

    /// A local process that binds the names the client socket would use cannot get in the
    /// way: the name is random (not the daemon's pid and a counter, which anyone could bind
    /// first and so have every per-network answer ignored), and a name taken is tried again.
    #[tokio::test]
    async fn a_squatted_client_name_does_not_silence_wpa_supplicant() {
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let squat = |name: &str| {
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap()
        };
        // The names a pid-and-counter scheme would use next.
        let _squatted: Vec<_> = (0..200)
            .map(|n| squat(&format!("cambackup-wpa-{}-{n}", std::process::id())))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let server = UnixDatagram::bind(dir.path().join("wlan0")).unwrap();
        let answers = std::thread::spawn(move || {
            let mut buf = [0; 256];
            for reply in [
                "bssid=02:00:00:00:01:00\nssid=Home\nwpa_state=COMPLETED\n",
                "bssid=02:00:00:00:01:00\n",
            ] {
                let (_, from) = server.recv_from(&mut buf).unwrap();
                server.send_to_addr(reply.as_bytes(), &from).unwrap();
            }
        });
        let wifi = query(dir.path(), "wlan0").await.unwrap().unwrap();
        assert_eq!(wifi.ssid, Some(Ssid::from_bytes(b"Home")));
        answers.join().unwrap();

        // A taken name is tried again under the next one, a few times, then given up.
        let taken = format!(
            "cambackup-test-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        );
        let _taken = squat(&taken);
        let mut names = [taken.clone(), format!("{taken}-free")].into_iter();
        assert!(client_socket(|| names.next().unwrap()).is_ok());
        let e = client_socket(|| taken.clone()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
