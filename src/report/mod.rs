//! The support bundle (`GET /v1/report`, `cambackup report`): one `.tar.gz` the user sends to
//! the maker's support, so a thread does not stall for lack of logs.
//!
//! What it holds, under `cambackup-report/`: `version.txt` (the build, the kernel, the clock),
//! `config.toml` (the effective config), `status.json`, `queue.json` (counts, and the items that
//! are failed, pending or in flight, up to [`ITEMS`] of each), `history.json` (counts and
//! bytes), `system.txt` (the card's file system, mount and space, the links, the way out), and
//! `log.txt` (the daemon's last log records, `logring`).
//!
//! Invariants: never the account's token or user ID (neither is read here: the account file is
//! not opened), nor the content of a key file (`cloud.client_key` is named as set or not); no
//! file or directory name of the card unless asked (`with_names`): the storage paths of the
//! JSON parts and the name fields of the log are replaced by `<name>`, and every other text is
//! scrubbed of what looks like a path (a `/` not in a URL) or a photo or video file name
//! (`Redact`).

mod tgz;

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::app::{App, AppError};
use crate::clock::{now_unix, utc};
use crate::store::{Item, ItemState};

/// Items listed per state in `queue.json`.
pub const ITEMS: u32 = 100;

/// The directory the bundle's files are in.
const DIR: &str = "cambackup-report";

/// JSON keys and log fields whose values name files, or the Wi-Fi network (its SSID and
/// BSSID, `status.uplink.network_name`: where the camera was), replaced whole without
/// `with_names`.
const NAME_KEYS: [&str; 9] = [
    "storage_path",
    "path",
    "name",
    "dir",
    "file",
    "failures",
    "network_name",
    "ssid",
    "bssid",
];

/// The support bundle, as `.tar.gz` bytes. Blocking (statvfs, `/proc`, the store).
pub fn build(app: &App, with_names: bool) -> Result<Vec<u8>, AppError> {
    let config = app.config();
    let redact = Redact {
        on: !with_names,
        root: config.media.root.display().to_string(),
        exts: config
            .media
            .photo_extensions
            .iter()
            .chain(&config.media.video_extensions)
            .map(|e| format!(".{}", e.to_ascii_lowercase()))
            .collect(),
    };
    let now = now_unix();
    let status = serde_json::to_value(app.status()?).unwrap_or_default();
    let mut tar = tgz::Tar::default();
    let mut add = |name: &str, text: String| {
        tar.file(&format!("{DIR}/{name}"), now, text.as_bytes());
    };
    add("version.txt", version(now, with_names));
    add("config.toml", config_text(&config.to_string()));
    add("status.json", pretty(redact.json(status.clone())));
    add("queue.json", pretty(redact.json(queue(app, &status)?)));
    add(
        "history.json",
        pretty(redact.json(history(app, with_names)?)),
    );
    add(
        "system.txt",
        redact.text(&system(&config.media.root, &redact.json(status.clone()))),
    );
    let mut log = String::new();
    for r in crate::logring::ring().records() {
        log.push_str(&r.render(&|k, v| redact.field(k, v)));
        log.push('\n');
    }
    add("log.txt", log);
    Ok(tgz::gzip(&tar.finish(), now))
}

fn pretty(v: Value) -> String {
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// `version.txt`: the build (as `cambackup --version` says it), the kernel, the time.
fn version(now: i64, with_names: bool) -> String {
    let build = option_env!("CAMBACKUP_VERSION").unwrap_or(env!("CARGO_PKG_VERSION"));
    let mut out = format!("cambackup {build}\n");
    let _ = writeln!(
        out,
        "target: {}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    let _ = writeln!(out, "kernel: {}", uname());
    let _ = writeln!(out, "made at: {} ({now})", utc(now));
    let _ = writeln!(
        out,
        "file names: {}",
        if with_names {
            "included (asked for)"
        } else {
            "left out"
        }
    );
    out
}

/// `uname -srvm`.
fn uname() -> String {
    // SAFETY: a zeroed plain C struct, filled in by the call.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: the struct is ours to fill.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!(
        "{} {} {} {}",
        field(&u.sysname),
        field(&u.release),
        field(&u.version),
        field(&u.machine)
    )
}

/// The effective config (`check-config`'s), with `client_key`'s path left out: the config
/// holds no secret, but the key's place need not travel.
fn config_text(effective: &str) -> String {
    effective
        .lines()
        .map(|l| {
            if l.starts_with("client_key = ") {
                "client_key = \"(set)\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `queue.json`: the counts, and the items that are failed, uploading or pending (up to
/// [`ITEMS`] of each, oldest first).
fn queue(app: &App, status: &Value) -> Result<Value, AppError> {
    let mut items = Vec::new();
    for state in [ItemState::Failed, ItemState::Uploading, ItemState::Pending] {
        items.extend(app.queue(Some(state), ITEMS, 0)?.iter().map(item));
    }
    Ok(json!({
        "counts": status["queue"],
        "card": status["card"],
        "items": items,
    }))
}

fn item(i: &Item) -> Value {
    json!({
        "id": i.id,
        "storage_path": i.storage_path.as_str(),
        "kind": i.kind.as_str(),
        "size": i.size,
        "state": i.state.as_str(),
        "manual": i.manual,
        "attempts": i.attempts,
        "bytes_sent": i.bytes_sent,
        "next_attempt_at": i.next_attempt_at,
        "last_error": i.last_error,
        "creations": i.creations,
        "queued_at": i.queued_at,
        "card": i.card,
    })
}

/// `history.json`: how many uploads and bytes, the first and last, how many were freed; with
/// names, the last [`ITEMS`] entries too.
fn history(app: &App, with_names: bool) -> Result<Value, AppError> {
    // Figures over the whole history (a card of 100,000 files has that many rows: a cap on
    // rows read would count 10,000 of them), and only the names shown are loaded.
    let sum = app.history_summary()?;
    let mut v = json!({
        "uploads": sum.uploads,
        "bytes": sum.bytes,
        "freed": sum.freed,
        "first_completed_at": sum.first_completed_at,
        "last_completed_at": sum.last_completed_at,
    });
    if with_names {
        v["entries"] = app
            .history(ITEMS)?
            .iter()
            .map(|e| {
                json!({
                    "storage_path": e.storage_path,
                    "size": e.size,
                    "completed_at": e.completed_at,
                    "freed_at": e.freed_at,
                    "card": e.card,
                })
            })
            .collect();
    }
    Ok(v)
}

/// `system.txt`: the card's file system and space, the links, the way out.
fn system(root: &Path, status: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "media.root: {}", root.display());
    match crate::card::filesystem_of(root) {
        Some((point, fstype)) => {
            let _ = writeln!(
                out,
                "card file system: {fstype}, mounted on {}",
                point.display()
            );
        }
        None => {
            let _ = writeln!(out, "card file system: unknown (no mount found)");
        }
    }
    match space(root) {
        Some((free, total)) => {
            let _ = writeln!(out, "card space: {free} bytes free of {total}");
        }
        None => {
            let _ = writeln!(out, "card space: unknown (statvfs failed)");
        }
    }
    let card = &status["card"];
    let _ = writeln!(
        out,
        "card: serial {}, label {}, read-only {}",
        card["serial"], card["label"], card["read_only"]
    );
    let _ = writeln!(out, "media available: {}", status["media_available"]);
    let c = &status["conditions"];
    for l in c["links"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "link: {} {} {} metered {} ({})",
            l["interface"].as_str().unwrap_or(""),
            l["network"].as_str().unwrap_or(""),
            l["families"],
            l["metered"]["metered"],
            l["metered"]["because"]
        );
    }
    let _ = writeln!(out, "network: {} via {}", c["network"], c["interface"]);
    let _ = writeln!(out, "uplink: {}", status["uplink"]);
    out
}

/// The card's free and total bytes, as an unprivileged writer sees them.
fn space(root: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(root.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed plain C struct, filled in by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct the call fills in.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    Some((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

/// What leaves names out of the bundle (when `on`).
struct Redact {
    on: bool,
    /// `media.root`, as text.
    root: String,
    /// The photo and video extensions, lowercase, with their dot.
    exts: Vec<String>,
}

/// What stands for a name left out.
const HIDDEN: &str = "<name>";

impl Redact {
    /// A log field's value: a name field whole, anything else scrubbed.
    fn field(&self, key: &str, value: &str) -> String {
        if self.on && NAME_KEYS.contains(&key) {
            HIDDEN.to_string()
        } else {
            self.text(value)
        }
    }

    /// `v` with the values under [`NAME_KEYS`] replaced and every other string scrubbed.
    fn json(&self, v: Value) -> Value {
        if !self.on {
            return v;
        }
        match v {
            Value::String(s) => Value::String(self.text(&s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|v| self.json(v)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, v)| {
                        let v = if NAME_KEYS.contains(&k.as_str()) && !v.is_null() {
                            match v {
                                Value::Array(a) => {
                                    Value::Array(a.iter().map(|_| HIDDEN.into()).collect())
                                }
                                _ => HIDDEN.into(),
                            }
                        } else {
                            self.json(v)
                        };
                        (k, v)
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    /// `s` with each word that is a path (a `/`, not in a URL) or a photo or video file name
    /// (by its extension) replaced; a quoted string is one word.
    fn text(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut word = String::new();
        let mut quoted = false;
        for c in s.chars() {
            let ends = if quoted {
                c == '"'
            } else {
                c.is_whitespace() || "\"'`=,;()[]{}<>".contains(c)
            };
            if !ends {
                word.push(c);
                continue;
            }
            out.push_str(&self.word(&word));
            word.clear();
            out.push(c);
            if c == '"' {
                quoted = !quoted;
            }
        }
        out.push_str(&self.word(&word));
        out
    }

    fn word(&self, w: &str) -> String {
        let lower = w.to_lowercase();
        let bare = lower.trim_end_matches([':', '.', '!', '?']);
        let url = lower.starts_with("http://") || lower.starts_with("https://");
        if url {
            // Always, names or not: an upload URL is the account's (on many tus servers it
            // is the key to the upload), so only its origin stays.
            return origin_of(w);
        }
        if !self.on {
            return w.to_string();
        }
        let named = (w.contains('/') && !url)
            || w.contains(&self.root)
            || self.exts.iter().any(|e| bare.ends_with(e.as_str()));
        if named {
            HIDDEN.to_string()
        } else {
            w.to_string()
        }
    }
}

/// A URL's origin with its path hidden (`https://host:port/…`), or [`HIDDEN`].
fn origin_of(w: &str) -> String {
    let trimmed = w.trim_end_matches([':', '.', ',', '!', '?']);
    match url::Url::parse(trimmed) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}/…", u.scheme()),
            (Some(h), None) => format!("{}://{h}/…", u.scheme()),
            _ => HIDDEN.to_string(),
        },
        Err(_) => HIDDEN.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_urls_keep_only_their_origin_with_names_or_without() {
        for on in [true, false] {
            let r = Redact { on, ..redact() };
            let t = r.text("PATCH https://up.example:8443/files/3f2a9c: network error (see http://10.0.0.1/files/abc).");
            assert!(!t.contains("3f2a9c") && !t.contains("abc"), "{t}");
            assert!(t.contains("https://up.example:8443/…"), "{t}");
        }
    }

    fn redact() -> Redact {
        Redact {
            on: true,
            root: "/mnt/sdcard".into(),
            exts: vec![".jpg".into(), ".mp4".into()],
        }
    }

    /// The Wi-Fi network's name says where the camera was: `<name>` unless asked for.
    #[test]
    fn the_wifi_networks_name_is_left_out_unless_asked() {
        let status = serde_json::json!({"uplink": {"interface": "wlan0", "metered": true,
            "network_name": {"ssid": "Home", "bssid": "02:00:00:00:01:00"}}});
        let shown = redact().json(status.clone());
        assert_eq!(shown["uplink"]["network_name"], HIDDEN);
        assert_eq!(shown["uplink"]["interface"], "wlan0");
        let text = system(Path::new("/nonexistent"), &shown);
        assert!(
            !text.contains("Home") && !text.contains("02:00:00"),
            "{text}"
        );
        assert_eq!(redact().field("ssid", "Home"), HIDDEN);
        let named = Redact {
            on: false,
            ..redact()
        };
        assert_eq!(named.json(status)["uplink"]["network_name"]["ssid"], "Home");
        // No name: nothing to hide, and null stays null.
        let none = redact().json(serde_json::json!({"uplink": {"network_name": null}}));
        assert_eq!(none["uplink"]["network_name"], serde_json::Value::Null);
    }

    #[test]
    fn names_are_left_out_and_the_rest_kept() {
        let r = redact();
        assert_eq!(
            r.text("cannot open /mnt/sdcard/DCIM/A.JPG: denied (os error 13)"),
            "cannot open <name> denied (os error 13)"
        );
        assert_eq!(
            r.text("413 for IMG_0001.JPG of 12 bytes at http://127.0.0.1:9/files/"),
            "413 for <name> of 12 bytes at http://127.0.0.1:9/…"
        );
        assert_eq!(r.text("name=\"a b c.mp4\" n=3"), "name=\"<name>\" n=3");
        assert_eq!(r.field("path", "x"), HIDDEN);
        assert_eq!(r.field("error", "HTTP 500"), "HTTP 500");
        let v = r.json(json!({"current": {"storage_path": "DCIM/A.JPG", "id": 3},
            "space": {"failures": ["DCIM/B.JPG: busy"]}, "state": "idle"}));
        assert_eq!(
            v,
            json!({"current": {"storage_path": HIDDEN, "id": 3},
                "space": {"failures": [HIDDEN]}, "state": "idle"})
        );
        let off = Redact {
            on: false,
            ..redact()
        };
        assert_eq!(off.text("DCIM/A.JPG"), "DCIM/A.JPG");
    }

    #[test]
    fn the_client_keys_path_stays_home() {
        let c = config_text("[cloud]\nclient_key = \"/etc/k.pem\"\nendpoint = \"x\"");
        assert_eq!(c, "[cloud]\nclient_key = \"(set)\"\nendpoint = \"x\"\n");
    }
}
