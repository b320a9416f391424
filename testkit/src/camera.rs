//! A fake camera in a temp dir: the SD card, the sysfs/proc files the daemon reads for its
//! conditions (INTERFACE.md section 3), a state dir, the control socket path, and a config file
//! pointing at all of them.
//!
//! Layout under [`FakeCamera::root`]:
//! ```text
//! card/DCIM/100MEDIA/                      media root
//! sysfs/class/power_supply/AC/{type,online}
//! sysfs/class/power_supply/battery/{type,status,capacity}
//! sysfs/class/net/IF/{operstate,wireless/}
//! sysfs/class/thermal/thermal_zoneN/temp   millidegrees Celsius
//! proc/net/route                           real /proc/net/route format
//! proc/loadavg
//! state/                                   daemon state dir (0700)
//! run/control.sock                         control socket path
//! run/recording                            exists while "recording"
//! ```
//! Default state: on charge (AC online, battery 80 % Charging), `wlan0` up, wireless, and the
//! default route; 35 °C; not recording; load 0.10.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::sample::{sample_bytes, seed_for, write_sample};

/// Where sample media lives on the card, relative to the media root.
pub const MEDIA_DIR: &str = "DCIM/100MEDIA";

/// One IPv4 route in `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    iface: String,
    default: bool,
    metric: u32,
    /// The next hop's IPv4 address.
    gateway: [u8; 4],
}

/// The gateway of the fake default routes unless a test says otherwise.
const HOME_GATEWAY: [u8; 4] = [192, 168, 1, 1];

/// See the module docs. All setters take `&self` so a camera can be shared with tasks that
/// write media while a test flips conditions.
pub struct FakeCamera {
    dir: tempfile::TempDir,
    routes: Mutex<Vec<Route>>,
    config_overrides: Mutex<Vec<(String, String, Option<String>)>>,
}

impl Default for FakeCamera {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeCamera {
    /// A camera in the default state (see the module docs).
    pub fn new() -> FakeCamera {
        let dir = tempfile::Builder::new()
            .prefix("fake-camera-")
            .tempdir()
            .expect("create camera temp dir");
        let cam = FakeCamera {
            dir,
            routes: Mutex::new(Vec::new()),
            config_overrides: Mutex::new(Vec::new()),
        };
        fs::create_dir_all(cam.media_root().join(MEDIA_DIR)).expect("create card");
        fs::create_dir_all(cam.root().join("run")).expect("create run dir");
        let state = cam.state_dir();
        fs::create_dir_all(&state).expect("create state dir");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod state");
        fs::create_dir_all(cam.proc_dir().join("net")).expect("create proc");
        cam.write(
            &cam.proc_dir().join("loadavg"),
            "0.10 0.05 0.01 1/123 4567\n",
        );
        cam.write_power("AC", "type", "Mains");
        cam.write_power("battery", "type", "Battery");
        cam.set_battery(Some(("Charging", 80)));
        cam.set_charging(true);
        cam.set_interface("wlan0", true, true);
        cam.set_default_route("wlan0");
        cam.set_temp_c(35.0);
        cam
    }

    /// The temp dir holding everything.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `media.root`: the card.
    pub fn media_root(&self) -> PathBuf {
        self.root().join("card")
    }

    /// `conditions.sysfs`.
    pub fn sysfs_dir(&self) -> PathBuf {
        self.root().join("sysfs")
    }

    /// `conditions.wpa_ctrl_dir`: where wpa_supplicant's control sockets would be (none
    /// unless a test makes one).
    pub fn wpa_ctrl_dir(&self) -> PathBuf {
        self.root().join("run/wpa_supplicant")
    }

    /// `conditions.proc`.
    pub fn proc_dir(&self) -> PathBuf {
        self.root().join("proc")
    }

    /// `state.dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }

    /// `control.socket`.
    pub fn socket_path(&self) -> PathBuf {
        self.root().join("run/control.sock")
    }

    /// `conditions.recording_flag`.
    pub fn recording_flag(&self) -> PathBuf {
        self.root().join("run/recording")
    }

    /// Where [`FakeCamera::write_config`] writes.
    pub fn config_path(&self) -> PathBuf {
        self.root().join("cambackup.toml")
    }

    fn write(&self, path: &Path, content: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent dir");
        }
        // Write-then-rename so the daemon never reads a half-written value.
        let tmp = path.with_extension("tmp~");
        fs::write(&tmp, content).expect("write fake device file");
        fs::rename(&tmp, path).expect("rename fake device file");
    }

    fn power_dir(&self, supply: &str) -> PathBuf {
        self.sysfs_dir().join("class/power_supply").join(supply)
    }

    fn write_power(&self, supply: &str, file: &str, value: &str) {
        self.write(&self.power_dir(supply).join(file), &format!("{value}\n"));
    }

    /// Plugs (`true`) or unplugs the charger: AC `online`, and a present battery's `status`
    /// follows (Charging / Discharging) so both of the daemon's charging signals agree.
    pub fn set_charging(&self, on: bool) {
        self.write_power("AC", "type", "Mains");
        self.write_power("AC", "online", if on { "1" } else { "0" });
        let status = self.power_dir("battery").join("status");
        if let Ok(old) = fs::read_to_string(&status) {
            let old = old.trim();
            let new = match (on, old) {
                (true, "Full") => "Full",
                (true, _) => "Charging",
                (false, _) => "Discharging",
            };
            self.write(&status, &format!("{new}\n"));
        }
    }

    /// Sets the battery's `status` ("Charging", "Discharging", "Full", "Not charging") and
    /// `capacity`; `None` removes the battery.
    pub fn set_battery(&self, battery: Option<(&str, u8)>) {
        match battery {
            Some((status, percent)) => {
                self.write_power("battery", "type", "Battery");
                self.write_power("battery", "status", status);
                self.write_power("battery", "capacity", &percent.to_string());
            }
            None => {
                let _ = fs::remove_dir_all(self.power_dir("battery"));
            }
        }
    }

    /// Removes every power supply, like a board without a fuel gauge.
    pub fn no_power_supplies(&self) {
        let _ = fs::remove_dir_all(self.sysfs_dir().join("class/power_supply"));
        fs::create_dir_all(self.sysfs_dir().join("class/power_supply")).expect("mkdir");
    }

    /// Creates or updates interface `name`: `operstate` up/down, and a `wireless/` dir when
    /// `wireless` (removed otherwise).
    pub fn set_interface(&self, name: &str, up: bool, wireless: bool) {
        let dir = self.sysfs_dir().join("class/net").join(name);
        self.write(&dir.join("operstate"), if up { "up\n" } else { "down\n" });
        let wl = dir.join("wireless");
        if wireless {
            fs::create_dir_all(&wl).expect("mkdir wireless");
        } else {
            let _ = fs::remove_dir_all(&wl);
        }
    }

    /// Makes `iface` the only default route (metric 600, like NetworkManager's Wi-Fi).
    pub fn set_default_route(&self, iface: &str) {
        *self.routes.lock().unwrap() = vec![Route {
            iface: iface.into(),
            default: true,
            metric: 600,
            gateway: HOME_GATEWAY,
        }];
        self.write_routes();
    }

    /// Adds a default route via `iface` with `metric`, keeping the others (the lowest metric
    /// is the one traffic takes).
    pub fn add_default_route(&self, iface: &str, metric: u32) {
        self.routes.lock().unwrap().push(Route {
            iface: iface.into(),
            default: true,
            metric,
            gateway: HOME_GATEWAY,
        });
        self.write_routes();
    }

    /// Sets the gateway of `iface`'s default routes (e.g. an iPhone hotspot's 172.20.10.1).
    pub fn set_default_gateway(&self, iface: &str, gateway: [u8; 4]) {
        for r in self.routes.lock().unwrap().iter_mut() {
            if r.iface == iface {
                r.gateway = gateway;
            }
        }
        self.write_routes();
    }

    /// Removes every default route (link routes stay): the device is offline.
    pub fn clear_default_route(&self) {
        self.routes.lock().unwrap().clear();
        self.write_routes();
    }

    /// Writes `net/route` in the kernel's format: hex little-endian destination, gateway and
    /// mask, hex flags, decimal refcnt/use/metric/mtu/window/irtt (as `fib_route_seq_show`
    /// prints them). Each interface also gets its link route, which must not count as default.
    fn write_routes(&self) {
        let routes = self.routes.lock().unwrap().clone();
        let mut out = String::from(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n",
        );
        for r in &routes {
            debug_assert!(r.default);
            // Default: 0.0.0.0/0 via the gateway (192.168.1.1 is 0101A8C0 on a little-endian
            // CPU: the network-order word printed as a host integer), flags UP|GATEWAY.
            out.push_str(&format!(
                "{}\t00000000\t{:08X}\t0003\t0\t0\t{}\t00000000\t0\t0\t0\n",
                r.iface,
                u32::from_ne_bytes(r.gateway),
                r.metric
            ));
            // Link: 192.168.1.0/24, flags UP.
            out.push_str(&format!(
                "{}\t0001A8C0\t00000000\t0001\t0\t0\t{}\t00FFFFFF\t0\t0\t0\n",
                r.iface, r.metric
            ));
        }
        self.write(&self.proc_dir().join("net/route"), &out);
    }

    /// Sets `thermal_zone0` to `celsius`.
    pub fn set_temp_c(&self, celsius: f64) {
        self.set_zone_temp_c(0, celsius);
    }

    /// Sets `thermal_zoneN` (created if missing) to `celsius`.
    pub fn set_zone_temp_c(&self, zone: u32, celsius: f64) {
        let path = self
            .sysfs_dir()
            .join(format!("class/thermal/thermal_zone{zone}/temp"));
        self.write(&path, &format!("{}\n", (celsius * 1000.0).round() as i64));
    }

    /// Sets the 1-minute load average in `loadavg`.
    pub fn set_load(&self, one_minute: f64) {
        self.write(
            &self.proc_dir().join("loadavg"),
            &format!("{one_minute:.2} 0.05 0.01 1/123 4567\n"),
        );
    }

    /// Creates (`true`) or removes the recording flag file.
    pub fn set_recording(&self, on: bool) {
        if on {
            self.write(&self.recording_flag(), "1\n");
        } else {
            let _ = fs::remove_file(self.recording_flag());
        }
    }

    /// Takes the card out (`false`: the media root disappears) or puts it back.
    pub fn set_card_present(&self, present: bool) {
        let away = self.root().join("card.removed");
        if present && away.exists() {
            fs::rename(&away, self.media_root()).expect("reinsert card");
        } else if !present && self.media_root().exists() {
            fs::rename(self.media_root(), &away).expect("remove card");
        }
    }

    /// The absolute path of storage path `rel`.
    pub fn media_path(&self, rel: &str) -> PathBuf {
        self.media_root().join(rel)
    }

    /// Writes `bytes` to `rel` (relative to the media root, parents created); returns the path.
    pub fn write_media(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.media_path(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("create media dir");
        fs::write(&path, bytes).expect("write media");
        path
    }

    /// Writes `len` bytes of deterministic content (seeded by `rel`) to `rel`, streaming, so
    /// any size works; returns the path.
    pub fn write_sample(&self, rel: &str, len: u64) -> PathBuf {
        let path = self.media_path(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("create media dir");
        write_sample(&path, seed_for(rel), len).expect("write sample media");
        path
    }

    /// Writes a sample photo `DCIM/100MEDIA/NAME` of `len` bytes; returns its storage path.
    pub fn photo(&self, name: &str, len: u64) -> String {
        let rel = format!("{MEDIA_DIR}/{name}");
        self.write_sample(&rel, len);
        rel
    }

    /// Sets a media file's modification time `age` in the past, so it counts as settled now.
    pub fn age_media(&self, rel: &str, age: Duration) {
        let file = fs::File::options()
            .write(true)
            .open(self.media_path(rel))
            .expect("open media");
        // Both stamps: FUSE 2's high-level library (exfat-fuse, the exFAT driver of
        // `card::Card`) drops a utimens that sets the mtime alone, silently.
        let when = SystemTime::now() - age;
        file.set_times(fs::FileTimes::new().set_accessed(when).set_modified(when))
            .expect("set mtime");
    }

    /// Writes `total` bytes of sample content to `rel` in `chunks` appends, `interval` apart,
    /// like a camera recording a video; returns the path once the last chunk is written.
    pub async fn write_media_slowly(
        &self,
        rel: &str,
        total: usize,
        chunks: usize,
        interval: Duration,
    ) -> PathBuf {
        use std::io::Write;
        let path = self.media_path(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("create media dir");
        let data = sample_bytes(seed_for(rel), total);
        let chunks = chunks.max(1);
        let step = total.div_ceil(chunks).max(1);
        let mut file = fs::File::create(&path).expect("create media");
        for (i, part) in data.chunks(step).enumerate() {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            file.write_all(part).expect("append media");
            file.flush().expect("flush media");
        }
        path
    }

    /// Sets (or adds) `key = toml_value` in `[section]` of the generated config.
    /// `toml_value` is raw TOML: `with("defaults", "auto_upload", "true")`,
    /// `with("device", "type", "\"X\"")`. Sections like `cloud.regions` work too.
    pub fn with(&self, section: &str, key: &str, toml_value: &str) -> &Self {
        self.config_overrides.lock().unwrap().push((
            section.into(),
            key.into(),
            Some(toml_value.into()),
        ));
        self
    }

    /// Leaves `key` out of `[section]` of the generated config.
    pub fn without(&self, section: &str, key: &str) -> &Self {
        self.config_overrides
            .lock()
            .unwrap()
            .push((section.into(), key.into(), None));
        self
    }

    /// A complete config (INTERFACE.md section 2) pointing into this camera, with fast test
    /// timings, plus the overrides from [`FakeCamera::with`] / [`FakeCamera::without`].
    pub fn config_toml(&self, endpoint: &str) -> String {
        let q = |p: PathBuf| toml_string(&p.to_string_lossy());
        let mut sections: Vec<(String, Vec<(String, String)>)> = vec![
            (
                "device",
                vec![
                    ("type", toml_string("SJ10 Pro")),
                    ("serial", toml_string("TEST0001")),
                ],
            ),
            (
                "media",
                vec![
                    ("root", q(self.media_root())),
                    (
                        "photo_extensions",
                        r#"["jpg", "jpeg", "dng", "heic"]"#.into(),
                    ),
                    ("video_extensions", r#"["mp4", "mov"]"#.into()),
                    ("exclude", r#"["**/*.THM", "**/*.LRV", "**/.*"]"#.into()),
                    ("settle_secs", "1".into()),
                    ("rescan_secs", "600".into()),
                ],
            ),
            (
                "cloud",
                vec![
                    ("endpoint", toml_string(endpoint)),
                    ("chunk_size_mib", "1".into()),
                    ("stall_secs", "3".into()),
                ],
            ),
            (
                "conditions",
                vec![
                    ("sysfs", q(self.sysfs_dir())),
                    ("proc", q(self.proc_dir())),
                    ("recording_flag", q(self.recording_flag())),
                    // Never the host's wpa_supplicant: a test that wants one puts a fake
                    // control socket here.
                    ("wpa_ctrl_dir", q(self.wpa_ctrl_dir())),
                    ("idle_secs", "2".into()),
                    ("max_temp_c", "60".into()),
                    ("min_battery_percent", "20".into()),
                    (
                        "cellular_interfaces",
                        r#"["wwan*", "rmnet*", "ppp*"]"#.into(),
                    ),
                    // Extension key; the default 5 s would make every test wait.
                    ("hold_down_secs", "1".into()),
                ],
            ),
            (
                "control",
                vec![
                    ("socket", q(self.socket_path())),
                    ("allowed_uids", "[]".into()),
                    ("allowed_gids", "[]".into()),
                ],
            ),
            (
                "state",
                vec![("dir", q(self.state_dir())), ("history_days", "60".into())],
            ),
            (
                "defaults",
                vec![
                    ("auto_upload", "false".into()),
                    ("network", toml_string("wifi")),
                    ("require_charging", "true".into()),
                    ("require_idle", "true".into()),
                    ("data_types", r#"["photo", "video"]"#.into()),
                ],
            ),
        ]
        .into_iter()
        .map(|(s, kv)| {
            (
                s.to_owned(),
                kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            )
        })
        .collect();

        for (section, key, value) in self.config_overrides.lock().unwrap().iter() {
            let idx = match sections.iter().position(|(s, _)| s == section) {
                Some(i) => i,
                None => {
                    sections.push((section.clone(), Vec::new()));
                    sections.len() - 1
                }
            };
            let entries = &mut sections[idx].1;
            entries.retain(|(k, _)| k != key);
            if let Some(v) = value {
                entries.push((key.clone(), v.clone()));
            }
        }

        let mut out = String::from("# Generated by testkit::camera::FakeCamera\n");
        for (section, entries) in sections {
            out.push_str(&format!("\n[{section}]\n"));
            for (k, v) in entries {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }

    /// Writes [`FakeCamera::config_toml`] to [`FakeCamera::config_path`] and returns the path.
    pub fn write_config(&self, endpoint: &str) -> PathBuf {
        let path = self.config_path();
        fs::write(&path, self.config_toml(endpoint)).expect("write config");
        path
    }
}

/// A TOML basic string (quotes and backslashes escaped).
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(cam: &FakeCamera, rel: &str) -> String {
        fs::read_to_string(cam.sysfs_dir().join(rel)).unwrap()
    }

    #[test]
    fn default_state_is_charging_on_wifi_and_cool() {
        let cam = FakeCamera::new();
        assert_eq!(read(&cam, "class/power_supply/AC/online"), "1\n");
        assert_eq!(read(&cam, "class/power_supply/AC/type"), "Mains\n");
        assert_eq!(
            read(&cam, "class/power_supply/battery/status"),
            "Charging\n"
        );
        assert_eq!(read(&cam, "class/power_supply/battery/capacity"), "80\n");
        assert_eq!(read(&cam, "class/net/wlan0/operstate"), "up\n");
        assert!(cam.sysfs_dir().join("class/net/wlan0/wireless").is_dir());
        assert_eq!(read(&cam, "class/thermal/thermal_zone0/temp"), "35000\n");
        let route = fs::read_to_string(cam.proc_dir().join("net/route")).unwrap();
        let lines: Vec<&str> = route.lines().collect();
        assert!(lines[0].starts_with("Iface\tDestination\tGateway"));
        let cols: Vec<&str> = lines[1].split('\t').collect();
        assert_eq!(cols[..4], ["wlan0", "00000000", "0101A8C0", "0003"]);
        assert_eq!(cols[6], "600");
        assert!(cam.media_root().join(MEDIA_DIR).is_dir());
        assert!(!cam.recording_flag().exists());
        let mode = fs::metadata(cam.state_dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn setters_change_the_files() {
        let cam = FakeCamera::new();
        cam.set_charging(false);
        assert_eq!(read(&cam, "class/power_supply/AC/online"), "0\n");
        assert_eq!(
            read(&cam, "class/power_supply/battery/status"),
            "Discharging\n"
        );
        cam.set_battery(None);
        assert!(!cam.sysfs_dir().join("class/power_supply/battery").exists());
        cam.no_power_supplies();
        assert!(!cam.sysfs_dir().join("class/power_supply/AC").exists());

        cam.set_interface("eth0", true, false);
        cam.add_default_route("eth0", 100);
        let route = fs::read_to_string(cam.proc_dir().join("net/route")).unwrap();
        assert_eq!(
            route
                .lines()
                .filter(|l| l.contains("\t00000000\t0101"))
                .count(),
            2
        );
        cam.clear_default_route();
        let route = fs::read_to_string(cam.proc_dir().join("net/route")).unwrap();
        assert_eq!(route.lines().count(), 1);

        cam.set_temp_c(71.5);
        assert_eq!(read(&cam, "class/thermal/thermal_zone0/temp"), "71500\n");
        cam.set_recording(true);
        assert!(cam.recording_flag().exists());
        cam.set_recording(false);
        assert!(!cam.recording_flag().exists());

        let rel = cam.photo("A.JPG", 1000);
        assert_eq!(rel, "DCIM/100MEDIA/A.JPG");
        assert_eq!(fs::read(cam.media_path(&rel)).unwrap().len(), 1000);
        cam.set_card_present(false);
        assert!(!cam.media_root().exists());
        cam.set_card_present(true);
        assert!(cam.media_path(&rel).exists());
    }

    #[test]
    fn config_has_every_section_and_takes_overrides() {
        let cam = FakeCamera::new();
        cam.with("defaults", "auto_upload", "true")
            .with("cloud.regions", "eu", "\"http://127.0.0.1:1/files/\"")
            .without("device", "serial")
            .with("device", "serial_file", "\"/x\"");
        let toml = cam.config_toml("http://127.0.0.1:9/files/");
        for section in [
            "device",
            "media",
            "cloud",
            "conditions",
            "control",
            "state",
            "defaults",
        ] {
            assert!(
                toml.contains(&format!("[{section}]\n")),
                "{section} in {toml}"
            );
        }
        assert!(toml.contains("endpoint = \"http://127.0.0.1:9/files/\""));
        assert!(toml.contains("auto_upload = true"));
        assert!(!toml.contains("auto_upload = false"));
        assert!(toml.contains("[cloud.regions]\neu = "));
        assert!(!toml.contains("serial = "));
        assert!(toml.contains(&format!("socket = \"{}\"", cam.socket_path().display())));
        let path = cam.write_config("http://127.0.0.1:9/files/");
        assert!(path.exists());
    }

    #[tokio::test]
    async fn slow_writes_append_in_chunks() {
        let cam = FakeCamera::new();
        let rel = "DCIM/100MEDIA/V.MP4";
        let path = cam
            .write_media_slowly(rel, 10_000, 4, Duration::from_millis(10))
            .await;
        assert_eq!(fs::read(path).unwrap(), sample_bytes(seed_for(rel), 10_000));
    }
}
