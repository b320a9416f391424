//! The freeing-space task (INTERFACE.md section 8): when the card runs low, deletes backed-up
//! originals, oldest first, under the rules of `space::decide`, and records each one.
//!
//! A pass gathers the facts (the card's space by statvfs, the store's done items and what was
//! sent of them, each file's metadata), asks the rules, and for each file they name, just
//! before deleting it: asks the server (`HEAD`: offset = length), reads the file back and
//! hashes it chunk by chunk against what was sent (always: an edit in place keeps the inode,
//! size and mtime, so only the bytes tell), looks at the file once more, and asks the rules
//! again with those answers. Then a durable note that the file is about to go, the
//! firmware's `media.delete_command` (no shell) or an unlink relative to the file's directory,
//! only while its name holds the version judged (inode, size, mtime), and the record: the
//! store's `freed_at`, the history, the event stream. Notes left by a crash are settled at the
//! next pass by the file's size and mtime.
//!
//! Invariants: nothing is deleted unless the rules say [`Verdict::Free`] with the server's and
//! the card's answers of that moment, and [`space::last_look`] finds no hold right then
//! (consent, pairing, the card, not recording); any doubt keeps the file; a failed deletion keeps it and says why;
//! a file the server lost is queued again. Runs only where the maker configured it, never
//! while the camera records, and stops at once on shutdown, unpairing or consent off.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

mod at_dir;
mod command;
mod confirm;
mod delete;
mod error;
mod gather;
mod settle;
#[cfg(test)]
mod tests;
mod view;

use crate::app::{App, PassReport};
use crate::space::{self, Card, Hold, Keep, OnCard, Verdict};
use crate::store::FreeCandidate;
use at_dir::Seen;
use confirm::confirm;
use delete::delete;
pub use error::FreeingError;
pub use gather::card_space;
use gather::{gather_off_thread, look_off_thread, world, Gathered};
use settle::settle_notes;
pub use view::preview;

/// How often the card is looked at without a wake-up (uploads done, scans and settings wake
/// the task sooner).
const CHECK_EVERY: Duration = Duration::from_secs(60);
/// Passes start at most this often, however many uploads end.
const MIN_GAP: Duration = Duration::from_secs(2);
/// The confirming `HEAD` gets this long; no answer is a doubt.
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);
/// The firmware's delete command gets this long; then it is killed and the file kept.
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most failures a pass report keeps.
const MAX_FAILURES: usize = 10;

/// Runs until shutdown. On a camera whose maker did not configure freeing space it only waits.
pub async fn run(app: Arc<App>) {
    if !app.config().media.frees_space() {
        app.shutdown().cancelled().await;
        return;
    }
    loop {
        let report = pass(&app).await;
        app.set_last_pass(report);
        tokio::select! {
            _ = app.shutdown().cancelled() => return,
            _ = app.freeing_kicked() => {}
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        tokio::select! {
            _ = app.shutdown().cancelled() => return,
            _ = tokio::time::sleep(MIN_GAP) => {}
        }
    }
}

/// One pass: frees what the rules allow until the card is back above its target.
pub async fn pass(app: &Arc<App>) -> PassReport {
    let stop = app.freeing_token();
    let mut report = PassReport {
        at: crate::clock::now_unix(),
        ..PassReport::default()
    };
    // Deletions a crash separated from their record, whatever the holds: settling records a
    // fact and deletes nothing.
    settle_notes(app).await;
    forget_settled_mismatches(app);
    // The holds first, without a file: most passes end here (the card is not low).
    let first = space::decide(&world(app), &[]);
    report.card = first_card(&first, app);
    report.held_by = first.holds.clone();
    if !first.may_free() {
        return report;
    }
    let Gathered { mut world, account } = match gather_off_thread(app).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "freeing space: cannot gather the facts");
            report.failures.push(e.to_string());
            return report;
        }
    };
    let mut look = match look_off_thread(app, &world, None, true).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "freeing space: cannot gather the facts");
            report.failures.push(e.to_string());
            return report;
        }
    };
    let d = space::decide(&world, &[]);
    report.need_bytes = d.need_bytes;
    for (code, n) in std::mem::take(&mut look.kept) {
        *report.kept.entry(code).or_default() += n;
    }
    report.kept_unverified += look.unverified;
    if !d.may_free() {
        report.held_by = d.holds;
        return report;
    }
    tracing::info!(need_bytes = d.need_bytes, card = ?world.card, "the card is low: freeing space");
    // Oldest first, each judged again with the world of its turn, while the card is low; a
    // window at a time ([`gather::Look::WINDOW`]), looking again after it while more files
    // could be freed.
    'pass: loop {
        let from = look.next_from();
        for (c, mut f) in std::mem::take(&mut look.files) {
            if stop.is_cancelled() {
                break 'pass;
            }
            let d = space::decide(&world, &[]);
            if !d.may_free() {
                report.held_by = d.holds;
                break 'pass;
            }
            if !matches!(space::judge(&world, &f), Verdict::Free | Verdict::Confirm) {
                continue;
            }
            let Some(verdict) = confirm(app, &stop, account.as_ref(), &mut world, &mut f, &c).await
            else {
                break 'pass;
            };
            act(app, &stop, &mut report, &c, verdict, f.on_card).await;
            world.card = card_space(&app.config().media.root).ok();
        }
        // What holds once the window is done (the card back above its target, most often),
        // whether or not more files could be freed.
        let d = space::decide(&world, &[]);
        if !d.may_free() {
            report.held_by = d.holds;
            break;
        }
        if !look.more || stop.is_cancelled() {
            break;
        }
        look = match look_off_thread(app, &world, from, false).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "freeing space: cannot gather the facts");
                report.failures.push(e.to_string());
                break;
            }
        };
    }
    report.card = world.card;
    if report.freed_files > 0 {
        tracing::info!(
            files = report.freed_files,
            bytes = report.freed_bytes,
            "freed space on the card"
        );
    }
    report
}

/// Does what the rules said of one confirmed file: deletes and records it, or keeps it (a file
/// the server lost is queued again), and counts it in the report.
async fn act(
    app: &Arc<App>,
    stop: &CancellationToken,
    report: &mut PassReport,
    c: &FreeCandidate,
    verdict: Verdict,
    on_card: OnCard,
) {
    let id = c.item.id;
    match (verdict, on_card) {
        (
            Verdict::Free,
            OnCard::Present {
                ino,
                size,
                mtime_ns,
            },
        ) => {
            match delete(
                app,
                stop,
                c,
                Seen {
                    ino,
                    size,
                    mtime_ns,
                },
            )
            .await
            {
                Ok(()) => match app.record_freed(&c.item) {
                    Ok(_) => {
                        report.freed_files += 1;
                        report.freed_bytes += c.item.size;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, id, "deleted a backed-up file but cannot record it");
                        report.failures.push(format!(
                            "{}: deleted, not recorded: {e}",
                            c.item.storage_path
                        ));
                    }
                },
                Err(why) => {
                    tracing::warn!(id, path = %c.item.storage_path, reason = %why, "cannot free a file; it is kept");
                    *report.kept.entry("delete_failed").or_default() += 1;
                    if report.failures.len() < MAX_FAILURES {
                        report
                            .failures
                            .push(format!("{}: {why}", c.item.storage_path));
                    }
                }
            }
        }
        (Verdict::Free, _) => {
            tracing::error!(id, path = %c.item.storage_path, "the rules freed a file not seen on the card; it is kept");
            *report.kept.entry("delete_failed").or_default() += 1;
        }
        (Verdict::Keep(k), _) => {
            tracing::info!(id, path = %c.item.storage_path, reason = k.code(), "kept: not freed");
            if k == Keep::ServerLost {
                // Queued again (or not, if sent again once already) and said so by App.
                let _ = app.lost_upload(&c.item);
            }
            if k == Keep::ServerDigestMismatch {
                // Flagged for the user, and queued again once, by App.
                let _ = app.digest_mismatch(&c.item);
            }
            *report.kept.entry(k.code()).or_default() += 1;
            if k.is_unverified() {
                report.kept_unverified += 1;
            }
        }
        _ => {}
    }
}

/// A receipt mismatch (`attention`'s `server_digest_mismatch`) whose file is no longer on the
/// card (the user deleted it by hand, or it was freed) has nothing left to protect: it is over.
/// Judged only with the card there (a card that is out shows every file missing).
fn forget_settled_mismatches(app: &App) {
    let media = &app.config().media;
    let Ok(flagged) = app.digest_mismatches() else {
        return;
    };
    if flagged.is_empty() || !crate::scan::CardRoot::of(media).present() {
        return;
    }
    // Only the file's own card can say it is gone: another card lacking the path says nothing.
    let slot = app.card().serial;
    for (id, _) in flagged {
        let gone = match app.item_if_any(id) {
            // (A freed file's mismatch went with its record, `Store::mark_freed`.)
            Ok(Some(item)) => {
                let its_card = item.card.is_none() || slot.is_none() || item.card == slot;
                its_card
                    && gather::on_card(&media.root, &item.storage_path.on_disk(&media.root))
                        == OnCard::Missing
            }
            Ok(None) => true,
            Err(_) => false,
        };
        if gone {
            tracing::info!(
                id,
                "a file whose receipt differed is no longer on the card: the mismatch is over"
            );
            app.receipt_matched(id);
        }
    }
}

fn first_card(d: &space::Decision, app: &App) -> Option<Card> {
    if d.holds.contains(&Hold::CardUnknown) {
        None
    } else {
        card_space(&app.config().media.root).ok()
    }
}
