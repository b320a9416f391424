//! Freeing space, as the app sees it: the user's consent and pairing that may stop it at once,
//! the wake-ups of the freeing task, and what its last pass found (for status and
//! `GET /v1/space`). The rules are `space::decide`; the task is `freeing`.
//!
//! Invariant: withdrawing consent (`free_space` off) or unpairing cancels the pass in flight
//! (its `HEAD` is dropped) and [`App::may_free`] turns false before the method returns, and
//! the task asks it again just before every deletion. An account change (pairing, unpairing)
//! holds freeing from its first step to its last ([`App::hold_freeing`]): the pass in flight
//! is cancelled, and none starts meanwhile, so no pass mixes one account's completed uploads
//! with another's token.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::App;
use crate::events::Event;
use crate::settings::FreeSpace;
use crate::space::{Card, Hold};
use crate::store::Item;

/// What one pass of the freeing task found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    /// Unix seconds.
    pub at: i64,
    pub card: Option<Card>,
    /// Why nothing was freed (empty: the pass could free).
    pub held_by: Vec<Hold>,
    /// Bytes the pass set out to free.
    pub need_bytes: u64,
    pub freed_files: u64,
    pub freed_bytes: u64,
    /// Files kept, by reason (`space::Keep::code`, or `delete_failed`).
    pub kept: BTreeMap<&'static str, u64>,
    /// Of those, files kept because their bytes cannot be verified.
    pub kept_unverified: u64,
    /// What went wrong deleting a file, one line each (the last few).
    pub failures: Vec<String>,
}

impl PassReport {
    /// The card stays low because files could not be verified: what `status` warns about.
    pub fn stuck_unverified(&self) -> bool {
        self.held_by.is_empty() && self.need_bytes > self.freed_bytes && self.kept_unverified > 0
    }
}

/// The freeing task's shared state.
#[derive(Debug, Default)]
pub(super) struct Freeing {
    /// Cancelled to stop the pass in flight.
    stop: Option<CancellationToken>,
    /// Account changes in progress: while any is, a pass stops as soon as it starts.
    held: u32,
    last: Option<PassReport>,
}

/// Freeing held while an account changes; released (and the task woken) when dropped, on every
/// path out of the change, errors included.
pub(super) struct FreeingHold<'a> {
    app: &'a App,
}

impl Drop for FreeingHold<'_> {
    fn drop(&mut self) {
        let mut f = self.app.freeing();
        f.held = f.held.saturating_sub(1);
        drop(f);
        self.app.kick_freeing();
    }
}

impl App {
    /// Resolves when the freeing task should look at the card now.
    pub fn freeing_kicked(&self) -> tokio::sync::futures::Notified<'_> {
        self.free_kick.notified()
    }

    /// Asks the freeing task to look at the card (after uploads, scans, a settings change).
    /// A no-op on cameras whose maker did not configure freeing space.
    pub fn kick_freeing(&self) {
        if self.config.media.frees_space() {
            self.free_kick.notify_one();
        }
    }

    /// A fresh stop token for one pass: cancelled by shutdown, pairing, unpairing and consent
    /// off; cancelled already while an account change is in progress.
    pub fn freeing_token(&self) -> CancellationToken {
        let token = self.shutdown.child_token();
        let mut f = self.freeing();
        if f.held > 0 {
            token.cancel();
        }
        f.stop = Some(token.clone());
        token
    }

    /// Stops the pass in flight and holds freeing until the returned guard is dropped: for
    /// the whole of an account change, whose steps (the token, the upload URLs, the history)
    /// a pass must never see half done.
    pub(super) fn hold_freeing(&self, why: &str) -> FreeingHold<'_> {
        self.freeing().held += 1;
        self.stop_freeing(why);
        FreeingHold { app: self }
    }

    /// Stops the pass in flight, if any.
    pub(super) fn stop_freeing(&self, why: &str) {
        if let Some(t) = self.freeing().stop.take() {
            if !t.is_cancelled() {
                tracing::info!(reason = why, "freeing space stops");
                t.cancel();
            }
        }
    }

    /// Whether a file may be deleted right now as far as the user and the camera are
    /// concerned: consent given, paired, card present, not recording. Asked just before each
    /// deletion.
    pub fn may_free(&self) -> bool {
        let live = self.live();
        live.settings.free_space == FreeSpace::WhenLow
            && live.account.is_some()
            && live.account_status == super::AccountStatus::Ok
            && live.media_available
            && !self.activity.recording()
            && !live.snapshot.as_ref().is_some_and(|s| s.recording)
    }

    /// Whether the camera records (the firmware's call or the conditions loop's last reading
    /// of the flag file).
    pub fn recording(&self) -> bool {
        self.activity.recording() || self.live().snapshot.as_ref().is_some_and(|s| s.recording)
    }

    /// The freeing task's last pass.
    pub fn set_last_pass(&self, report: PassReport) {
        self.freeing().last = Some(report);
    }

    /// What the last pass found (`None` before the first).
    pub fn last_pass(&self) -> Option<PassReport> {
        self.freeing().last.clone()
    }

    /// A file was deleted to free space (already recorded in the store): the event stream
    /// says so.
    pub fn freed(&self, item: &Item, freed_at: i64) {
        tracing::info!(id = item.id, path = %item.storage_path, size = item.size, "freed space: deleted a backed-up file from the card");
        self.events.send(Event::Freed {
            id: item.id,
            storage_path: item.storage_path.clone(),
            size: item.size,
            freed_at,
        });
    }

    fn freeing(&self) -> std::sync::MutexGuard<'_, Freeing> {
        self.freeing.lock().unwrap_or_else(|e| e.into_inner())
    }
}
