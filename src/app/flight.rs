//! The uploads in flight: their stop tokens, progress and rate, and the events about them.
//!
//! Invariant: an item is in flight from `begin` to `end`, and while it is, its stop token is
//! what `reevaluate` cancels when the item may no longer run.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::App;
use crate::events::Event;
use crate::store::Item;
use crate::wire::Current;

#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) item: Item,
    pub(super) stop: CancellationToken,
    pub(super) bytes_sent: u64,
    pub(super) started: Instant,
    pub(super) started_bytes: u64,
    pub(super) rate_bps: u64,
    pub(super) last_event: Option<Instant>,
}

/// Progress events at most this often per upload (the app's UI needs no more).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl App {
    /// Registers an upload that starts; returns its stop token.
    pub fn begin(&self, item: &Item) -> CancellationToken {
        let stop = self.shutdown.child_token();
        self.live().in_flight.insert(
            item.id,
            InFlight {
                item: item.clone(),
                stop: stop.clone(),
                bytes_sent: item.bytes_sent,
                started: Instant::now(),
                started_bytes: item.bytes_sent,
                rate_bps: 0,
                last_event: None,
            },
        );
        self.item_event(item, None);
        self.reevaluate();
        // The conditions loop polls slowly while idle; an upload in flight needs it every
        // second, so that losing a condition stops the upload within 2 s.
        self.recheck.notify_one();
        stop
    }

    /// Progress of an upload in flight (bytes the server acknowledged).
    pub fn progress(&self, id: i64, bytes_sent: u64) {
        let event = {
            let mut live = self.live();
            let Some(f) = live.in_flight.get_mut(&id) else {
                return;
            };
            f.bytes_sent = bytes_sent;
            let secs = f.started.elapsed().as_secs_f64();
            // A rate over less than 100 ms says little; before that the UI shows none.
            if secs > 0.1 {
                f.rate_bps = (bytes_sent.saturating_sub(f.started_bytes) as f64 / secs) as u64;
            }
            let due = f.last_event.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
                || bytes_sent == f.item.size;
            if !due {
                return;
            }
            f.last_event = Some(Instant::now());
            Event::Progress {
                id,
                storage_path: f.item.storage_path.clone(),
                bytes_sent,
                bytes_total: f.item.size,
                rate_bps: f.rate_bps,
            }
        };
        self.events.send(event);
    }

    /// An upload ended (whatever the outcome, already recorded in the store).
    pub fn end(&self, id: i64) {
        self.live().in_flight.remove(&id);
        if let Ok(Some(item)) = self.store.item(id) {
            self.item_event(&item, item.last_error.clone());
        }
        self.reevaluate();
        self.kick_freeing();
    }

    /// Sends an `item` event.
    pub fn item_event(&self, item: &Item, error: Option<String>) {
        self.events.send(Event::Item {
            id: item.id,
            storage_path: item.storage_path.clone(),
            state: item.state.as_str(),
            error,
        });
    }

    /// Stops every upload in flight (they resume later by HEAD): the conditions loop calls it
    /// when the interface uploads may use changes, since open connections keep their binding.
    pub fn stop_uploads(&self, why: &str) {
        for f in self.live().in_flight.values() {
            if !f.stop.is_cancelled() {
                tracing::info!(id = f.item.id, why, "stopping an upload");
                f.stop.cancel();
            }
        }
    }

    /// Ids of the uploads in flight.
    pub fn in_flight(&self) -> Vec<i64> {
        self.live().in_flight.keys().copied().collect()
    }
}

/// The upload in flight, as `status.current` shows it.
pub(super) fn current_of(f: &InFlight) -> Current {
    let left = f.item.size.saturating_sub(f.bytes_sent);
    Current {
        id: f.item.id,
        storage_path: f.item.storage_path.as_str().to_string(),
        bytes_sent: f.bytes_sent,
        bytes_total: f.item.size,
        rate_bps: f.rate_bps,
        eta_secs: (f.rate_bps > 0).then(|| left.div_ceil(f.rate_bps)),
    }
}
