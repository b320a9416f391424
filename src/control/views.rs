//! What the API shows of the store's rows: the wire types ([`crate::wire`]) filled in here, at
//! the edge, so the SQLite module carries no wire attributes and a column added to the queue
//! (an upload URL, its endpoint) never reaches the app unless this file says so.

use crate::store::{HistoryEntry, Item, ItemState, REASON_WAITING_FOR_CARD};
pub use crate::wire::{HistoryView, ItemView};

impl From<Item> for ItemView {
    fn from(it: Item) -> ItemView {
        let waiting = it.state == ItemState::Skipped
            && it.last_error.as_deref() == Some(REASON_WAITING_FOR_CARD);
        ItemView {
            id: it.id,
            storage_path: it.storage_path.as_str().to_string(),
            kind: it.kind.as_str().to_string(),
            size: it.size,
            state: it.state.as_str().to_string(),
            manual: it.manual,
            bytes_sent: it.bytes_sent,
            attempts: it.attempts,
            next_attempt_at: it.next_attempt_at,
            last_error: it.last_error,
            creations: it.creations,
            queued_at: it.queued_at,
            completed_at: it.completed_at,
            reason: waiting.then(|| REASON_WAITING_FOR_CARD.to_string()),
            card: it.card,
        }
    }
}

impl From<HistoryEntry> for HistoryView {
    fn from(h: HistoryEntry) -> HistoryView {
        HistoryView {
            storage_path: h.storage_path,
            size: h.size,
            completed_at: h.completed_at,
            freed_at: h.freed_at,
            card: h.card,
            freed_on: h.freed_on,
        }
    }
}
