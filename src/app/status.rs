//! What `GET /v1/status` and `GET /v1/privacy` report: the state, what blocks uploads, the
//! queue, the uploads in flight, the way out, and what only the user can fix.
//!
//! Invariant: read-only; built from the live state and the store's counts, never a query over
//! the whole queue.

use std::collections::BTreeMap;

use serde::Serialize;

use super::account::AccountStatus;
use super::flight::{current_of, Current};
use super::{App, AppError, Live};
use crate::clock::now_unix;
use crate::conditions::Snapshot;
use crate::events::DaemonState;
use crate::gate::Block;
use crate::settings::Settings;
use crate::store::QueueCounts;
use crate::uplink::{self, UplinkStatus};
use crate::upload::metadata::UploadMetadata;
use crate::words::count;

/// Something only the user can fix, as `status.attention` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attention {
    /// A stable snake_case code the app can translate.
    pub code: &'static str,
    /// A sentence for the user, naming what to do.
    pub message: String,
}

/// Every code `status.attention` may carry (docs/INTERFACE.md and docs/openapi.yaml list the
/// same; a test compares them).
pub const ATTENTION_CODES: [&str; 9] = [
    "unauthorized",
    "subscription_inactive",
    "media_unavailable",
    "state_dir_full",
    "items_failed",
    "unreadable_files",
    "clock_not_set",
    "free_space_unverified",
    "certificate_refused",
];

/// The queue's counts and bytes, as `status.queue` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSummary {
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
    /// not backed up.
    pub waiting_for_card: u64,
}

impl From<&QueueCounts> for QueueSummary {
    fn from(c: &QueueCounts) -> QueueSummary {
        QueueSummary {
            pending: c.pending,
            uploading: c.uploading,
            done: c.done,
            failed: c.failed,
            skipped: c.skipped,
            cancelled: c.cancelled,
            bytes_remaining: c.bytes_remaining,
            bytes_done: c.bytes_done,
            waiting_for_card: 0,
        }
    }
}

/// What of the card is backed up, as `status.card` shows it: of the eligible files the
/// daemon has found (queued, in flight, failed or done), how many are done.
///
/// Kept by the store's counts (migration 4's triggers), so it costs a few rows whatever the
/// card holds. A file uploaded and since deleted from the card still counts as backed up;
/// files left out (`skipped`: deleted before upload, replaced; `cancelled`) do not count.
#[derive(Debug, Clone, Serialize)]
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
}

/// The files of one card that is out, waiting for it.
#[derive(Debug, Clone, Serialize)]
pub struct WaitingCard {
    /// The card's label if it had one when last in, else its serial.
    pub card: Option<String>,
    pub serial: Option<String>,
    pub files: u64,
    pub bytes: u64,
}

impl From<&QueueCounts> for CardSummary {
    fn from(c: &QueueCounts) -> CardSummary {
        CardSummary {
            files_backed_up: c.done,
            files_total: c.done + c.pending + c.uploading + c.failed,
            bytes_backed_up: c.bytes_done,
            bytes_total: c.bytes_done + c.bytes_open,
            serial: None,
            label: None,
            read_only: false,
            waiting_for: Vec::new(),
        }
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: DaemonState,
    pub blocked_by: Vec<Block>,
    /// Extension: what blocks a manual upload (only the network preference and heat do).
    pub manual_blocked_by: Vec<Block>,
    pub conditions: Option<Snapshot>,
    pub media_available: bool,
    pub paused: bool,
    pub queue: QueueSummary,
    pub current: Option<Current>,
    /// Extension: every upload in flight when `cloud.concurrency` > 1.
    pub uploads: Vec<Current>,
    /// What only the user can fix (empty when all is well).
    pub attention: Vec<Attention>,
    /// The interface uploads leave through, the binding in force, metered or not and why.
    pub uplink: UplinkStatus,
    /// When the last upload completed (unix seconds); `None` before the first.
    pub last_success_at: Option<i64>,
    /// When the earliest item waiting on a back-off may be tried again (unix seconds); `None`
    /// when none waits on one.
    pub next_attempt_at: Option<i64>,
    /// How much of the card is backed up.
    pub card: CardSummary,
    /// Bytes uploads sent over cellular today (the device's local day), for the data plan.
    pub cellular_bytes_today: u64,
    /// Freeing space: the user's setting, whether the maker configured it, the last pass.
    pub space: SpaceSummary,
}

/// `status.space`.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceSummary {
    pub free_space: crate::settings::FreeSpace,
    /// The maker set `media.free_space_below_percent`.
    pub configured: bool,
    /// What the freeing task's last pass found and did; `None` before the first.
    pub last_pass: Option<super::PassReport>,
}

/// `GET /v1/privacy`: exactly what leaves the device, and where to.
#[derive(Debug, Clone, Serialize)]
pub struct Privacy {
    pub fields_sent: [&'static str; 4],
    pub values: BTreeMap<&'static str, Option<String>>,
    pub endpoint: String,
    pub transport: &'static str,
    pub settings: Settings,
    pub history_days: u32,
    pub sent_only_when: &'static str,
    /// Extension: which way the bytes leave (the interface and its binding), in one sentence.
    pub leaves_through: String,
}

impl App {
    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Status, AppError> {
        let queue = self.store.counts()?;
        let last_success_at = self.store.last_success_at()?;
        let next_attempt_at = self.store.next_backoff_at(now_unix())?;
        let last_pass = self.last_pass();
        let card = self.card_summary(&queue)?;
        let mut queue_summary = QueueSummary::from(&queue);
        queue_summary.waiting_for_card = card.waiting_for.iter().map(|w| w.files).sum();
        let live = self.live();
        let uploads: Vec<Current> = live.in_flight.values().map(current_of).collect();
        let mut attention = attention_of(&live, &queue);
        if let Some(p) = last_pass.as_ref().filter(|p| p.stuck_unverified()) {
            attention.push(unverified_attention(p, &self.config.media));
        }
        Ok(Status {
            attention,
            state: state_of(&live, queue.pending + queue.uploading > 0),
            blocked_by: live.verdict.auto.clone(),
            manual_blocked_by: live.verdict.manual.clone(),
            conditions: live.snapshot.clone(),
            media_available: live.media_available,
            paused: live.paused,
            queue: queue_summary,
            card,
            cellular_bytes_today: live.cellular_bytes_today,
            space: SpaceSummary {
                free_space: live.settings.free_space,
                configured: self.config.media.frees_space(),
                last_pass,
            },
            last_success_at,
            next_attempt_at,
            current: uploads.first().cloned(),
            uploads,
            uplink: uplink::describe(
                live.snapshot.as_ref(),
                &self.client.binding(),
                self.activity.metered_override(),
            ),
        })
    }

    /// `status.card`: the counts, the card in the slot, and the cards waited for.
    fn card_summary(&self, queue: &QueueCounts) -> Result<CardSummary, AppError> {
        let mut c = CardSummary::from(queue);
        let slot = self.card();
        (c.serial, c.label, c.read_only) = (slot.serial, slot.label, slot.read_only);
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
        values.insert("user_id", live.account.as_ref().map(|a| a.user_id.clone()));
        values.insert("device_type", Some(self.config.device.device_type.clone()));
        values.insert("serial_number", Some(self.config.device.serial.clone()));
        values.insert("storage_path", None);
        Privacy {
            fields_sent: UploadMetadata::FIELDS,
            values,
            transport: if endpoint.starts_with("https://") {
                "https (TLS, certificate verified)"
            } else {
                "http to this device only (loopback)"
            },
            endpoint,
            settings: live.settings.clone(),
            history_days: self.config.state.history_days,
            leaves_through: uplink::privacy_sentence(&uplink::describe(
                live.snapshot.as_ref(),
                &self.client.binding(),
                self.activity.metered_override(),
            )),
            sent_only_when: "a file is uploaded: with auto_upload on and the conditions met, \
                             or when the app asks for a manual upload",
        }
    }
}

/// Freeing space is on and the card is low, but files stay because their upload cannot be
/// verified: the user should know the card will fill, and why.
fn unverified_attention(p: &super::PassReport, media: &crate::config::Media) -> Attention {
    let why = if p.kept.get("no_checksum").is_some_and(|n| *n > 0) {
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
        code: ATTENTION_CODES[7],
        message: format!(
            "The card is low on space and freeing space is on, but {files} {are} kept because \
             their upload cannot be verified: {why}. Free space by hand, or see \
             `cambackup space --dry-run`."
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
    let mut add = |code, message: String| out.push(Attention { code, message });
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
