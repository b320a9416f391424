//! The parsers' entry points for `cargo fuzz` (`fuzz/`, issue 26): one function per fuzz
//! target, taking the fuzzer's bytes. Each must never panic, and checks the properties its
//! parser promises (a storage path maps back to its name, an appended ledger line is read back,
//! saved choices load as they were).
//!
//! Why here and not in `fuzz/`: the crate is a binary, so the fuzz crate builds this same tree
//! as its library (`fuzz/Cargo.toml`), and only code inside the crate can reach the parsers.
//! Built only for tests and fuzzing (`--cfg fuzzing`); the tests below replay every input kept
//! in `fuzz/regressions/` (what the fuzzer once broke) and `fuzz/seeds/`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::config;
use crate::control::extract::{item_id, parse_json, parse_patch, QueryPairs};
use crate::control::routes;
use crate::media::{self, Kind};
use crate::settings::{Settings, SettingsPatch};
use crate::store::ledger;
use crate::upload::{retry, tus};

/// A target: the fuzzer's bytes in, a panic on a defect.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/NAME.rs` calls it.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config_toml),
    ("api_body", api_body),
    ("api_query", api_query),
    ("tus_headers", tus_headers),
    ("routes", route_tables),
    ("dhcp", dhcp),
    ("wpa", wpa),
    ("ledger", ledger_file),
    ("choices", choices_file),
    ("storage_path", storage_path),
];

/// The camera maker's TOML.
pub fn config_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = config::parse(&text, Path::new("/etc/cambackup/cambackup.toml")) {
        // Every error names the file.
        let shown = e.to_string();
        assert!(shown.contains("cambackup.toml"), "{shown}");
    }
}

/// A request body: the first byte picks the endpoint's type, the rest is the body.
pub fn api_body(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            let _ = parse_json::<routes::UploadRequest>(body);
        }
        1 => {
            if let Ok(req) = parse_json::<routes::PairRequest>(body) {
                let _ = routes::check_pair_request(req);
            }
        }
        2 => {
            let _ = parse_json::<routes::Recording>(body);
        }
        3 => {
            let _ = parse_json::<routes::NetworkRequest>(body);
        }
        _ => {
            if let Ok(patch) = parse_patch::<SettingsPatch>(body) {
                if patch.validate().is_ok() {
                    // What the daemon stores and writes to choices.json must read back.
                    let s = Settings::default().apply(&patch);
                    let text = serde_json::to_vec(&s).expect("settings serialize");
                    let back: Settings = serde_json::from_slice(&text).expect("settings read back");
                    assert_eq!(back, s);
                }
            }
        }
    }
}

/// A query string and a path's item id (`/v1/queue?...`, `/v1/queue/{id}/retry`).
pub fn api_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let q = QueryPairs::parse(&text);
    let _ = q.only(&["state", "limit", "after"]);
    let _ = q.int("limit", 1, 1000, 100);
    let _ = q.int("after", 0, i64::MAX, 0);
    let _ = q.get("state").map(crate::store::ItemState::parse);
    if let Ok(id) = item_id(&text) {
        assert!(id > 0);
    }
}

/// A tus response's headers, newline-separated in this order: `Upload-Offset`, `Location`,
/// `Retry-After`, `Upload-Expires`, `Tus-Version`, `Tus-Extension`, `Tus-Max-Size`.
pub fn tus_headers(data: &[u8]) {
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
    const NAMES: [&str; 7] = [
        tus::header::UPLOAD_OFFSET,
        tus::header::LOCATION,
        tus::header::RETRY_AFTER,
        tus::header::UPLOAD_EXPIRES,
        tus::header::TUS_VERSION,
        tus::header::TUS_EXTENSION,
        tus::header::TUS_MAX_SIZE,
    ];
    let mut h = HeaderMap::new();
    for (name, value) in NAMES.iter().zip(data.split(|b| *b == b'\n')) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    let endpoint = "https://tus.example.com/files/";
    let _ = tus::header_u64(&h, tus::header::UPLOAD_OFFSET, "HEAD", endpoint);
    let _ = tus::expires(&h, "HEAD", endpoint);
    let _ = tus::parse_capabilities(&h, endpoint);
    if let Some(Ok(location)) = h.get(tus::header::LOCATION).map(|v| v.to_str()) {
        if let Ok(url) = tus::resolve_location(endpoint, location) {
            // The server cannot steer the token to plain http elsewhere.
            assert!(config::check_endpoint(&url).is_ok(), "{url}");
        }
    }
    if let Some(Ok(v)) = h.get(tus::header::RETRY_AFTER).map(|v| v.to_str()) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        if let Some(d) = retry::parse_retry_after(v, now) {
            // Whatever the header says, the back-off it feeds stays bounded.
            let b = retry::Backoff {
                base: Duration::from_secs(2),
                max: Duration::from_secs(60),
            };
            for again in [false, true] {
                assert!(b.delay(3, Some(d), again, 0.999) <= retry::MAX_RETRY_AFTER);
            }
        }
    }
}

/// `/proc/net/route` and `/proc/net/ipv6_route` (the same bytes read as each).
pub fn route_tables(data: &[u8]) {
    use crate::conditions::network::{default_routes, default_routes_v6};
    let text = String::from_utf8_lossy(data);
    for routes in [default_routes(&text), default_routes_v6(&text)] {
        assert!(routes.windows(2).all(|w| w[0].metric <= w[1].metric));
        assert!(routes.iter().all(|r| !r.interface.is_empty()));
    }
}

/// A systemd-networkd lease file and a DHCP hook's option-43 file.
pub fn dhcp(data: &[u8]) {
    use crate::conditions::metered::{networkd_lease_metered, option43_metered};
    let text = String::from_utf8_lossy(data);
    let _ = networkd_lease_metered(&text);
    let _ = option43_metered(&text);
}

/// wpa_supplicant's replies (`STATUS`, `BSS`) and the information elements in them: whatever
/// the socket sends, no panic; the elements as raw bytes too, since a `BSS` reply's hex is
/// only as good as the access point's frame.
pub fn wpa(data: &[u8]) {
    use crate::conditions::wpa::{decode_ssid, parse_bss, parse_status, read_elements};
    let text = String::from_utf8_lossy(data);
    let _ = parse_status(&text);
    let _ = parse_bss(&text);
    let _ = decode_ssid(&text);
    let _ = read_elements(data);
}

/// A scratch directory per process for the file readers (the fuzzer runs one input at a time).
fn scratch() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

/// `ledger.jsonl` as a power cut or a bad flash may leave it: replaying never fails, and a
/// line appended after whatever is there is read back.
pub fn ledger_file(data: &[u8]) {
    let dir = scratch();
    std::fs::write(dir.join(ledger::LEDGER_FILE), data).expect("write the ledger");
    let _ = ledger::replay(dir);
    let entry = ledger::Entry {
        p: "DCIM/100CAM/FUZZ0001.JPG".into(),
        s: 4096,
        m: 1_780_000_000_000_000_000,
        k: Kind::Photo,
        u: None,
        e: None,
        d: true,
        x: false,
        f: false,
        r: false,
        g: None,
    };
    ledger::append(dir, &entry).expect("append to the ledger");
    let (known, _) = ledger::replay(dir);
    let k = known.get(&(entry.p.clone(), entry.s, entry.m));
    assert!(
        k.is_some_and(|k| k.done),
        "a done line appended after {data:?} was not read back"
    );
}

/// `choices.json`: a damaged file is no record, never a crash; what loads saves and loads
/// again the same.
pub fn choices_file(data: &[u8]) {
    let dir = scratch();
    std::fs::write(dir.join(ledger::CHOICES_FILE), data).expect("write the choices");
    if let ledger::ChoicesFile::Found(c) = ledger::load_choices(dir) {
        ledger::save_choices(dir, &c).expect("save the choices");
        assert_eq!(ledger::load_choices(dir), ledger::ChoicesFile::Found(c));
    }
}

/// The storage-path escaping: for any name a directory entry can have (any bytes but `/` and
/// NUL), decode(encode(name)) == name; and decoding any text never panics.
pub fn storage_path(data: &[u8]) {
    for name in data.split(|b| *b == b'/' || *b == 0) {
        let mut encoded = String::new();
        media::escape_name(OsStr::from_bytes(name), &mut encoded);
        assert_eq!(
            media::unescape(&encoded).as_bytes(),
            name,
            "{name:?} encodes as {encoded:?}"
        );
    }
    let _ = media::unescape(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kept input of every target, run through it: what once broke stays fixed.
    #[test]
    fn every_kept_fuzz_input_passes() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut ran = 0;
        for (name, target) in TARGETS {
            for kind in ["regressions", "seeds"] {
                let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(name)) else {
                    continue;
                };
                for file in dir.flatten() {
                    let data = std::fs::read(file.path()).unwrap();
                    let caught = std::panic::catch_unwind(|| target(&data));
                    assert!(caught.is_ok(), "{name}: {} fails", file.path().display());
                    ran += 1;
                }
            }
        }
        assert!(ran >= TARGETS.len(), "only {ran} kept inputs found");
    }

    #[test]
    fn every_target_has_a_fuzz_target_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
        for (name, _) in TARGETS {
            assert!(dir.join(format!("{name}.rs")).exists(), "{name}");
        }
    }
}
