//! The scheduler: picks queue items (manual first, then oldest capture first), runs at most
//! `cloud.concurrency` transfers, and records each outcome in the store.
//!
//! Invariants: an item is started only when [`App::permits`] allows its kind of upload; every
//! outcome is written to the store before the next pick, so a crash never loses or repeats an
//! upload; back-off times live in the store, so a restart neither forgets nor hammers; the
//! scheduler never polls: it sleeps until kicked (new files, changed conditions or settings),
//! until the next backed-off item is due, or until a transfer ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::app::{AccountStatus, App};
use crate::credentials::Account;
use crate::scan;
use crate::store::{now_unix, Item, Pick};
use crate::upload::retry::{self, Backoff};
use crate::upload::transfer::{self, Outcome, TransferCtx};

/// The longest the scheduler sleeps without looking (it also beats the health check).
const MAX_SLEEP: Duration = Duration::from_secs(20);

/// Runs until shutdown; then waits for the transfers in flight to save their progress.
pub async fn run(app: Arc<App>) {
    let concurrency = app.config.cloud.concurrency.max(1);
    let mut tasks: JoinSet<()> = JoinSet::new();
    loop {
        app.beat("scheduler");
        let mut next_due = None;
        while tasks.len() < concurrency && !app.shutdown.is_cancelled() {
            let Some((allow_auto, allow_manual, kinds)) = app.permits() else {
                break;
            };
            let Some(account) = app.account_for_upload() else {
                break;
            };
            let exclude = app.in_flight();
            let pick = Pick {
                now: now_unix(),
                auto_kinds: &kinds,
                allow_auto,
                allow_manual,
                exclude: &exclude,
            };
            match app.store.next_item(&pick) {
                Ok(Some(item)) => {
                    let app = app.clone();
                    tasks.spawn(async move { one(app, item, account).await });
                }
                Ok(None) => {
                    next_due = app.store.next_due(&pick).ok().flatten();
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the queue");
                    break;
                }
            }
        }
        let sleep = match next_due {
            Some(at) => {
                Duration::from_secs((at - now_unix()).clamp(0, MAX_SLEEP.as_secs() as i64) as u64)
            }
            None => MAX_SLEEP,
        };
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = app.kick.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = res {
                    tracing::error!(error = %e, "an upload task failed");
                }
            }
        }
    }
    // The stop tokens are children of the shutdown token: every transfer is stopping now.
    while tasks.join_next().await.is_some() {}
}

/// One attempt at one item, start to recorded outcome.
async fn one(app: Arc<App>, item: Item, account: Account) {
    let id = item.id;
    if let Err(e) = app.store.mark_uploading(id) {
        tracing::error!(error = %e, id, "cannot mark an item uploading");
        return;
    }
    let stop = app.begin(&item);
    tracing::info!(id, path = %item.storage_path, size = item.size, from = item.bytes_sent, "uploading");
    let ctx = TransferCtx {
        client: &app.client,
        store: &app.store,
        config: &app.config,
        account: &account,
    };
    let progress = |b: u64| app.progress(id, b);
    let outcome = transfer::upload(&ctx, &item, &stop, &progress).await;
    record(&app, &item, outcome);
    app.end(id);
}

/// Writes an outcome to the store (and the account status, for 401/402).
fn record(app: &App, item: &Item, outcome: Outcome) {
    let id = item.id;
    let res = match outcome {
        Outcome::Done => {
            tracing::info!(id, path = %item.storage_path, size = item.size, "uploaded");
            app.store.mark_done(id)
        }
        Outcome::Retry { error, retry_after } => {
            // Whole seconds, rounded up: a server's Retry-After is never undercut by the part
            // of the current second already gone.
            let now = now_unix() + 1;
            let at = Backoff::from_config(&app.config.cloud).next_attempt_at(
                now,
                item.attempts,
                retry_after,
                retry::jitter(),
            );
            tracing::warn!(id, path = %item.storage_path, error = %error, retry_in_secs = at - now, "upload failed; will retry");
            app.store.mark_retry(id, &error, at)
        }
        Outcome::Failed(error) => {
            tracing::warn!(id, path = %item.storage_path, error = %error, "upload failed for good; waiting for the user's retry");
            app.store.mark_failed(id, &error)
        }
        Outcome::Unauthorized(m) => {
            let r = app.store.mark_interrupted(id);
            app.set_account_status(AccountStatus::Unauthorized(m));
            r
        }
        Outcome::SubscriptionInactive(m) => {
            let r = app.store.mark_interrupted(id);
            app.set_account_status(AccountStatus::SubscriptionInactive(m));
            r
        }
        Outcome::FileUnreadable(reason) => {
            if scan::media_present(&app.config.media.root) {
                tracing::info!(id, path = %item.storage_path, reason = %reason, "file gone or changed; dropped from the queue");
                app.store.mark_skipped(id, &reason)
            } else {
                app.store.mark_interrupted(id)
            }
        }
        Outcome::Stopped => {
            tracing::info!(id, path = %item.storage_path, "upload stopped; it resumes from the server's offset later");
            app.store.mark_interrupted(id)
        }
    };
    if let Err(e) = res {
        tracing::error!(error = %e, id, "cannot record an upload's outcome");
    }
}
