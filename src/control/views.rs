//! What the API shows of the store's rows: serialisable copies decided here, at the edge, so
//! the SQLite module carries no wire attributes and a column added to the queue (an upload URL,
//! its endpoint) never reaches the app unless this file says so.

use serde::Serialize;

use crate::media::{Kind, StoragePath};
use crate::store::{HistoryEntry, Item, ItemState, REASON_WAITING_FOR_CARD};

/// One queue item, as `GET /v1/queue`, retry and cancel show it (`docs/openapi.yaml`, `Item`).
#[derive(Debug, Clone, Serialize)]
pub struct ItemView {
    pub id: i64,
    pub storage_path: StoragePath,
    pub kind: Kind,
    pub size: u64,
    pub state: &'static str,
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
    pub reason: Option<&'static str>,
    /// The serial of the card it was found on (`XXXX-XXXX` on FAT and exFAT); `null` where
    /// the card could not be read.
    pub card: Option<String>,
}

impl From<Item> for ItemView {
    fn from(it: Item) -> ItemView {
        let waiting = it.state == ItemState::Skipped
            && it.last_error.as_deref() == Some(REASON_WAITING_FOR_CARD);
        ItemView {
            id: it.id,
            storage_path: it.storage_path,
            kind: it.kind,
            size: it.size,
            state: it.state.as_str(),
            manual: it.manual,
            bytes_sent: it.bytes_sent,
            attempts: it.attempts,
            next_attempt_at: it.next_attempt_at,
            last_error: it.last_error,
            creations: it.creations,
            queued_at: it.queued_at,
            completed_at: it.completed_at,
            reason: waiting.then_some(REASON_WAITING_FOR_CARD),
            card: it.card,
        }
    }
}

/// A completed upload, as `GET /v1/history` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryView {
    pub storage_path: String,
    pub size: u64,
    pub completed_at: i64,
    /// When the file was deleted from the card to free space; null while it is there.
    pub freed_at: Option<i64>,
    /// The serial of the card it was sent from; null where the card could not be read.
    pub card: Option<String>,
}

impl From<HistoryEntry> for HistoryView {
    fn from(h: HistoryEntry) -> HistoryView {
        HistoryView {
            storage_path: h.storage_path,
            size: h.size,
            completed_at: h.completed_at,
            freed_at: h.freed_at,
            card: h.card,
        }
    }
}
