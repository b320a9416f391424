//! Freeing space, as the app sees it: the user's consent and pairing that may stop it at once,
//! the wake-ups of the freeing task, and what its last pass found (for status and
//! `GET /v1/space`). The rules are `space::decide`; the task is `freeing`.
//!
//! Invariant: withdrawing consent (`free_space` off) or unpairing cancels the pass in flight
//! (its `HEAD` is dropped) before the method returns, and the task asks the rules
//! (`space::last_look`) again just before every deletion. An account change (pairing, unpairing)
//! holds freeing from its first step to its last ([`App::hold_freeing`]): the pass in flight
//! is cancelled, and none starts meanwhile, so no pass mixes one account's completed uploads
//! with another's token.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::App;
use crate::events::Event;
use crate::secret::Secret;
use crate::space::{Card, Hold};
use crate::store::{FreeCandidate, Item, SentChunk, StoreError};
use crate::upload::tus::{Receipt, TusError, UploadState};

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

    /// A page of the backed-up files freeing may consider, oldest first, with what was sent
    /// of them ([`crate::store::Store::free_candidates_after`]).
    pub fn free_candidates_after(
        &self,
        after: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<Vec<FreeCandidate>, StoreError> {
        self.store.free_candidates_after(after, limit)
    }

    /// The digests of the chunks sent of item `id`, for the read-back.
    pub fn sent_chunks(&self, id: i64) -> Result<Vec<SentChunk>, StoreError> {
        self.store.sent_chunks(id)
    }

    /// The files freed so far, newest first, with when (`GET /v1/space`).
    pub fn freed_files(&self, limit: u32) -> Result<Vec<(Item, i64)>, StoreError> {
        self.store.freed(limit)
    }

    /// `HEAD` on a completed upload with `token`, to confirm the server holds it.
    pub async fn head_upload(&self, url: &str, token: &Secret) -> Result<UploadState, TusError> {
        self.client.head(url, token).await
    }

    /// Notes durably that item `id`'s file (inode `ino`) is about to be deleted, so that a
    /// crash between the deletion and its record is settled at the next pass.
    pub fn note_freeing(&self, id: i64, ino: u64) -> Result<(), StoreError> {
        self.store.note_freeing(id, ino)
    }

    /// Drops the note of a deletion that did not happen.
    pub fn forget_freeing(&self, id: i64) -> Result<(), StoreError> {
        self.store.forget_freeing(id)
    }

    /// The deletions noted and not yet settled: (item, inode).
    pub fn freeing_notes(&self) -> Result<Vec<(i64, u64)>, StoreError> {
        self.store.freeing_notes()
    }

    /// The item `id`, if the queue has it.
    pub fn item_if_any(&self, id: i64) -> Result<Option<Item>, StoreError> {
        self.store.item(id)
    }

    /// A file was deleted to free space: recorded (`freed_at`, the history with `freed_on`:
    /// the `free_space_verify` mode its upload was verified under), then announced on the
    /// event stream. Returns when it was recorded (unix seconds).
    pub fn record_freed(&self, item: &Item) -> Result<i64, StoreError> {
        let on = self.config.media.free_space_verify.as_str();
        let freed_at = self.store.mark_freed(item.id, on)?;
        tracing::info!(id = item.id, path = %item.storage_path, size = item.size, "freed space: deleted a backed-up file from the card");
        self.events.send(Event::Freed {
            id: item.id,
            storage_path: item.storage_path.clone(),
            size: item.size,
            freed_at,
        });
        Ok(freed_at)
    }

    /// The server lost a completed upload (`HEAD`: 404/410): the file is queued again, once,
    /// and the scheduler woken. True when it was queued again; false when this version was
    /// already sent again once (kept on the card, not sent a third time).
    pub fn lost_upload(&self, item: &Item) -> Result<bool, StoreError> {
        let (id, path) = (item.id, &item.storage_path);
        let queued = self.store.requeue_lost(id);
        match &queued {
            Ok(true) => {
                tracing::warn!(id, path = %path, "the server lost a completed upload: the file is queued again");
                self.queued();
            }
            Ok(false) => {
                tracing::warn!(id, path = %path, "the server lost a completed upload that was already sent again once: kept on the card, not sent a third time");
            }
            Err(e) => tracing::error!(error = %e, id, "cannot queue a lost upload again"),
        }
        queued
    }

    /// The server's receipt for a completed upload differs from the camera's digest: the
    /// server lost or changed bytes. Noted for `attention` (`server_digest_mismatch`, until a
    /// later receipt for the file matches) and the file queued again, once per version like a
    /// lost upload. True when it was queued again.
    pub fn digest_mismatch(&self, item: &Item) -> Result<bool, StoreError> {
        let (id, path) = (item.id, &item.storage_path);
        self.store.note_digest_mismatch(id, &path.to_string())?;
        let queued = self.store.requeue_done(
            id,
            "the server's receipt (Repr-Digest) differs from the bytes sent: sending it again",
        );
        match &queued {
            Ok(true) => {
                tracing::warn!(id, path = %path, "the server's receipt differs from the camera's digest: the file is kept and sent again");
                self.queued();
            }
            Ok(false) => {
                tracing::warn!(id, path = %path, "the server's receipt differs again after the file was sent again once: kept on the card, not sent a third time");
            }
            Err(e) => tracing::error!(error = %e, id, "cannot queue the file again"),
        }
        queued
    }

    /// The items whose receipt differed and has not matched since, with their files' paths.
    pub fn digest_mismatches(&self) -> Result<Vec<(i64, String)>, StoreError> {
        self.store.digest_mismatches()
    }

    /// A receipt for item `id` matched the camera's digest, or its file is no longer on the
    /// card to protect: a mismatch noted before is over.
    pub fn receipt_matched(&self, id: i64) {
        if let Err(e) = self.store.clear_digest_mismatch(id) {
            tracing::warn!(error = %e, id, "cannot clear the receipt mismatch");
        }
    }

    /// `HEAD` on a completed upload with `token`, asking for the server's receipt
    /// (`Want-Repr-Digest`).
    pub async fn head_upload_receipt(
        &self,
        url: &str,
        token: &Secret,
    ) -> Result<(UploadState, Receipt), TusError> {
        self.client.head_receipt(url, token).await
    }

    fn freeing(&self) -> std::sync::MutexGuard<'_, Freeing> {
        self.freeing.lock().unwrap_or_else(|e| e.into_inner())
    }
}
