//! The camera maker's settings: the TOML file of INTERFACE.md section 2.
//!
//! Invariant: a [`Config`] value is complete and valid. Every key is checked here, once, at the
//! edge; nothing past [`load`] sees raw TOML. Errors name the key path, the file and, where the
//! parser or the text gives one, the line.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::media::MediaFilter;
use crate::settings::Settings;

/// Where the config is read from when neither `--config` nor `CAMBACKUP_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/cambackup/cambackup.toml";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub file: PathBuf,
    pub device: Device,
    pub media: Media,
    pub cloud: Cloud,
    pub conditions: Conditions,
    pub control: Control,
    pub state: State,
    /// The user settings in force until the app changes them.
    pub defaults: Settings,
}

/// `[device]`: what identifies this camera model and unit on the server.
#[derive(Debug, Clone)]
pub struct Device {
    pub device_type: String,
    /// Resolved at load time from `serial` or `serial_file`.
    pub serial: String,
}

/// `[media]`: the card and which files on it are media.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Media {
    pub root: PathBuf,
    /// The card is there only when `root` is a mount point (another device than its parent):
    /// an empty mount point with no card behind it then reads as "card missing", not as an
    /// empty card. Off by default, for roots that are not mount points (tests, a bind mount).
    pub mount_required: bool,
    pub photo_extensions: Vec<String>,
    pub video_extensions: Vec<String>,
    pub exclude: Vec<String>,
    pub settle_secs: u64,
    pub rescan_secs: u64,
    /// Freeing space (INTERFACE.md section 8) starts when the card's free space is below this
    /// percentage; unset: the camera never frees space, whatever the user's setting.
    pub free_space_below_percent: Option<u8>,
    /// A file younger than this many days is never freed.
    pub keep_days: u32,
    /// What counts as a verified upload when freeing space.
    pub free_space_verify: FreeSpaceVerify,
    /// The firmware's own delete, run with the file's absolute path as its one argument (no
    /// shell); unset: the daemon unlinks the file itself.
    pub delete_command: Option<PathBuf>,
    /// The extensions and globs above, compiled when the config is loaded.
    #[serde(skip)]
    pub filter: MediaFilter,
}

impl Default for Media {
    fn default() -> Self {
        let photo_extensions = ["jpg", "jpeg", "dng", "heic"].map(String::from).to_vec();
        let video_extensions = ["mp4", "mov"].map(String::from).to_vec();
        let exclude = ["**/*.THM", "**/*.LRV", "**/.*"].map(String::from).to_vec();
        let filter = MediaFilter::new(&photo_extensions, &video_extensions, &exclude)
            .expect("the default globs compile");
        Media {
            root: PathBuf::new(),
            mount_required: false,
            photo_extensions,
            video_extensions,
            exclude,
            settle_secs: 10,
            rescan_secs: 600,
            free_space_below_percent: None,
            keep_days: 7,
            free_space_verify: FreeSpaceVerify::Checksum,
            delete_command: None,
            filter,
        }
    }
}

/// `media.free_space_verify`: what proves the server holds a file's exact bytes before it may
/// be freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreeSpaceVerify {
    /// Every chunk went with an `Upload-Checksum` the server accepted.
    Checksum,
    /// Without the checksum extension: the server's offset equals the length (over verified
    /// TLS), and the file read back from the card hashes, chunk by chunk, as the bytes sent.
    Length,
    /// The server's receipt: a `HEAD` with `Want-Repr-Digest: sha-256=10` just before the
    /// deletion answers `Repr-Digest: sha-256=:…:`, the SHA-256 of the object it stored, and
    /// it equals the camera's SHA-256 of the whole file, computed as it was sent, and the
    /// file read back from the card.
    Receipt,
}

impl FreeSpaceVerify {
    pub fn as_str(self) -> &'static str {
        match self {
            FreeSpaceVerify::Checksum => "checksum",
            FreeSpaceVerify::Length => "length",
            FreeSpaceVerify::Receipt => "receipt",
        }
    }
}

impl Media {
    /// Whether the maker configured freeing space (the user must still switch it on): only
    /// then are the hashes of what was sent kept, so cameras without it pay nothing.
    pub fn frees_space(&self) -> bool {
        self.free_space_below_percent.is_some()
    }

    /// Whether uploads compute the camera's SHA-256 of the whole file (`free_space_verify =
    /// "receipt"` on a camera that frees space): elsewhere it costs nothing.
    pub fn digests_whole_files(&self) -> bool {
        self.frees_space() && self.free_space_verify == FreeSpaceVerify::Receipt
    }
}

/// `[cloud]`: the tus server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Cloud {
    pub endpoint: String,
    pub regions: std::collections::BTreeMap<String, String>,
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: the device's certificate (PEM, the chain the maker's tier verifies), sent
    /// beside the bearer token. Set with `client_key` or not at all.
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (PEM), readable by its owner only (0600 or stricter).
    pub client_key: Option<PathBuf>,
    /// Extension: "auto" sizes each PATCH from the measured rate up to `chunk_size_mib`;
    /// "fixed" sends `chunk_size_mib` per PATCH (module `upload::chunk`).
    pub chunk_sizing: ChunkSizing,
    /// The largest PATCH ("auto"), or every PATCH's size ("fixed"), in MiB.
    pub chunk_size_mib: u64,
    pub stall_secs: u64,
    /// Extension: uploads in flight at once (1 to 4). One keeps the radio and the card calm.
    pub concurrency: usize,
    /// Extension: cap of the exponential back-off between retries.
    pub retry_max_secs: u64,
}

impl Default for Cloud {
    fn default() -> Self {
        Cloud {
            endpoint: String::new(),
            regions: Default::default(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            chunk_sizing: ChunkSizing::Auto,
            chunk_size_mib: 64,
            stall_secs: 30,
            concurrency: 1,
            retry_max_secs: 3600,
        }
    }
}

impl Cloud {
    /// The creation URL for an account in `region` (the default endpoint when the region has no
    /// entry of its own).
    pub fn endpoint_for(&self, region: Option<&str>) -> &str {
        region
            .and_then(|r| self.regions.get(r))
            .map(String::as_str)
            .unwrap_or(&self.endpoint)
    }

    /// The device's TLS identity for mutual TLS, as one PEM (certificate chain, then key), or
    /// `None` when the maker provisions none. Read at the config check and again whenever the
    /// upload client is built, so a key whose mode was loosened since is refused then too.
    /// The error names the key (`cloud.client_cert` or `cloud.client_key`) and says why.
    pub fn client_identity_pem(&self) -> Result<Option<Vec<u8>>, (&'static str, String)> {
        let (cert, key) = match (&self.client_cert, &self.client_key) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            (Some(_), None) => {
                return Err((
                    "cloud.client_key",
                    "`cloud.client_cert` is set without its key: set both or neither".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "cloud.client_cert",
                    "`cloud.client_key` is set without its certificate: set both or neither".into(),
                ))
            }
        };
        let read = |key: &'static str, path: &Path| {
            if !path.is_absolute() {
                return Err((
                    key,
                    format!("`{}` must be an absolute path", path.display()),
                ));
            }
            std::fs::read(path).map_err(|e| (key, format!("cannot read {}: {e}", path.display())))
        };
        let cert_pem = read("cloud.client_cert", cert)?;
        // The mode is checked before the key is read: a key others can read is refused,
        // not used, so the mistake is fixed at the factory instead of copied to every unit.
        check_private_mode(key).map_err(|m| ("cloud.client_key", m))?;
        let key_pem = read("cloud.client_key", key)?;
        let has = |pem: &[u8], label: &str| {
            String::from_utf8_lossy(pem).contains(&format!("-----BEGIN {label}"))
        };
        if !has(&cert_pem, "CERTIFICATE-----") {
            return Err((
                "cloud.client_cert",
                format!("{} holds no PEM certificate", cert.display()),
            ));
        }
        if ![
            "PRIVATE KEY-----",
            "RSA PRIVATE KEY-----",
            "EC PRIVATE KEY-----",
        ]
        .iter()
        .any(|l| has(&key_pem, l))
        {
            return Err((
                "cloud.client_key",
                format!(
                    "{} holds no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
                    key.display()
                ),
            ));
        }
        let mut pem = cert_pem;
        pem.push(b'\n');
        pem.extend_from_slice(&key_pem);
        reqwest::Identity::from_pem(&pem).map_err(|e| {
            (
                "cloud.client_key",
                format!(
                    "{} and {} do not make a TLS identity: {e}",
                    cert.display(),
                    key.display()
                ),
            )
        })?;
        Ok(Some(pem))
    }

    /// `chunk_size_mib` in bytes: the largest PATCH, or every PATCH's size.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size_mib * 1024 * 1024
    }
}

/// `cloud.chunk_sizing`: who decides how many bytes a PATCH carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkSizing {
    /// Each PATCH lasts a few seconds at the rate measured so far, up to `chunk_size_mib`.
    Auto,
    /// Every PATCH carries `chunk_size_mib` (the last one the rest).
    Fixed,
}

impl ChunkSizing {
    /// The name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkSizing::Auto => "auto",
            ChunkSizing::Fixed => "fixed",
        }
    }
}

/// `[conditions]`: where the device tells its state, and the operator's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Conditions {
    pub sysfs: PathBuf,
    pub proc: PathBuf,
    pub recording_flag: PathBuf,
    /// Exists while the firmware knows the Wi-Fi is metered (unset: no such signal).
    pub metered_flag: Option<PathBuf>,
    /// Extension: systemd-networkd's DHCP lease directory (files named by ifindex), read for
    /// Android's `ANDROID_METERED` (unset: not read).
    pub networkd_leases: Option<PathBuf>,
    /// Extension: where the firmware's udhcpc/dhcpcd hook writes DHCP option 43 per interface
    /// (`DIR/IFNAME`), read for `ANDROID_METERED` (unset: not read). docs/uplink.md.
    pub dhcp_vendor_dir: Option<PathBuf>,
    /// Extension: wpa_supplicant's control socket directory (`ctrl_interface=DIR=...`), asked
    /// which Wi-Fi network each interface is on (`DIR/IFNAME`) and what its beacon says. No
    /// socket there: no network name, and the app's answer holds for every network.
    pub wpa_ctrl_dir: PathBuf,
    pub idle_secs: u64,
    pub max_temp_c: f64,
    pub min_battery_percent: u8,
    pub cellular_interfaces: Vec<String>,
    /// Extension: a 1-minute load average above this counts as `busy` (unset: not checked).
    pub max_load: Option<f64>,
    /// Extension: how long the conditions must hold before an automatic upload (re)starts, so
    /// a bouncing charger contact or Wi-Fi roaming does not start and abort uploads every second.
    pub hold_down_secs: u64,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            sysfs: "/sys".into(),
            proc: "/proc".into(),
            recording_flag: "/run/camera/recording".into(),
            metered_flag: None,
            networkd_leases: None,
            dhcp_vendor_dir: None,
            wpa_ctrl_dir: "/run/wpa_supplicant".into(),
            idle_secs: 120,
            max_temp_c: 60.0,
            min_battery_percent: 20,
            cellular_interfaces: ["wwan*", "rmnet*", "ppp*"].map(String::from).to_vec(),
            max_load: None,
            hold_down_secs: 5,
        }
    }
}

/// `[control]`: the app's Unix socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Control {
    pub socket: PathBuf,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: "/run/cambackup/control.sock".into(),
            allowed_uids: vec![0],
            allowed_gids: vec![],
        }
    }
}

/// `[state]`: the database and credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct State {
    pub dir: PathBuf,
    pub history_days: u32,
}

impl Default for State {
    fn default() -> Self {
        State {
            dir: "/var/lib/cambackup".into(),
            history_days: 60,
        }
    }
}

/// What went wrong with the config, naming the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: TOML syntax error: {message}", at(file, *line))]
    Syntax {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{}: unknown key `{path}` (check its spelling against the documented keys)", at(file, *line))]
    UnknownKey {
        path: String,
        file: PathBuf,
        line: Option<usize>,
    },
    #[error("{}: missing required key `{path}`", at(file, None))]
    Missing { path: String, file: PathBuf },
    #[error("{}: `{path}`: {message}", at(file, *line))]
    Invalid {
        path: String,
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

#[cfg(test)]
impl ConfigError {
    /// The key path the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { path, .. }
            | ConfigError::Missing { path, .. }
            | ConfigError::Invalid { path, .. } => Some(path),
            _ => None,
        }
    }
}

fn at(file: &Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{}", file.display(), l),
        None => file.display().to_string(),
    }
}

/// The config path to use: the `--config` argument, else `CAMBACKUP_CONFIG`, else the default.
pub fn resolve_path(arg: Option<&Path>) -> PathBuf {
    arg.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CAMBACKUP_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// Reads, parses and validates the config file (and the serial file it may name).
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    parse(&text, file)
}

/// The TOML as written, before validation. Optional sections default.
#[derive(Deserialize)]
struct Raw {
    device: Option<RawDevice>,
    media: Option<Media>,
    cloud: Option<Cloud>,
    #[serde(default)]
    conditions: Conditions,
    #[serde(default)]
    control: Control,
    #[serde(default)]
    state: State,
    #[serde(default)]
    defaults: Settings,
}

#[derive(Deserialize)]
struct RawDevice {
    #[serde(rename = "type")]
    device_type: Option<String>,
    serial: Option<String>,
    serial_file: Option<PathBuf>,
}

/// Parses config text; `file` is only used to name it in errors and to resolve nothing else.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut unknown: Vec<String> = Vec::new();
    let de = toml::Deserializer::new(text);
    // serde_ignored writes `Some` as `?`: `media.?.setle_secs` is the key `media.setle_secs`.
    let mut track =
        |path: serde_ignored::Path<'_>| unknown.push(path.to_string().replace(".?", ""));
    let ignored = serde_ignored::Deserializer::new(de, &mut track);
    let raw: Result<Raw, _> = serde_path_to_error::deserialize(ignored);
    // Unknown keys first: a misspelt key is the likeliest cause of any later "missing" error.
    if let Some(path) = unknown.into_iter().next() {
        let line = line_of_key(text, &path);
        return Err(ConfigError::UnknownKey {
            path,
            file: file.into(),
            line,
        });
    }
    let raw = raw.map_err(|e| {
        let path = e.path().to_string().replace(".?", "");
        let inner = e.into_inner();
        let line = inner.span().map(|s| line_of_offset(text, s.start));
        let message = plain_types(inner.message());
        if path.is_empty() || path == "." {
            ConfigError::Syntax {
                file: file.into(),
                line,
                message,
            }
        } else {
            ConfigError::Invalid {
                line: line.or_else(|| line_of_key(text, &path)),
                path,
                file: file.into(),
                message,
            }
        }
    })?;
    validate(raw, text, file)
}

/// serde names Rust's types (`invalid type: string "ten", expected u64`); the person editing the
/// file reads "a whole number".
fn plain_types(message: &str) -> String {
    const WORDS: [(&str, &str); 9] = [
        ("u64", "a whole number (0 or more)"),
        ("u32", "a whole number (0 or more)"),
        ("u16", "a whole number (0 or more)"),
        ("u8", "a whole number (0 to 255)"),
        ("usize", "a whole number (0 or more)"),
        ("i64", "a whole number"),
        ("i32", "a whole number"),
        ("f64", "a number"),
        ("f32", "a number"),
    ];
    let mut out = message.to_string();
    for (ty, words) in WORDS {
        out = out.replace(&format!("expected {ty}"), &format!("expected {words}"));
    }
    out
}

/// Checks the parsed TOML section by section, in the file's order: the first problem found is
/// the one named.
fn validate(raw: Raw, text: &str, file: &Path) -> Result<Config, ConfigError> {
    let at = At { text, file };
    let device = at.device(raw.device)?;
    let media = at.media(raw.media)?;
    let cloud = at.cloud(raw.cloud)?;
    at.conditions(&raw.conditions)?;
    // Relative paths would resolve against the working directory, which is `/` under systemd:
    // refused like a relative `media.root`, so the mistake shows at `check-config`.
    for (key, path) in [
        ("control.socket", &raw.control.socket),
        ("state.dir", &raw.state.dir),
    ] {
        at.absolute(key, path)?;
    }
    // The same bounds as the app's changes (the windows themselves were parsed already); an
    // empty `data_types` is allowed: the user may choose to back up nothing automatically.
    if let Err(e) = raw.defaults.validate() {
        return Err(at.invalid(&format!("defaults.{}", e.field), e.problem));
    }
    Ok(Config {
        file: file.into(),
        device,
        media,
        cloud,
        conditions: raw.conditions,
        control: raw.control,
        state: raw.state,
        defaults: raw.defaults,
    })
}

/// The file being checked, to name a key's problem with its file and line.
struct At<'a> {
    text: &'a str,
    file: &'a Path,
}

impl At<'_> {
    fn missing(&self, path: &str) -> ConfigError {
        ConfigError::Missing {
            path: path.into(),
            file: self.file.into(),
        }
    }

    fn invalid(&self, path: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: path.into(),
            file: self.file.into(),
            line: line_of_key(self.text, path),
            message,
        }
    }

    /// `[device]`: the type, and the serial from `serial` or `serial_file` (one of them).
    fn device(&self, dev: Option<RawDevice>) -> Result<Device, ConfigError> {
        let dev = dev.ok_or_else(|| self.missing("device.type"))?;
        let device_type = dev
            .device_type
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| self.missing("device.type"))?;
        let serial = match (dev.serial, dev.serial_file) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "device.serial_file",
                    "set either `device.serial` or `device.serial_file`, not both".into(),
                ))
            }
            (Some(s), None) => s,
            (None, Some(f)) => read_serial(&f).map_err(|e| {
                self.invalid(
                    "device.serial_file",
                    format!("cannot read serial from {}: {e}", f.display()),
                )
            })?,
            (None, None) => return Err(self.missing("device.serial")),
        };
        if serial.trim().is_empty() {
            return Err(self.invalid("device.serial", "the serial number is empty".into()));
        }
        Ok(Device {
            device_type,
            serial: serial.trim().to_string(),
        })
    }

    /// `[media]`: the root, the extensions and globs (compiled here), and freeing space.
    fn media(&self, media: Option<Media>) -> Result<Media, ConfigError> {
        let mut media = media.ok_or_else(|| self.missing("media.root"))?;
        if media.root.as_os_str().is_empty() {
            return Err(self.missing("media.root"));
        }
        if !media.root.is_absolute() {
            return Err(self.invalid("media.root", "must be an absolute path".into()));
        }
        if media.mount_required && media.root.parent().is_none() {
            return Err(self.invalid(
                "media.mount_required",
                format!(
                    "`{}` has no parent directory to tell a mounted card from: mount the card \
                     elsewhere, or set `media.mount_required = false`",
                    media.root.display()
                ),
            ));
        }
        for (key, list) in [
            ("media.photo_extensions", &media.photo_extensions),
            ("media.video_extensions", &media.video_extensions),
        ] {
            if let Some(bad) = list.iter().find(|e| e.is_empty() || e.contains(['.', '/'])) {
                return Err(self.invalid(
                    key,
                    format!("`{bad}` is not an extension (write it without the dot)"),
                ));
            }
        }
        media.filter = MediaFilter::new(
            &media.photo_extensions,
            &media.video_extensions,
            &media.exclude,
        )
        .map_err(|m| self.invalid("media.exclude", m))?;
        self.freeing(&media)?;
        Ok(media)
    }

    /// `[media]`'s freeing space keys: the threshold and the delete command.
    fn freeing(&self, media: &Media) -> Result<(), ConfigError> {
        if let Some(p) = media.free_space_below_percent {
            if !(1..=95).contains(&p) {
                return Err(self.invalid(
                    "media.free_space_below_percent",
                    format!("{p} is not between 1 and 95 (percent of the card left free)"),
                ));
            }
        }
        if let Some(cmd) = &media.delete_command {
            if !cmd.is_absolute() {
                return Err(self.invalid(
                    "media.delete_command",
                    format!(
                        "`{}` must be an absolute path (it runs without a shell)",
                        cmd.display()
                    ),
                ));
            }
            if !cmd.is_file() {
                return Err(self.invalid(
                    "media.delete_command",
                    format!("{} does not exist or is not a file", cmd.display()),
                ));
            }
        }
        Ok(())
    }

    /// `[cloud]`: the endpoints, the CA file and the upload's numbers.
    fn cloud(&self, cloud: Option<Cloud>) -> Result<Cloud, ConfigError> {
        let cloud = cloud.ok_or_else(|| self.missing("cloud.endpoint"))?;
        if cloud.endpoint.is_empty() {
            return Err(self.missing("cloud.endpoint"));
        }
        check_endpoint(&cloud.endpoint).map_err(|m| self.invalid("cloud.endpoint", m))?;
        for (region, url) in &cloud.regions {
            check_endpoint(url).map_err(|m| self.invalid(&format!("cloud.regions.{region}"), m))?;
        }
        if let Some(ca) = &cloud.ca_file {
            if !ca.is_file() {
                return Err(self.invalid(
                    "cloud.ca_file",
                    format!("{} does not exist or is not a file", ca.display()),
                ));
            }
        }
        if let Err((key, message)) = cloud.client_identity_pem() {
            return Err(self.invalid(key, message));
        }
        if !(1..=1024).contains(&cloud.chunk_size_mib) {
            return Err(self.invalid("cloud.chunk_size_mib", "must be between 1 and 1024".into()));
        }
        if cloud.stall_secs == 0 {
            return Err(self.invalid("cloud.stall_secs", "must be at least 1".into()));
        }
        if !(1..=4).contains(&cloud.concurrency) {
            return Err(self.invalid("cloud.concurrency", "must be between 1 and 4".into()));
        }
        if cloud.retry_max_secs == 0 {
            return Err(self.invalid("cloud.retry_max_secs", "must be at least 1".into()));
        }
        Ok(cloud)
    }

    /// `[conditions]`: the battery floor and the cellular interfaces' patterns.
    fn conditions(&self, c: &Conditions) -> Result<(), ConfigError> {
        if c.min_battery_percent > 100 {
            return Err(self.invalid(
                "conditions.min_battery_percent",
                "must be between 0 and 100".into(),
            ));
        }
        for pattern in &c.cellular_interfaces {
            globset::Glob::new(pattern).map_err(|e| {
                self.invalid(
                    "conditions.cellular_interfaces",
                    format!("bad pattern `{pattern}`: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// A path key that must be absolute and not empty.
    fn absolute(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        if path.as_os_str().is_empty() {
            return Err(self.invalid(key, "must not be empty".into()));
        }
        if !path.is_absolute() {
            return Err(self.invalid(
                key,
                format!("`{}` must be an absolute path", path.display()),
            ));
        }
        Ok(())
    }
}

/// Reads a serial number file such as `/proc/device-tree/serial-number`: trimmed, NULs dropped.
fn read_serial(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| *c != '\0')
        .collect();
    Ok(text.trim().to_string())
}

/// A private key's file may be read by its owner only: no bit for group or others.
fn check_private_mode(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is mode {mode:04o}: the device's private key must be readable by its owner \
             only (0600 or stricter; `chmod 600 {}`)",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Checks a tus endpoint: https anywhere, plain http only to a loopback host.
pub fn check_endpoint(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        "http" => Err(format!(
            "`{url}` uses plain http to a host that is not loopback; use https"
        )),
        other => Err(format!("`{url}`: scheme `{other}` is not http(s)")),
    }
}

/// Whether the URL's host is this device (a loopback address or `localhost`).
pub fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line where a dotted key path is set, by following table headers. Good enough for
/// messages; the parser's own span is preferred where there is one.
fn line_of_key(text: &str, path: &str) -> Option<usize> {
    let (table, key) = match path.rsplit_once('.') {
        Some((t, k)) => (t, k),
        None => ("", path),
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim_matches(['[', ']']).trim().to_string();
            if current == path {
                return Some(i + 1);
            }
            continue;
        }
        if current == table {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

impl fmt::Display for Config {
    /// The effective settings, as `check-config` prints them (TOML-like, secrets never included:
    /// the config holds none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# effective settings from {}", self.file.display())?;
        writeln!(f, "[device]")?;
        writeln!(f, "type = {:?}", self.device.device_type)?;
        writeln!(f, "serial = {:?}", self.device.serial)?;
        writeln!(f, "\n[media]")?;
        writeln!(f, "root = {:?}", self.media.root.display().to_string())?;
        writeln!(f, "mount_required = {}", self.media.mount_required)?;
        writeln!(f, "photo_extensions = {:?}", self.media.photo_extensions)?;
        writeln!(f, "video_extensions = {:?}", self.media.video_extensions)?;
        writeln!(f, "exclude = {:?}", self.media.exclude)?;
        writeln!(f, "settle_secs = {}", self.media.settle_secs)?;
        writeln!(f, "rescan_secs = {}", self.media.rescan_secs)?;
        if let Some(p) = self.media.free_space_below_percent {
            writeln!(f, "free_space_below_percent = {p}")?;
        }
        writeln!(f, "keep_days = {}", self.media.keep_days)?;
        writeln!(
            f,
            "free_space_verify = {:?}",
            self.media.free_space_verify.as_str()
        )?;
        if let Some(c) = &self.media.delete_command {
            writeln!(f, "delete_command = {:?}", c.display().to_string())?;
        }
        writeln!(f, "\n[cloud]")?;
        writeln!(f, "endpoint = {:?}", self.cloud.endpoint)?;
        for (r, u) in &self.cloud.regions {
            writeln!(f, "regions.{r} = {u:?}")?;
        }
        for (key, path) in [
            ("ca_file", &self.cloud.ca_file),
            ("client_cert", &self.cloud.client_cert),
            ("client_key", &self.cloud.client_key),
        ] {
            if let Some(p) = path {
                writeln!(f, "{key} = {:?}", p.display().to_string())?;
            }
        }
        writeln!(f, "chunk_sizing = {:?}", self.cloud.chunk_sizing.as_str())?;
        writeln!(f, "chunk_size_mib = {}", self.cloud.chunk_size_mib)?;
        writeln!(f, "stall_secs = {}", self.cloud.stall_secs)?;
        writeln!(f, "concurrency = {}", self.cloud.concurrency)?;
        writeln!(f, "retry_max_secs = {}", self.cloud.retry_max_secs)?;
        let c = &self.conditions;
        writeln!(f, "\n[conditions]")?;
        writeln!(f, "sysfs = {:?}", c.sysfs.display().to_string())?;
        writeln!(f, "proc = {:?}", c.proc.display().to_string())?;
        writeln!(
            f,
            "recording_flag = {:?}",
            c.recording_flag.display().to_string()
        )?;
        for (key, path) in [
            ("metered_flag", &c.metered_flag),
            ("networkd_leases", &c.networkd_leases),
            ("dhcp_vendor_dir", &c.dhcp_vendor_dir),
        ] {
            if let Some(p) = path {
                writeln!(f, "{key} = {:?}", p.display().to_string())?;
            }
        }
        writeln!(
            f,
            "wpa_ctrl_dir = {:?}",
            c.wpa_ctrl_dir.display().to_string()
        )?;
        writeln!(f, "idle_secs = {}", c.idle_secs)?;
        writeln!(f, "max_temp_c = {}", c.max_temp_c)?;
        writeln!(f, "min_battery_percent = {}", c.min_battery_percent)?;
        writeln!(f, "cellular_interfaces = {:?}", c.cellular_interfaces)?;
        if let Some(l) = c.max_load {
            writeln!(f, "max_load = {l}")?;
        }
        writeln!(f, "hold_down_secs = {}", c.hold_down_secs)?;
        writeln!(f, "\n[control]")?;
        writeln!(
            f,
            "socket = {:?}",
            self.control.socket.display().to_string()
        )?;
        writeln!(f, "allowed_uids = {:?}", self.control.allowed_uids)?;
        writeln!(f, "allowed_gids = {:?}", self.control.allowed_gids)?;
        writeln!(f, "\n[state]")?;
        writeln!(f, "dir = {:?}", self.state.dir.display().to_string())?;
        writeln!(f, "history_days = {}", self.state.history_days)?;
        writeln!(f, "\n[defaults]")?;
        let d = serde_json::to_value(&self.defaults).expect("plain data serializes");
        for name in Settings::NAMES {
            writeln!(f, "{name} = {}", toml_value(&d[name]))?;
        }
        Ok(())
    }
}

/// A setting's value as TOML writes it: words quoted, lists of them bracketed.
fn toml_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[device]
type = "SJ10 Pro"
serial = "SJ10P22910042"

[media]
root = "/mnt/sdcard"

[cloud]
endpoint = "https://upload.example.com/files/"
"#;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("/etc/cambackup/cambackup.toml"))
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.media.settle_secs, 10);
        assert_eq!(c.cloud.chunk_size_mib, 64);
        assert_eq!(c.cloud.chunk_sizing, ChunkSizing::Auto);
        assert_eq!(c.control.socket, Path::new("/run/cambackup/control.sock"));
        assert!(!c.defaults.auto_upload, "consent must default to off");
        assert_eq!(c.state.history_days, 60);
    }

    #[test]
    fn misspelt_key_is_named_with_its_line() {
        let text = MINIMAL.replace("root = ", "setle_secs = 3\nroot = ");
        let err = parse_str(&text).unwrap_err();
        assert_eq!(err.key(), Some("media.setle_secs"));
        let msg = err.to_string();
        assert!(msg.contains("cambackup.toml:7"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = format!("{MINIMAL}\n[conditions]\nidle_secs = \"two minutes\"\n");
        let err = parse_str(&text).unwrap_err();
        assert_eq!(err.key(), Some("conditions.idle_secs"), "{err}");
        assert!(err.to_string().contains(":13"), "{err}");
    }

    #[test]
    fn bad_enum_value_names_the_key() {
        let text = format!("{MINIMAL}\n[defaults]\nnetwork = \"wlan\"\n");
        let err = parse_str(&text).unwrap_err();
        assert_eq!(err.key(), Some("defaults.network"), "{err}");
        let text = MINIMAL.replace("[cloud]\n", "[cloud]\nchunk_sizing = \"adaptive\"\n");
        let err = parse_str(&text).unwrap_err();
        assert_eq!(err.key(), Some("cloud.chunk_sizing"), "{err}");
        let text = MINIMAL.replace("[cloud]\n", "[cloud]\nchunk_sizing = \"fixed\"\n");
        assert_eq!(
            parse_str(&text).unwrap().cloud.chunk_sizing,
            ChunkSizing::Fixed
        );
    }

    #[test]
    fn the_new_settings_have_defaults_and_bad_ones_are_named() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.defaults.max_rate_kib_per_sec, 0);
        assert!(c.defaults.schedule.is_empty());
        assert_eq!(c.defaults.cellular_daily_mib, 0);
        let text = format!("{MINIMAL}\n[defaults]\nschedule = [\"01:00-07:00\", \"late\"]\n");
        let err = parse_str(&text).unwrap_err();
        assert_eq!(err.key(), Some("defaults.schedule[1]"), "{err}");
        let text = format!("{MINIMAL}\n[defaults]\ncellular_daily_mib = 99999999999\n");
        let err = parse_str(&text).unwrap_err();
        assert_eq!(err.key(), Some("defaults.cellular_daily_mib"), "{err}");
    }

    #[test]
    fn freeing_space_is_unconfigured_by_default_and_bad_values_are_named() {
        let c = parse_str(MINIMAL).unwrap();
        assert!(!c.media.frees_space());
        assert_eq!(c.media.keep_days, 7);
        assert_eq!(c.media.free_space_verify, FreeSpaceVerify::Checksum);
        let ok = MINIMAL.replace(
            "root = ",
            "free_space_below_percent = 15\nfree_space_verify = \"length\"\nroot = ",
        );
        let c = parse_str(&ok).unwrap();
        assert_eq!(c.media.free_space_below_percent, Some(15));
        assert_eq!(c.media.free_space_verify, FreeSpaceVerify::Length);
        assert!(!c.media.digests_whole_files());
        let c = parse_str(&ok.replace("\"length\"", "\"receipt\"")).unwrap();
        assert_eq!(c.media.free_space_verify, FreeSpaceVerify::Receipt);
        assert!(c.media.digests_whole_files());
        for (line, key) in [
            (
                "free_space_below_percent = 0",
                "media.free_space_below_percent",
            ),
            ("free_space_verify = \"trust\"", "media.free_space_verify"),
            ("delete_command = \"camera-delete\"", "media.delete_command"),
            (
                "delete_command = \"/nonexistent/delete\"",
                "media.delete_command",
            ),
        ] {
            let text = MINIMAL.replace("root = ", &format!("{line}\nroot = "));
            let err = parse_str(&text).unwrap_err();
            assert_eq!(err.key(), Some(key), "{line}: {err}");
        }
    }

    #[test]
    fn mount_required_is_off_by_default_and_needs_a_root_with_a_parent() {
        assert!(!parse_str(MINIMAL).unwrap().media.mount_required);
        let on = MINIMAL.replace("root = ", "mount_required = true\nroot = ");
        assert!(parse_str(&on).unwrap().media.mount_required);
        let slash = on.replace("\"/mnt/sdcard\"", "\"/\"");
        let err = parse_str(&slash).unwrap_err();
        assert_eq!(err.key(), Some("media.mount_required"), "{err}");
        let wrong = MINIMAL.replace("root = ", "mount_required = \"yes\"\nroot = ");
        let err = parse_str(&wrong).unwrap_err();
        assert_eq!(err.key(), Some("media.mount_required"), "{err}");
    }

    /// A certificate and key in PEM (their contents are only parsed here, never checked
    /// against each other: that is the TLS client's job when it is built).
    const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n";

    #[test]
    fn client_identity_is_both_or_neither_and_its_key_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("device.crt");
        let key = dir.path().join("device.key");
        std::fs::write(&cert, CERT_PEM).unwrap();
        std::fs::write(&key, KEY_PEM).unwrap();
        let with = |lines: &str| MINIMAL.replace("[cloud]\n", &format!("[cloud]\n{lines}\n"));
        let cert_line = format!("client_cert = {:?}", cert.display().to_string());
        let key_line = format!("client_key = {:?}", key.display().to_string());
        let both = with(&format!("{cert_line}\n{key_line}"));

        assert!(parse_str(MINIMAL).unwrap().cloud.client_cert.is_none());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse_str(&both).unwrap();
        assert_eq!(c.cloud.client_key.as_deref(), Some(key.as_path()));
        assert!(c.to_string().contains("client_key = "), "{c}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        parse_str(&both).unwrap();

        for mode in [0o640, 0o644, 0o604] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = parse_str(&both).unwrap_err();
            assert_eq!(err.key(), Some("cloud.client_key"), "{mode:o}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&key.display().to_string()) && msg.contains(&format!("{mode:04o}")),
                "the message names the file and its mode: {msg}"
            );
            assert!(msg.contains("cambackup.toml"), "and the config file: {msg}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        let err = parse_str(&with(&cert_line)).unwrap_err();
        assert_eq!(err.key(), Some("cloud.client_key"), "{err}");
        let err = parse_str(&with(&key_line)).unwrap_err();
        assert_eq!(err.key(), Some("cloud.client_cert"), "{err}");
        let err =
            parse_str(&with(&format!("client_cert = \"device.crt\"\n{key_line}"))).unwrap_err();
        assert_eq!(err.key(), Some("cloud.client_cert"), "relative: {err}");
        let missing = both.replace("device.crt", "nothing.crt");
        let err = parse_str(&missing).unwrap_err();
        assert_eq!(err.key(), Some("cloud.client_cert"), "{err}");
        // The files swapped: neither holds what its key names.
        std::fs::write(&key, CERT_PEM).unwrap();
        let err = parse_str(&both).unwrap_err();
        assert_eq!(err.key(), Some("cloud.client_key"), "{err}");
        assert!(err.to_string().contains("private key"), "{err}");
        std::fs::write(&cert, KEY_PEM).unwrap();
        let err = parse_str(&both).unwrap_err();
        assert_eq!(err.key(), Some("cloud.client_cert"), "{err}");
    }

    #[test]
    fn missing_required_keys_are_named() {
        let err = parse_str("[media]\nroot = \"/mnt\"\n").unwrap_err();
        assert_eq!(err.key(), Some("device.type"));
        let err = parse_str(&MINIMAL.replace("serial = \"SJ10P22910042\"", "")).unwrap_err();
        assert_eq!(err.key(), Some("device.serial"));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let remote = MINIMAL.replace("https://upload.example.com", "http://upload.example.com");
        let err = parse_str(&remote).unwrap_err();
        assert_eq!(err.key(), Some("cloud.endpoint"));
        for ok in [
            "http://127.0.0.1:1080/files/",
            "http://localhost/x",
            "http://[::1]:9/",
        ] {
            let text = MINIMAL.replace("https://upload.example.com/files/", ok);
            parse_str(&text).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn syntax_error_gives_the_line() {
        let err = parse_str("[device]\ntype = \n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Syntax { line: Some(2), .. }),
            "{err:?}"
        );
    }

    #[test]
    fn serial_file_is_trimmed_and_nuls_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("serial-number");
        std::fs::write(&f, b"ABC123\0\n").unwrap();
        let text = MINIMAL.replace(
            "serial = \"SJ10P22910042\"",
            &format!("serial_file = {:?}", f.display().to_string()),
        );
        assert_eq!(parse_str(&text).unwrap().device.serial, "ABC123");
    }
}
