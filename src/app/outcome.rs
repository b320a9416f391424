//! What the scheduler hands App: the next item to start, the claim on it, the attempt, and how
//! the attempt ended. App saves each of these and wakes whoever waits, so the scheduler keeps
//! the order of work (which item, when, how many) and never writes the queue itself.
//!
//! Invariant: an item is claimed (`uploading` in the store) before its stop token is
//! registered and before the next pick, and every ending is written before the next pick; an
//! ending the store could not take is reported (`false`), and the scheduler recovers it with
//! [`App::recover_stray_uploading`] once the store takes writes again.

use tokio_util::sync::CancellationToken;

use super::{AccountStatus, App};
use crate::credentials::Account;
use crate::store::{Item, Pick, StoreError};
use crate::upload::transfer::{self, Outcome, TransferCtx};
use crate::upload::tus::Reach;

/// How an attempt at an item ended, as the scheduler judged it: what App records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server holds every byte.
    Done,
    /// Tried again at `at` (unix seconds); `server_busy`: the server asked (Retry-After) that
    /// nothing be sent before then, whichever file.
    Retry {
        error: String,
        at: i64,
        server_busy: bool,
    },
    /// The server refused the device's TLS certificate (mutual TLS): tried again at `at`, and
    /// `attention` says `certificate_refused` until an upload goes through.
    CertificateRefused { error: String, at: i64 },
    /// The server cannot be reached through the uplink (Wi-Fi without internet, a captive
    /// portal): tried again at `at`, once the link changes (the gate shows the block until).
    NoPath {
        reach: Reach,
        error: String,
        at: i64,
    },
    /// Failed for good; waits for the user's retry.
    Failed(String),
    /// 401: the upload stops, and nothing more goes up until the user pairs again.
    Unauthorized(String),
    /// 402, or a 403 that says the subscription is inactive.
    SubscriptionInactive(String),
    /// The file left the queue (`store::REASON_DELETED`, `store::REASON_REPLACED`).
    Skipped(&'static str),
    /// Stopped (or the card is out): it resumes from the server's offset later.
    Interrupted,
}

impl App {
    /// Puts back to pending the items left `uploading` by a crash or by an ending the store
    /// could not take (none of them in flight). True once done; false when the store could
    /// not take it (tried again by the scheduler).
    pub fn recover_stray_uploading(&self) -> bool {
        match self.store.recover_stray_uploading(&self.in_flight()) {
            Ok(n) => {
                self.store_ok();
                if n > 0 {
                    tracing::info!(
                        items = n,
                        "uploads left `uploading` (a crash, or an outcome the store could not take) are queued again"
                    );
                }
                true
            }
            Err(e) => {
                self.store_failed(&e);
                false
            }
        }
    }

    /// The item `pick` allows next, if any.
    pub fn next_upload(&self, pick: &Pick<'_>) -> Result<Option<Item>, StoreError> {
        self.store.next_item(pick)
    }

    /// When the next item `pick` would allow becomes due (unix seconds), if any.
    pub fn next_due(&self, pick: &Pick<'_>) -> Option<i64> {
        self.store.next_due(pick).ok().flatten()
    }

    /// Claims `item` for an upload: marks it `uploading` and registers it in flight. `None`:
    /// another claim took it first. An error is shown in `attention` (a full disk).
    pub fn claim(&self, item: &Item) -> Result<Option<CancellationToken>, StoreError> {
        match self.store.mark_uploading(item.id) {
            Ok(true) => Ok(Some(self.begin(item))),
            Ok(false) => Ok(None),
            Err(e) => {
                self.store_failed(&e);
                Err(e)
            }
        }
    }

    /// One attempt at a claimed item with the daemon's client: the transfer records the
    /// upload URL and the acknowledged offsets of this item as it goes (before data is sent,
    /// so a crash resumes), and its progress reaches the status and the event stream.
    pub async fn attempt(
        &self,
        item: &Item,
        account: &Account,
        stop: &CancellationToken,
    ) -> Outcome {
        let ctx = TransferCtx {
            client: &self.client,
            store: &self.store,
            config: &self.config,
            account,
        };
        let id = item.id;
        let progress = |b: u64| self.progress(id, b);
        transfer::upload(&ctx, item, stop, &progress).await
    }

    /// Records how an attempt at `item` ended (and the account's status, and the server's
    /// Retry-After, which speaks for every file). False when the store could not take it.
    pub fn finish(&self, item: &Item, ending: Ending) -> bool {
        let id = item.id;
        let res = match ending {
            Ending::Done => {
                self.set_certificate_refused(None);
                self.set_no_path(None);
                self.store.mark_done(id)
            }
            Ending::NoPath { reach, error, at } => {
                self.set_no_path(Some((reach, error.clone())));
                self.store.mark_retry(id, &error, at)
            }
            Ending::CertificateRefused { error, at } => {
                self.set_certificate_refused(Some(error.clone()));
                self.store.mark_retry(id, &error, at)
            }
            Ending::Retry {
                error,
                at,
                server_busy,
            } => {
                if server_busy {
                    self.server_busy_until(at);
                }
                self.store.mark_retry(id, &error, at)
            }
            Ending::Failed(error) => self.store.mark_failed(id, &error),
            Ending::Unauthorized(m) => {
                let r = self.store.mark_interrupted(id);
                self.set_account_status(AccountStatus::Unauthorized(m));
                r
            }
            Ending::SubscriptionInactive(m) => {
                let r = self.store.mark_interrupted(id);
                self.set_account_status(AccountStatus::SubscriptionInactive(m));
                r
            }
            Ending::Skipped(reason) => self.store.mark_skipped(id, reason),
            Ending::Interrupted => self.store.mark_interrupted(id),
        };
        match res {
            Ok(()) => {
                self.store_ok();
                true
            }
            Err(e) => {
                self.store_failed(&e);
                tracing::error!(error = %e, id, "cannot record an upload's outcome; trying again in a few seconds");
                false
            }
        }
    }
}
