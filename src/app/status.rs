//! What `GET /v1/status` and `GET /v1/privacy` report: the state, what blocks uploads, the
//! queue, the uploads in flight, the way out, and what only the user can fix.
//!
//! Invariant: read-only; built from the live state and the store's counts, never a query over
//! the whole queue.

use std::collections::BTreeMap;

use super::account::AccountStatus;
use super::flight::current_of;
use super::{App, AppError, Live, PassReport};
use crate::clock::now_unix;
use crate::conditions::Snapshot;
use crate::events::{DaemonState, Event};
use crate::uplink::{self, UplinkStatus};
use crate::upload::metadata::UploadMetadata;
use crate::wire::{
    code, Attention, CardSpace, CardSummary, Conditions, Current, Link, Metered, NetworkName,
    Ordered, Pass, Privacy, QueueCounts, SpaceSummary, Status, ToGo, Uplink, WaitingCard,
};
use crate::words::count;

/// Every code `status.attention` may carry (docs/INTERFACE.md and docs/openapi.yaml list the
/// same; a test compares them).
pub const ATTENTION_CODES: [&str; 10] = [
    "unauthorized",
    "subscription_inactive",
    "media_unavailable",
    "state_dir_full",
    "items_failed",
    "unreadable_files",
    "clock_not_set",
    "free_space_unverified",
    "certificate_refused",
    "server_digest_mismatch",
];

/// `status.conditions`: the reading as the API shows it.
fn conditions_of(s: &Snapshot) -> Conditions {
    Conditions {
        charging: s.charging,
        battery_percent: s.battery_percent,
        network: code(&s.network),
        interface: s.interface.clone(),
        links: s
            .links
            .iter()
            .map(|l| Link {
                interface: l.interface.clone(),
                network: code(&l.network),
                families: l.families.iter().map(code).collect(),
                metered: Metered {
                    metered: l.metered.metered,
                    because: l.metered.because.as_ref().map(code),
                },
            })
            .collect(),
        temp_c: s.temp_c,
        load: s.load,
        recording: s.recording,
        secs_since_media_write: s.secs_since_media_write,
    }
}

/// `status.uplink`: the way out as the API shows it.
fn uplink_of(u: &UplinkStatus) -> Uplink {
    Uplink {
        interface: u.interface.clone(),
        binding: u.binding.as_ref().map(code),
        network: u.network.as_ref().map(code),
        families: u.families.iter().map(code).collect(),
        metered: u.metered,
        metered_because: u.metered_because.as_ref().map(code),
        metered_override: u.metered_override,
        network_name: u.network_name.as_ref().map(|n| NetworkName {
            ssid: n.ssid.clone(),
            bssid: n.bssid.clone(),
        }),
    }
}

/// `status.space.last_pass`: the freeing task's last pass as the API shows it.
fn pass_of(p: &PassReport) -> Pass {
    Pass {
        at: p.at,
        card: p.card.map(|c| CardSpace {
            total_bytes: c.total_bytes,
            free_bytes: c.free_bytes,
        }),
        held_by: p.held_by.iter().map(code).collect(),
        need_bytes: p.need_bytes,
        freed_files: p.freed_files,
        freed_bytes: p.freed_bytes,
        kept: p.kept.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
        kept_unverified: p.kept_unverified,
        failures: p.failures.clone(),
    }
}

impl App {
    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Status, AppError> {
        let queue = self.store.counts()?;
        let last_success_at = self.store.last_success_at()?;
        let next_attempt_at = self.store.next_backoff_at(now_unix())?;
        let last_pass = self.last_pass();
        let card = self.card_summary(&queue)?;
        let mut queue_summary = queue.clone();
        queue_summary.waiting_for_card = card.waiting_for.iter().map(|w| w.files).sum();
        let live = self.live();
        let uploads: Vec<Current> = live.in_flight.values().map(current_of).collect();
        let mut attention = attention_of(&live, &queue);
        if let Some(p) = last_pass.as_ref().filter(|p| p.stuck_unverified()) {
            attention.push(unverified_attention(p, &self.config.media));
        }
        let mismatches: Vec<String> = self
            .store
            .digest_mismatches()?
            .into_iter()
            .map(|(_, path)| path)
            .collect();
        if !mismatches.is_empty() {
            attention.push(mismatch_attention(&mismatches));
        }
        let name = |b: &crate::gate::Block| b.as_str().to_string();
        Ok(Status {
            attention,
            state: state_of(&live, queue.pending + queue.uploading > 0)
                .as_str()
                .to_string(),
            blocked_by: live.verdict.auto.iter().map(name).collect(),
            manual_blocked_by: live.verdict.manual.iter().map(name).collect(),
            conditions: live.snapshot.as_ref().map(conditions_of),
            media_available: live.media_available,
            paused: live.paused,
            queue: queue_summary,
            card: Some(card),
            cellular_bytes_today: live.cellular_bytes_today,
            skipped: Some(live.skipped.clone()),
            space: Some(SpaceSummary {
                free_space: live.settings.free_space.as_str().to_string(),
                configured: self.config.media.frees_space(),
                last_pass: last_pass.as_ref().map(pass_of),
            }),
            last_success_at,
            next_attempt_at,
            current: uploads.first().cloned(),
            uploads,
            uplink: Some(uplink_of(&uplink::describe(
                live.snapshot.as_ref(),
                &self.client.binding(),
                &self.activity.metered_answers(),
            ))),
            unreachable: App::unreachable_view(&live),
        })
    }

    /// The `state` event an event stream starts with: the state and blocks `status` shows.
    pub fn state_event(&self) -> Result<Event, AppError> {
        let queue = self.store.counts()?;
        let live = self.live();
        Ok(Event::State {
            state: state_of(&live, queue.pending + queue.uploading > 0),
            blocked_by: live.verdict.auto.clone(),
        })
    }

    /// `status.card`: the counts, the card in the slot, whether it is safe to format, and the
    /// cards waited for.
    fn card_summary(&self, queue: &QueueCounts) -> Result<CardSummary, AppError> {
        let mut c = CardSummary::from(queue);
        let slot = self.card();
        (c.serial, c.label, c.read_only) = (slot.serial, slot.label, slot.read_only);
        {
            let live = self.live();
            (c.safe_to_format, c.to_go) = safe_to_format(
                queue,
                live.settling,
                live.unreadable_on_card,
                live.media_available && live.card_scanned && live.card_watched,
            );
        }
        for (serial, files, bytes) in self.store.waiting_for_card()? {
            c.files_total += files;
            c.bytes_total += bytes;
            c.waiting_for.push(WaitingCard {
                card: self.card_name(serial.as_deref()),
                serial,
                files,
                bytes,
            });
        }
        Ok(c)
    }

    /// `GET /v1/privacy`.
    pub fn privacy(&self) -> Privacy {
        let live = self.live();
        let region = live.account.as_ref().and_then(|a| a.region.clone());
        let endpoint = self
            .config
            .cloud
            .endpoint_for(region.as_deref())
            .to_string();
        let mut values = BTreeMap::new();
        let mut value = |k: &str, v: Option<String>| values.insert(k.to_string(), v);
        value("user_id", live.account.as_ref().map(|a| a.user_id.clone()));
        value("device_type", Some(self.config.device.device_type.clone()));
        value("serial_number", Some(self.config.device.serial.clone()));
        value("storage_path", None);
        let mut all = serde_json::to_value(&live.settings).expect("plain data serializes");
        let settings = Ordered(
            crate::settings::Settings::NAMES
                .iter()
                .map(|n| (n.to_string(), all[*n].take()))
                .collect(),
        );
        Privacy {
            fields_sent: UploadMetadata::FIELDS.map(str::to_string).to_vec(),
            values,
            transport: if endpoint.starts_with("https://") {
                "https (TLS, certificate verified)"
            } else {
                "http to this device only (loopback)"
            }
            .to_string(),
            endpoint,
            settings,
            history_days: self.config.state.history_days,
            leaves_through: Some(uplink::privacy_sentence(&uplink::describe(
                live.snapshot.as_ref(),
                &self.client.binding(),
                &self.activity.metered_answers(),
            ))),
            sent_only_when: "a file is uploaded: with auto_upload on and the conditions met, \
                             or when the app asks for a manual upload"
                .to_string(),
        }
    }
}

/// `status.card.safe_to_format` and `to_go`: safe only when the card in the slot has been
/// scanned (`scanned`, which implies it is there) and nothing of it is still to go: no item
/// pending, uploading or failed, no file still being written, no entry unreadable. Items of
/// cards that are out (`waiting_for_card`) are on those cards, not this one.
fn safe_to_format(
    queue: &QueueCounts,
    settling: u64,
    unreadable: u64,
    scanned: bool,
) -> (bool, ToGo) {
    let to_go = ToGo {
        files: queue.pending + queue.uploading + queue.failed + settling + unreadable,
        bytes: queue.bytes_remaining,
    };
    (scanned && to_go.files == 0, to_go)
}

/// Freeing space is on and the card is low, but files stay because their upload cannot be
/// verified: the user should know the card will fill, and why.
fn unverified_attention(p: &super::PassReport, media: &crate::config::Media) -> Attention {
    let why = if p.kept.get("no_receipt").is_some_and(|n| *n > 0) {
        "the server gives no receipt (Repr-Digest) for them and this camera requires one \
         (media.free_space_verify = \"receipt\")"
            .to_string()
    } else if p.kept.get("no_checksum").is_some_and(|n| *n > 0) {
        format!(
            "the server does not confirm checksums and this camera requires them \
             (media.free_space_verify = \"{}\")",
            media.free_space_verify.as_str()
        )
    } else {
        "no complete record of the bytes sent exists for them (uploaded before freeing space \
         was set up, or interrupted by a restart)"
            .to_string()
    };
    let files = count(p.kept_unverified, "backed-up file", "backed-up files");
    let are = if p.kept_unverified == 1 { "is" } else { "are" };
    Attention {
        code: ATTENTION_CODES[7].to_string(),
        message: format!(
            "The card is low on space and freeing space is on, but {files} {are} kept because \
             their upload cannot be verified: {why}. Free space by hand, or see \
             `cambackup space --dry-run`."
        ),
    }
}

/// The server's receipt for some files differed from the camera's digest: the server lost or
/// changed bytes it had acknowledged. Only the maker can find out why; the files stay on the
/// card. Shown until a later receipt for each of them matches.
fn mismatch_attention(paths: &[String]) -> Attention {
    let files = count(paths.len() as u64, "file", "files");
    let shown: Vec<&str> = paths.iter().take(3).map(String::as_str).collect();
    let more = if paths.len() > 3 { ", ..." } else { "" };
    Attention {
        code: ATTENTION_CODES[9].to_string(),
        message: format!(
            "The server's receipt for {files} ({}{more}) does not match the bytes sent: the \
             server lost or changed them. They are kept on the card and sent again once; \
             tell the camera maker's support.",
            shown.join(", ")
        ),
    }
}

/// The daemon's state; `waiting` is whether any item is pending.
pub(super) fn state_of(live: &Live, waiting: bool) -> DaemonState {
    if live.account.is_none() {
        return DaemonState::Unpaired;
    }
    match live.account_status {
        AccountStatus::Unauthorized(_) => return DaemonState::Unauthorized,
        AccountStatus::SubscriptionInactive(_) => return DaemonState::SubscriptionInactive,
        AccountStatus::Ok => {}
    }
    if live.paused {
        DaemonState::Paused
    } else if !live.media_available {
        DaemonState::MediaUnavailable
    } else if !live.in_flight.is_empty() {
        DaemonState::Uploading
    } else if waiting {
        DaemonState::Waiting
    } else {
        DaemonState::Idle
    }
}

/// What only the user can fix, from the live state and the queue counts.
pub(super) fn attention_of(live: &Live, queue: &QueueCounts) -> Vec<Attention> {
    let mut out = Vec::new();
    let mut add = |code: &str, message: String| {
        out.push(Attention {
            code: code.to_string(),
            message,
        })
    };
    match &live.account_status {
        AccountStatus::Unauthorized(m) => add(
            ATTENTION_CODES[0],
            format!(
                "The server refused the account's token ({m}): pair the camera again in the app."
            ),
        ),
        AccountStatus::SubscriptionInactive(m) => add(
            ATTENTION_CODES[1],
            format!("The cloud subscription is inactive ({m}): renew it, then pair again."),
        ),
        AccountStatus::Ok => {}
    }
    if let Some(why) = &live.certificate_refused {
        add(
            ATTENTION_CODES[8],
            format!(
                "The cloud refused this camera's device certificate ({why}): uploads wait and \
                 are tried again; contact the maker's support (the certificate may be revoked \
                 or expired)."
            ),
        );
    }
    if !live.clock_set {
        add(
            ATTENTION_CODES[6],
            format!(
                "The camera's clock is not set (it reads {}): connect it to the app or a network \
                 with time service; uploads start once the clock is set.",
                crate::clock::now_unix()
            ),
        );
    }
    if !live.media_available {
        add(
            ATTENTION_CODES[2],
            "The memory card is missing or unreadable: insert it.".into(),
        );
    }
    if let Some(e) = &live.state_dir_full {
        add(
            ATTENTION_CODES[3],
            format!("The camera's storage for the upload queue is full ({e}): free some space; queued uploads continue by themselves."),
        );
    } else if let Some(e) = &live.choices_unsaved {
        add(
            ATTENTION_CODES[3],
            format!("The camera's storage is full ({e}): your last change is in force but not saved yet; free some space and it is saved by itself."),
        );
    } else if live.unpair_unfinished {
        add(
            ATTENTION_CODES[3],
            "The camera's storage is full: the device is unpaired, but the old account's history is erased only once there is room; free some space.".into(),
        );
    }
    if queue.failed > 0 {
        add(
            ATTENTION_CODES[4],
            format!(
                "{} could not be uploaded and {} for you: see the queue's failed items and \
                 retry them.",
                count(queue.failed, "file", "files"),
                if queue.failed == 1 { "waits" } else { "wait" }
            ),
        );
    }
    // Only while the card is there: a card pulled mid-scan is `media_unavailable` alone.
    if live.unreadable_on_card > 0 && live.media_available {
        add(
            ATTENTION_CODES[5],
            format!(
                "{} on the card could not be read (permissions or card errors): {} not backed \
                 up; check the card.",
                count(live.unreadable_on_card, "entry", "entries"),
                if live.unreadable_on_card == 1 {
                    "it is"
                } else {
                    "they are"
                }
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::metered::{Metered as LinkMetered, MeteredBy};
    use crate::conditions::{Family, Link as LinkRead, Network};
    use crate::upload::bind::BindMode;

    /// Safe to format only once scanned with nothing to go; each thing to go holds it.
    #[test]
    fn safe_to_format_only_when_nothing_is_to_go() {
        let q = |pending, uploading, failed| QueueCounts {
            pending,
            uploading,
            failed,
            done: 5,
            bytes_remaining: 10 * (pending + uploading + failed),
            ..QueueCounts::default()
        };
        let rows = [
            // (queue, settling, unreadable, scanned) -> (safe, files, bytes)
            ((q(0, 0, 0), 0, 0, true), (true, 0, 0)),
            ((q(0, 0, 0), 0, 0, false), (false, 0, 0)),
            ((q(1, 0, 0), 0, 0, true), (false, 1, 10)),
            ((q(0, 1, 0), 0, 0, true), (false, 1, 10)),
            ((q(0, 0, 2), 0, 0, true), (false, 2, 20)),
            ((q(0, 0, 0), 3, 0, true), (false, 3, 0)),
            ((q(0, 0, 0), 0, 1, true), (false, 1, 0)),
        ];
        for ((queue, settling, unreadable, scanned), (safe, files, bytes)) in rows {
            let (s, to_go) = safe_to_format(&queue, settling, unreadable, scanned);
            assert_eq!(
                (s, to_go.files, to_go.bytes),
                (safe, files, bytes),
                "{queue:?} settling {settling} unreadable {unreadable} scanned {scanned}"
            );
        }
    }

    /// The API's parts say what the daemon's own types serialize to, field for field: the
    /// wire types changed where the JSON is defined, not what it says.
    #[test]
    fn the_wire_says_what_the_daemons_types_say() {
        let snap = Snapshot {
            charging: Some(true),
            battery_percent: Some(80),
            network: Network::Wifi,
            interface: Some("wlan0".into()),
            links: vec![LinkRead {
                interface: "wlan0".into(),
                network: Network::Wifi,
                families: vec![Family::Ipv4, Family::Ipv6],
                gateway_v4: None,
                metered: LinkMetered {
                    metered: true,
                    because: Some(MeteredBy::IphoneGateway),
                },
                wifi: None,
            }],
            temp_c: Some(41.5),
            load: Some(0.25),
            recording: true,
            secs_since_media_write: Some(9),
            local_minute: Some(61),
            cellular_bytes_today: 5,
        };
        let same = |daemon: serde_json::Value, wire: serde_json::Value| {
            assert_eq!(daemon, wire);
        };
        same(
            serde_json::to_value(&snap).unwrap(),
            serde_json::to_value(conditions_of(&snap)).unwrap(),
        );
        let up = UplinkStatus {
            interface: Some("wlan0".into()),
            binding: Some(BindMode::Device),
            network: Some(Network::Wifi),
            families: vec![Family::Ipv4],
            metered: true,
            metered_because: Some(MeteredBy::App),
            metered_override: Some(true),
            network_name: Some(crate::uplink::NetworkName {
                ssid: "Home".into(),
                bssid: "02:00:00:00:01:00".into(),
            }),
        };
        same(
            serde_json::to_value(&up).unwrap(),
            serde_json::to_value(uplink_of(&up)).unwrap(),
        );
        let mut pass = PassReport {
            at: 1_700_000_000,
            card: Some(crate::space::Card {
                total_bytes: 100,
                free_bytes: 3,
            }),
            held_by: vec![crate::space::Hold::Recording],
            need_bytes: 10,
            freed_files: 1,
            freed_bytes: 4,
            kept_unverified: 2,
            failures: vec!["x".into()],
            ..PassReport::default()
        };
        pass.kept.insert("no_checksum", 2);
        same(
            serde_json::to_value(&pass).unwrap(),
            serde_json::to_value(pass_of(&pass)).unwrap(),
        );
    }
}
