//! What the control API shows and the CLI reads: one definition of each answer's shape
//! (docs/openapi.yaml), serialized by the daemon and deserialized by `cambackup` into the same
//! types it renders.
//!
//! Invariant: plain data. Codes (a state, a block, a network's kind) are strings here: the
//! daemon fills them from its own enums at the edge (`app`, `control::views`), and an older
//! CLI shows a newer daemon's new code as it is instead of failing. Every struct takes what
//! is missing as its default and ignores fields it does not know, for the same reason. A field
//! the daemon adds to its own types reaches the API only when it is added here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The name an enum serializes to (its snake_case code), for the enums that have no `as_str`.
pub fn code<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub state: String,
    pub blocked_by: Vec<String>,
    /// Extension: what blocks a manual upload (only the network preference and heat do).
    pub manual_blocked_by: Vec<String>,
    pub conditions: Option<Conditions>,
    pub media_available: bool,
    pub paused: bool,
    pub queue: QueueCounts,
    pub current: Option<Current>,
    /// Extension: every upload in flight when `cloud.concurrency` > 1.
    pub uploads: Vec<Current>,
    /// What only the user can fix (empty when all is well).
    pub attention: Vec<Attention>,
    /// The interface uploads leave through, the binding in force, metered or not and why.
    /// Always there from this daemon; `None` only from one older than the field.
    pub uplink: Option<Uplink>,
    /// When the last upload completed (unix seconds); `None` before the first.
    pub last_success_at: Option<i64>,
    /// When the earliest item waiting on a back-off may be tried again (unix seconds); `None`
    /// when none waits on one.
    pub next_attempt_at: Option<i64>,
    /// How much of the card is backed up (always there from this daemon).
    pub card: Option<CardSummary>,
    /// Bytes uploads sent over cellular today (the device's local day), for the data plan.
    pub cellular_bytes_today: u64,
    /// Freeing space: the user's setting, whether the maker configured it, the last pass
    /// (always there from this daemon).
    pub space: Option<SpaceSummary>,
    /// The server cannot be reached through the uplink (`no_internet`, `captive_portal`);
    /// `None` when no request found so.
    pub unreachable: Option<Unreachable>,
    /// Entries of the card the last full scan considered and left out, by reason (always there
    /// from this daemon): no file is skipped silently. `GET /v1/files/{path}` says it per file.
    pub skipped: Option<Skipped>,
}

/// `status.unreachable`: what a request found of the uplink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Unreachable {
    /// `no_internet` or `captive_portal` (also in `blocked_by`).
    pub code: String,
    /// The link it was found on.
    pub interface: String,
    /// One sentence, with the request's error.
    pub message: String,
    /// When it was found (unix seconds).
    pub since: i64,
}

/// `status.skipped`: how many entries of the card in the slot the last full scan left out, by
/// reason (codes of `GET /v1/files/{path}`'s `reason`). Counts, not names: a card of 100,000
/// sidecar files costs five numbers. An excluded directory counts once (its content is not
/// walked). Zero while the card is out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Skipped {
    /// Files whose extension is not one of `media.photo_extensions` or `video_extensions`.
    pub excluded_type: u64,
    /// Files and directories matched by `media.exclude` (hidden entries, a trash folder).
    pub excluded_path: u64,
    /// Symbolic links (never followed).
    pub link: u64,
    /// Entries that are neither a regular file nor a directory (FIFOs, sockets, devices).
    pub not_regular_file: u64,
    /// Entries that could not be read (permissions, card errors).
    pub unreadable: u64,
    /// When that scan ended (unix seconds); `None` before the first scan of this card.
    pub scanned_at: Option<i64>,
}

/// Per-state counts and bytes of the queue: what the store counts, and `status.queue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueCounts {
    pub pending: u64,
    pub uploading: u64,
    pub done: u64,
    pub failed: u64,
    pub skipped: u64,
    pub cancelled: u64,
    /// Bytes still to send for pending, uploading and failed items.
    pub bytes_remaining: u64,
    /// Bytes of completed uploads.
    pub bytes_done: u64,
    /// Of the skipped items, those waiting for their card, which is out (`waiting_for_card`):
    /// not backed up. Filled in by `app` (the store does not count it).
    pub waiting_for_card: u64,
    /// Bytes of pending, uploading and failed items, whole (sent or not): what `status.card`
    /// adds to its total. The store's, not shown as such.
    #[serde(skip)]
    pub bytes_open: u64,
}

/// What of the card is backed up, as `status.card` shows it: of the eligible files the
/// daemon has found (queued, in flight, failed or done), how many are done.
///
/// Kept by the store's counts (migration 4's triggers), so it costs a few rows whatever the
/// card holds. A file uploaded and since deleted from the card still counts as backed up;
/// files left out (`skipped`: deleted before upload, replaced; `cancelled`) do not count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CardSummary {
    pub files_backed_up: u64,
    pub files_total: u64,
    pub bytes_backed_up: u64,
    pub bytes_total: u64,
    /// The card in the slot: its volume serial (`XXXX-XXXX` on FAT and exFAT) and label, where
    /// they can be read, and whether it is read-only (write-protected).
    pub serial: Option<String>,
    pub label: Option<String>,
    pub read_only: bool,
    /// Files of cards that are out, waiting for them (`waiting_for_card`); counted in the
    /// totals above as not backed up.
    pub waiting_for: Vec<WaitingCard>,
    /// The card in the slot may be formatted without losing a photo or video: it is there, a
    /// full scan of it has ended, every eligible file found on it is backed up (done, or
    /// freed), and nothing is pending, uploading, failed, still being written or unreadable.
    pub safe_to_format: bool,
    /// What is still to go before it is (zero when it is safe).
    pub to_go: ToGo,
}

/// `status.card.to_go`: what keeps the card from being safe to format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToGo {
    /// Files not backed up yet: pending, uploading or failed, and those still being written
    /// (not settled), plus entries that could not be read.
    pub files: u64,
    /// Bytes still to send of the pending, uploading and failed files (a file still being
    /// written adds its bytes once it settles).
    pub bytes: u64,
}

impl From<&QueueCounts> for CardSummary {
    fn from(c: &QueueCounts) -> CardSummary {
        CardSummary {
            files_backed_up: c.done,
            files_total: c.done + c.pending + c.uploading + c.failed,
            bytes_backed_up: c.bytes_done,
            bytes_total: c.bytes_done + c.bytes_open,
            ..CardSummary::default()
        }
    }
}

/// The files of one card that is out, waiting for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WaitingCard {
    /// The card's label if it had one when last in, else its serial.
    pub card: Option<String>,
    pub serial: Option<String>,
    pub files: u64,
    pub bytes: u64,
}

/// Something only the user can fix, as `status.attention` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attention {
    /// A stable snake_case code the app can translate.
    pub code: String,
    /// A sentence for the user, naming what to do.
    pub message: String,
}

/// One reading of the device, as `status.conditions` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Conditions {
    /// On external power (charging or full); `None` when the device does not say.
    pub charging: Option<bool>,
    /// The battery's charge; `None` without a battery (mains only) or when it cannot be read.
    pub battery_percent: Option<u8>,
    /// The network an unbound connection would take (`wifi`, `ethernet`, `cellular`,
    /// `offline`).
    pub network: String,
    /// The interface of that route; `None` when offline.
    pub interface: Option<String>,
    /// Extension: every interface with a default route that is up, in the kernel's order.
    pub links: Vec<Link>,
    /// The hottest thermal zone; `None` without thermal zones.
    pub temp_c: Option<f64>,
    /// The 1-minute load average; `None` when it cannot be read.
    pub load: Option<f64>,
    pub recording: bool,
    /// Seconds since the last write under the media root (`None`: none seen since start).
    pub secs_since_media_write: Option<u64>,
}

/// One way out, as `status.conditions.links` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Link {
    pub interface: String,
    pub network: String,
    /// The families whose default route goes out of it (`ipv4`, `ipv6`), IPv4 first.
    pub families: Vec<String>,
    pub metered: Metered,
}

/// Whether a link is metered, and which sign says so.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Metered {
    pub metered: bool,
    pub because: Option<String>,
}

/// `status.uplink`: the way out uploads take.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Uplink {
    /// The interface every upload connection is bound to; `None`: no upload connection is made.
    pub interface: Option<String>,
    /// `device` (SO_BINDTODEVICE) or `address`; `None` when unbound.
    pub binding: Option<String>,
    /// The kind of network of that interface (or of the link a block is about).
    pub network: Option<String>,
    pub families: Vec<String>,
    pub metered: bool,
    pub metered_because: Option<String>,
    /// The app's `PUT /v1/network` answer in force on that network (`None`: the daemon
    /// decides).
    pub metered_override: Option<bool>,
    /// The Wi-Fi network of that interface, when wpa_supplicant tells; `None` otherwise.
    pub network_name: Option<NetworkName>,
}

/// A Wi-Fi network's name (`status.uplink.network_name`, the `PUT /v1/network` answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkName {
    pub ssid: String,
    /// The access point's address, `aa:bb:cc:dd:ee:ff`.
    pub bssid: String,
}

/// An upload in flight, as `status.current` and `status.uploads` show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Current {
    pub id: i64,
    pub storage_path: String,
    pub bytes_sent: u64,
    pub bytes_total: u64,
    pub rate_bps: u64,
    pub eta_secs: Option<u64>,
}

/// `status.space`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SpaceSummary {
    /// The user's `free_space` setting.
    pub free_space: String,
    /// The maker set `media.free_space_below_percent`.
    pub configured: bool,
    /// What the freeing task's last pass found and did; `None` before the first.
    pub last_pass: Option<Pass>,
}

/// What one pass of the freeing task found and did (`status.space.last_pass`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Pass {
    /// Unix seconds.
    pub at: i64,
    pub card: Option<CardSpace>,
    /// Why nothing was freed (empty: the pass could free).
    pub held_by: Vec<String>,
    /// Bytes the pass set out to free.
    pub need_bytes: u64,
    pub freed_files: u64,
    pub freed_bytes: u64,
    /// Files kept, by reason.
    pub kept: BTreeMap<String, u64>,
    /// Of those, files kept because their bytes cannot be verified.
    pub kept_unverified: u64,
    /// What went wrong deleting a file, one line each (the last few).
    pub failures: Vec<String>,
}

/// The card's space, as statvfs gives it to an unprivileged writer.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CardSpace {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// One queue item, as `GET /v1/queue`, retry and cancel show it (`docs/openapi.yaml`, `Item`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ItemView {
    pub id: i64,
    pub storage_path: String,
    pub kind: String,
    pub size: u64,
    pub state: String,
    pub manual: bool,
    pub bytes_sent: u64,
    pub attempts: u32,
    /// Unix seconds before which no retry is made (0: now).
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    /// How many tus creations this item has made (1 in the normal case).
    pub creations: u32,
    pub queued_at: i64,
    pub completed_at: Option<i64>,
    /// Why it is not being sent, as a code: `waiting_for_card` (skipped while its card is
    /// out; sent when it is back); `null` otherwise.
    pub reason: Option<String>,
    /// The serial of the card it was found on (`XXXX-XXXX` on FAT and exFAT); `null` where
    /// the card could not be read.
    pub card: Option<String>,
}

/// `GET /v1/files/{storage_path}`: one file's state and why, as `cambackup why` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileView {
    /// The file's storage path (the card's spelling of it where the card has it).
    pub storage_path: String,
    /// How the path was given: `storage_path` (relative to `media.root`) or `card_path` (an
    /// absolute path on the device).
    pub given_as: String,
    /// The queue item's state (`pending`, `uploading`, `done`, `failed`, `skipped`,
    /// `cancelled`), or `not_queued` for a file the daemon has no item for.
    pub state: String,
    /// Why, as one code and one sentence (docs/INTERFACE.md lists the codes).
    pub reason: Reason,
    /// The queue item (`None`: not queued).
    pub id: Option<i64>,
    /// `photo` or `video`, for a media file.
    pub kind: Option<String>,
    /// The size of the item's version, else of the file on the card.
    pub size: Option<u64>,
    /// The file is on the card now (false while the card is out).
    pub on_card: bool,
    /// Failed attempts so far (0 for a file that went up at the first try).
    pub attempts: u32,
    pub bytes_sent: u64,
    pub last_error: Option<String>,
    /// When a pending item is tried again after a failure (unix seconds); `None`: no wait.
    pub next_attempt_at: Option<i64>,
    pub queued_at: Option<i64>,
    /// When its upload completed.
    pub completed_at: Option<i64>,
    /// When cambackup deleted it from the card to free space.
    pub freed_at: Option<i64>,
    /// The serial of the card it was found on, and that card's label where known.
    pub card: Option<String>,
    pub card_label: Option<String>,
}

/// A reason: a stable snake_case code the app can translate, and a sentence for the user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reason {
    pub code: String,
    pub message: String,
}

/// A completed upload, as `GET /v1/history` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryView {
    pub storage_path: String,
    pub size: u64,
    pub completed_at: i64,
    /// When the file was deleted from the card to free space; null while it is there.
    pub freed_at: Option<i64>,
    /// The serial of the card it was sent from; null where the card could not be read.
    pub card: Option<String>,
    /// What freeing it rested on (`receipt`, `checksum`, `length`: the `free_space_verify`
    /// mode it was verified under); null while it is on the card.
    pub freed_on: Option<String>,
}

/// `GET /v1/privacy`: exactly what leaves the device, and where to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Privacy {
    pub fields_sent: Vec<String>,
    pub values: BTreeMap<String, Option<String>>,
    pub endpoint: String,
    pub transport: String,
    /// The user's settings, by name, in the order they are declared (a newer daemon's
    /// setting is read too).
    pub settings: Ordered,
    pub history_days: u32,
    pub sent_only_when: String,
    /// Extension: which way the bytes leave (the interface and its binding), in one sentence.
    pub leaves_through: Option<String>,
}

/// A JSON object read and written in its order (a `BTreeMap` would sort it): named values of
/// which the daemon decides the order, such as the settings as their table declares them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ordered(pub Vec<(String, serde_json::Value)>);

impl Serialize for Ordered {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's answer reads back into the same type and says the same thing; a newer
    /// daemon's field and code are read (the code as it is) by an older client.
    #[test]
    fn a_status_reads_back_as_written_and_a_newer_one_is_read_too() {
        let s = Status {
            state: "uploading".into(),
            blocked_by: vec!["recording".into()],
            queue: QueueCounts {
                pending: 2,
                bytes_open: 7,
                ..QueueCounts::default()
            },
            attention: vec![Attention {
                code: "items_failed".into(),
                message: "1 file".into(),
            }],
            card: Some(CardSummary::default()),
            ..Status::default()
        };
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["queue"].get("bytes_open").is_none(), "{json}");
        let back: Status = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        let newer: Status = serde_json::from_value(serde_json::json!({
            "state": "a_new_state", "blocked_by": ["a_new_block"], "a_new_field": {"x": 1},
            "queue": {"pending": 1, "a_new_count": 3}
        }))
        .unwrap();
        assert_eq!(newer.state, "a_new_state");
        assert_eq!(newer.blocked_by, ["a_new_block"]);
        assert_eq!(newer.queue.pending, 1);
        assert!(
            newer.card.is_none(),
            "an older daemon's missing part stays missing"
        );
    }

    #[test]
    fn an_ordered_object_keeps_its_order_both_ways() {
        let text = r#"{"b":1,"a":[true],"c":"x"}"#;
        let o: Ordered = serde_json::from_str(text).unwrap();
        let keys: Vec<&str> = o.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "c"]);
        assert_eq!(serde_json::to_string(&o).unwrap(), text);
    }
}
