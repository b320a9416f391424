//! The scheduler: picks queue items (manual first, then those that failed least, then oldest
//! capture first, so files that keep failing never hold up new ones), runs at most
//! `cloud.concurrency` transfers, and hands each outcome to App, which records it.
//!
//! Invariants: an item is started only when [`App::permits`] allows its kind of upload; every
//! outcome is written to the store before the next pick, so a crash never loses or repeats an
//! upload; back-off times live in the store, so a restart neither forgets nor hammers; the
//! scheduler never polls: it sleeps until kicked (new files, changed conditions or settings),
//! until the next backed-off item is due, or until a transfer ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Ending};
use crate::clock::now_unix;
use crate::credentials::Account;
use crate::scan;
use crate::store::{Item, Pick};
use crate::upload::retry::{self, Backoff};
use crate::upload::transfer::Outcome;

/// The longest the scheduler sleeps without looking: a net under the kicks and the times it
/// computes (a wall clock that jumped moves a back-off's end). It rests meanwhile
/// ([`App::rest`]), so the health check needs no wake-up (issue 29).
const MAX_SLEEP: Duration = Duration::from_secs(300);

/// How soon an outcome that could not be recorded (state disk full) is dealt with again.
const RETRY_RECORD: Duration = Duration::from_secs(5);

/// Runs until shutdown; then waits for the transfers in flight to save their progress.
pub async fn run(app: Arc<App>) {
    let concurrency = app.config().cloud.concurrency.max(1);
    let mut tasks: JoinSet<bool> = JoinSet::new();
    // Which item each task uploads: a task that panics never calls `App::end`, so the
    // scheduler does, or the item would stay "in flight" for good.
    let mut running: std::collections::HashMap<tokio::task::Id, i64> = Default::default();
    // An outcome could not be recorded: its item is still `uploading` in the store, and would
    // never be picked again. It goes back to pending (and resumes by HEAD) once the store can
    // take the write. True at the start too: the start-up recovery of items a crash left
    // `uploading` (daemon.rs) fails on a full state disk, and nothing else would retry it.
    let mut stray = true;
    loop {
        app.beat("scheduler");
        if stray {
            stray = !app.recover_stray_uploading();
        }
        let mut next_due = None;
        let hold = app.server_not_before();
        if hold > now_unix() {
            next_due = Some(hold);
        }
        while next_due.is_none() && tasks.len() < concurrency && !app.shutdown().is_cancelled() {
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
            match app.next_upload(&pick) {
                Ok(Some(item)) => {
                    // Claimed here, before the next pick, so that with concurrency above one the
                    // same item is never picked twice, and its stop token is registered before
                    // anything (pause, cancel) can look for it.
                    let stop = match app.claim(&item) {
                        Ok(Some(stop)) => stop,
                        Ok(None) => continue,
                        Err(e) => {
                            stray = true;
                            tracing::error!(error = %e, id = item.id, "cannot mark an item uploading");
                            break;
                        }
                    };
                    let id = item.id;
                    let app = app.clone();
                    let task = tasks.spawn(async move { one(app, item, account, stop).await });
                    running.insert(task.id(), id);
                }
                Ok(None) => {
                    next_due = app.next_due(&pick);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the queue");
                    break;
                }
            }
        }
        let mut sleep = match next_due {
            Some(at) => {
                Duration::from_secs((at - now_unix()).clamp(0, MAX_SLEEP.as_secs() as i64) as u64)
            }
            None => MAX_SLEEP,
        };
        if stray {
            sleep = sleep.min(RETRY_RECORD);
        }
        app.rest("scheduler");
        tokio::select! {
            _ = app.shutdown().cancelled() => break,
            _ = app.kicked() => {}
            _ = tokio::time::sleep(sleep) => {}
            Some(res) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                match res {
                    Ok((task, recorded)) => {
                        running.remove(&task);
                        stray |= !recorded;
                    }
                    Err(e) => {
                        stray = true;
                        tracing::error!(error = %e, "an upload task failed");
                        if let Some(id) = running.remove(&e.id()) {
                            app.end(id);
                        }
                    }
                }
            }
        }
    }
    // The stop tokens are children of the shutdown token: every transfer is stopping now.
    while tasks.join_next().await.is_some() {}
}

/// One attempt at one item, start to recorded outcome. False when the outcome could not be
/// recorded.
async fn one(app: Arc<App>, item: Item, account: Account, stop: CancellationToken) -> bool {
    let id = item.id;
    tracing::info!(id, path = %item.storage_path, size = item.size, from = item.bytes_sent, "uploading");
    let outcome = app.attempt(&item, &account, &stop).await;
    let recorded = app.finish(&item, ending(&app, &item, outcome));
    app.end(id);
    recorded
}

/// The file could not be read. Only a file that is gone (with the card present) or replaced
/// by another version leaves the queue, with a reason the scan understands (a deleted file that
/// comes back is queued again); a read error on a file that is still there is retried, since
/// dropping a photo from the backup for a transient I/O error would lose it silently.
fn unreadable(app: &App, item: &Item, reason: &str) -> Ending {
    let root = &app.config().media.root;
    if !scan::CardRoot::of(&app.config().media).present() {
        return Ending::Interrupted;
    }
    match std::fs::symlink_metadata(item.storage_path.on_disk(root)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(id = item.id, path = %item.storage_path, "file deleted before upload; dropped from the queue");
            Ending::Skipped(crate::store::REASON_DELETED)
        }
        Ok(m) if m.len() != item.size || crate::media::mtime_ns(&m) != item.mtime_ns => {
            tracing::info!(id = item.id, path = %item.storage_path, "file changed since queued; the new version is queued instead");
            Ending::Skipped(crate::store::REASON_REPLACED)
        }
        _ => {
            let at = retry_at(app, item, None);
            tracing::warn!(id = item.id, path = %item.storage_path, error = %reason, "cannot read the file; will retry");
            Ending::Retry {
                error: reason.to_string(),
                at,
                server_busy: false,
            }
        }
    }
}

/// When the item's next attempt may start (unix seconds): the back-off for its attempts so
/// far, or the server's `Retry-After` (its first of an outage with a phase drawn, the next
/// ones keeping it: [`Backoff::delay`]).
fn retry_at(app: &App, item: &Item, retry_after: Option<Duration>) -> i64 {
    // Whole seconds, rounded up: a server's Retry-After is never undercut by the part of the
    // current second already gone.
    let now = now_unix() + 1;
    Backoff::from_config(&app.config().cloud).next_attempt_at(
        now,
        item.attempts,
        retry_after,
        retry_after.is_some() && app.server_busy_again(now_unix()),
        retry::jitter(),
    )
}

/// What the transfer's outcome means for the item: when it is tried again, whether it leaves
/// the queue. App records it ([`App::finish`]).
fn ending(app: &App, item: &Item, outcome: Outcome) -> Ending {
    let id = item.id;
    match outcome {
        Outcome::Done => {
            tracing::info!(id, path = %item.storage_path, size = item.size, "uploaded");
            Ending::Done
        }
        Outcome::Retry { error, retry_after } => {
            let at = retry_at(app, item, retry_after);
            tracing::warn!(id, path = %item.storage_path, error = %error, retry_in_secs = at - now_unix(), "upload failed; will retry");
            // 429/503 with Retry-After speaks for the server, not for this file: nothing
            // starts before then, or a camera with k files queued asks k times a period.
            Ending::Retry {
                error,
                at,
                server_busy: retry_after.is_some(),
            }
        }
        Outcome::ServerBusy(error) => {
            let at = retry_at(app, item, None);
            tracing::warn!(id, path = %item.storage_path, error = %error, retry_in_secs = at - now_unix(), "the server is busy or down; no upload starts before the retry");
            // The whole camera waits out this file's back-off: the server said nothing of a
            // file, it is the server.
            Ending::Retry {
                error,
                at,
                server_busy: true,
            }
        }
        Outcome::Failed(error) => {
            tracing::warn!(id, path = %item.storage_path, error = %error, "upload failed for good; waiting for the user's retry");
            Ending::Failed(error)
        }
        Outcome::Unauthorized(m) => Ending::Unauthorized(m),
        Outcome::SubscriptionInactive(m) => Ending::SubscriptionInactive(m),
        Outcome::FileUnreadable(reason) => unreadable(app, item, &reason),
        Outcome::CertificateRefused(error) => {
            let at = retry_at(app, item, None);
            tracing::warn!(id, path = %item.storage_path, error = %error, retry_in_secs = at - now_unix(), "the server refused the device's certificate; will retry");
            Ending::CertificateRefused { error, at }
        }
        Outcome::NoPath { reach, error } => {
            tracing::warn!(id, path = %item.storage_path, error = %error, ?reach, "the server cannot be reached through this network; trying again when the network changes");
            // Due at once: the gate holds it until the link changes.
            Ending::NoPath {
                reach,
                error,
                at: now_unix(),
            }
        }
        Outcome::Stopped => {
            tracing::info!(id, path = %item.storage_path, "upload stopped; it resumes from the server's offset later");
            Ending::Interrupted
        }
    }
}
