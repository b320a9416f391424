//! A fake wpa_supplicant control socket: a datagram server at `DIR/IFNAME` answering `STATUS`
//! and `BSS <bssid>` the way wpa_supplicant's `ctrl_iface_unix.c` does (a reply per command,
//! sent to the asker's address), with answers the test changes while the daemon runs.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The network the fake is associated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The SSID as wpa_supplicant writes it in `STATUS` (`printf_encode`d: `\xNN`, `\\`, `\"`).
    pub ssid_escaped: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub bssid: String,
    /// The access point's information elements, hex (the `BSS` reply's `ie=`).
    pub ies_hex: String,
}

impl Network {
    /// A network named `ssid` (plain text) with no element of note.
    pub fn named(ssid: &str, bssid: &str) -> Network {
        let ssid_ie: String = std::iter::once(format!("00{:02x}", ssid.len()))
            .chain(ssid.bytes().map(|b| format!("{b:02x}")))
            .collect();
        Network {
            ssid_escaped: ssid.to_string(),
            bssid: bssid.to_string(),
            ies_hex: ssid_ie,
        }
    }

    /// The same, beaconing `element_hex` too.
    pub fn with_element(mut self, element_hex: &str) -> Network {
        self.ies_hex.push_str(element_hex);
        self
    }
}

/// An iPhone's Personal Hotspot element (Apple OUI 00:17:F2, type 6), as captured.
pub const APPLE_HOTSPOT_ELEMENT: &str = "dd0a0017f206010103030000";

/// A running fake; stops when dropped.
pub struct FakeWpa {
    path: PathBuf,
    network: Arc<Mutex<Option<Network>>>,
    asked: Arc<AtomicUsize>,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeWpa {
    /// Serves `dir/interface`, associated with `network` (`None`: scanning).
    pub fn start(dir: &Path, interface: &str, network: Option<Network>) -> FakeWpa {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(interface);
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let network = Arc::new(Mutex::new(network));
        let asked = Arc::new(AtomicUsize::new(0));
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (network, asked, silent, stop) =
                (network.clone(), asked.clone(), silent.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if silent.load(Ordering::SeqCst) {
                        continue;
                    }
                    let command = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let reply = answer(&command, network.lock().unwrap().as_ref());
                    asked.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.send_to_addr(reply.as_bytes(), &from);
                }
            })
        };
        FakeWpa {
            path,
            network,
            asked,
            silent,
            stop,
            thread: Some(thread),
        }
    }

    /// Associates with another network (`None`: disconnected, scanning).
    pub fn set(&self, network: Option<Network>) {
        *self.network.lock().unwrap() = network;
    }

    /// Stops answering (`true`), as a busy or stuck wpa_supplicant: the asker times out. Or
    /// answers again (`false`).
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }

    /// How many commands were answered so far.
    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

impl Drop for FakeWpa {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// wpa_supplicant's reply to `command`.
fn answer(command: &str, network: Option<&Network>) -> String {
    match (command, network) {
        ("STATUS", Some(n)) => format!(
            "bssid={}\nfreq=2412\nssid={}\nid=0\nmode=station\npairwise_cipher=CCMP\n\
             group_cipher=CCMP\nkey_mgmt=WPA2-PSK\nwpa_state=COMPLETED\n\
             address=02:00:00:00:00:00\n",
            n.bssid, n.ssid_escaped
        ),
        ("STATUS", None) => "wpa_state=SCANNING\naddress=02:00:00:00:00:00\n".into(),
        (c, Some(n)) if c == format!("BSS {}", n.bssid) => format!(
            "id=0\nbssid={}\nfreq=2412\nbeacon_int=100\ncapabilities=0x0411\nqual=0\n\
             noise=-89\nlevel=-40\ntsf=0000000000000000\nage=1\nie={}\n\
             flags=[WPA2-PSK-CCMP][ESS]\nssid={}\n",
            n.bssid, n.ies_hex, n.ssid_escaped
        ),
        (c, _) if c.starts_with("BSS ") => String::new(),
        _ => "UNKNOWN COMMAND\n".into(),
    }
}
