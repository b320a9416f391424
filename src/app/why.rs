//! `GET /v1/files/{storage_path}` and `cambackup why`: one file's state and why, said from what
//! the daemon already keeps (the item's state, attempts and last error, the gate's blocks, the
//! history's times) and, for a file the queue does not hold, from the walk's own rules applied
//! to it now (`scan::look_at`).
//!
//! Invariant: read-only. The reasons are the daemon's existing codes (item states, the
//! `blocked_by` codes, the walk's `LeftOut`, `waiting_for_card`) plus the few a single file
//! needs ([`REASON_CODES`]); nothing outside the media root is looked at.

use std::time::{Duration, SystemTime};

use super::account::AccountStatus;
use super::{App, AppError, ErrorKind, Live};
use crate::clock::{now_unix, utc};
use crate::gate::Block;
use crate::media::{Kind, PathError, StoragePath};
use crate::scan::{self, LeftOut, OnCard};
use crate::store::{self, Item, ItemState};
use crate::wire::{FileView, Reason};
use crate::words::count;

/// Every reason code a file's answer may carry besides the `blocked_by` codes and the walk's
/// (`LeftOut`): docs/INTERFACE.md and docs/openapi.yaml list the same (a test compares).
#[cfg(test)]
pub const REASON_CODES: [&str; 21] = [
    "uploading",
    "done",
    "freed",
    "deleted_from_card",
    "failed",
    "waiting_for_retry",
    "server_busy",
    "queued",
    "starting_soon",
    "kind_not_selected",
    "unpaired",
    "unauthorized",
    "subscription_inactive",
    "paused",
    "media_unavailable",
    "clock_not_set",
    "deleted_before_upload",
    "replaced",
    "waiting_for_card",
    "cancelled",
    "not_settled",
];

/// The codes of a file the queue does not hold and that the walk would take (the rest of a
/// `not_queued` file's codes are [`LeftOut`]'s and [`REASON_CODES`]' `not_settled`).
#[cfg(test)]
pub const NOT_QUEUED_CODES: [&str; 2] = ["not_seen_yet", "outside_media_root"];

/// What holds the queue back at the moment of the question, from the live state.
#[derive(Debug, Clone)]
struct Held {
    unpaired: bool,
    account: Option<&'static str>,
    paused: bool,
    media_available: bool,
    clock_set: bool,
    server_not_before: i64,
    auto: Vec<Block>,
    manual: Vec<Block>,
    auto_open: bool,
    kinds: Vec<Kind>,
    in_flight: usize,
}

impl Held {
    fn of(live: &Live) -> Held {
        Held {
            unpaired: live.account.is_none(),
            account: match live.account_status {
                AccountStatus::Unauthorized(_) => Some("unauthorized"),
                AccountStatus::SubscriptionInactive(_) => Some("subscription_inactive"),
                AccountStatus::Ok => None,
            },
            paused: live.paused,
            media_available: live.media_available,
            clock_set: live.clock_set,
            server_not_before: live.server_not_before,
            auto: live.verdict.auto.clone(),
            manual: live.verdict.manual.clone(),
            auto_open: live.auto_open,
            kinds: live.settings.data_types.clone(),
            in_flight: live.in_flight.len(),
        }
    }
}

fn reason(code: &str, message: impl Into<String>) -> Reason {
    Reason {
        code: code.to_string(),
        message: message.into(),
    }
}

/// What a block means for a file waiting on it, in a sentence.
fn block_sentence(b: Block) -> &'static str {
    match b {
        Block::AutoUploadOff => {
            "Waiting for your consent: automatic upload is off (settings: auto_upload)."
        }
        Block::NotCharging => "Waiting for external power: uploads run only while charging.",
        Block::BatteryLow => "Waiting for the battery to charge above the minimum for uploads.",
        Block::NetworkNotAllowed => {
            "Waiting for a network your choice allows (settings: network), such as Wi-Fi."
        }
        Block::MeteredNetwork => {
            "Waiting for an unmetered network: this Wi-Fi is metered (settings: network)."
        }
        Block::Offline => "Waiting for a network: the camera is offline.",
        Block::NoInternet => {
            "Waiting for a network with internet: the server cannot be reached through this one \
             (tried again when the network changes)."
        }
        Block::CaptivePortal => {
            "Waiting for a network that lets it through: this one answers for the server (a \
             captive portal: sign in to it, or use another network)."
        }
        Block::Recording => "Waiting for the camera to stop recording.",
        Block::Busy => "Waiting for the camera to be idle.",
        Block::TooHot => "Waiting for the camera to cool down.",
        Block::OutsideSchedule => "Waiting for the hours you set for uploads (settings: schedule).",
        Block::DataBudgetUsed => {
            "Waiting for tomorrow: today's cellular data for uploads is used up \
             (settings: cellular_daily_mib)."
        }
    }
}

/// Why a queued file is where it is: its state, then, for one that waits, the first thing
/// that holds it (the same order as the scheduler's: the account, the pause, the card, the
/// clock, its back-off, the server's, the gate).
fn reason_of(
    item: &Item,
    freed_at: Option<i64>,
    on_card: bool,
    in_flight: Option<u64>,
    held: &Held,
    now: i64,
) -> Reason {
    let tries = count(u64::from(item.attempts), "attempt", "attempts");
    let error = item.last_error.as_deref().unwrap_or("no error recorded");
    if let Some(sent) = in_flight.filter(|_| item.state != ItemState::Done) {
        return reason(
            "uploading",
            format!("Uploading: {sent} of {} bytes sent.", item.size),
        );
    }
    match item.state {
        ItemState::Done => {
            let at = utc(item.completed_at.unwrap_or(0));
            match freed_at {
                Some(f) => reason(
                    "freed",
                    format!(
                        "Backed up at {at}, and deleted from the card at {} to free space.",
                        utc(f)
                    ),
                ),
                None if on_card => reason("done", format!("Backed up at {at}.")),
                None => reason(
                    "deleted_from_card",
                    format!("Backed up at {at}; since deleted from the card (not by cambackup)."),
                ),
            }
        }
        ItemState::Uploading => reason(
            "uploading",
            format!(
                "Uploading: {} of {} bytes sent.",
                item.bytes_sent, item.size
            ),
        ),
        ItemState::Failed => reason(
            "failed",
            format!(
                "Failed after {tries}: {error}. It waits for you: retry it (`cambackup retry {}`).",
                item.id
            ),
        ),
        ItemState::Cancelled => reason("cancelled", "Cancelled by the user."),
        ItemState::Skipped => match item.last_error.as_deref() {
            Some(store::REASON_WAITING_FOR_CARD) => reason(
                "waiting_for_card",
                "Its card is out (another card is in the slot): it is sent when that card is back.",
            ),
            Some(store::REASON_REPLACED) => reason(
                "replaced",
                "Not sent: a newer version of the file replaced this one, and is queued instead.",
            ),
            _ => reason(
                "deleted_before_upload",
                "Not sent: the file was deleted from the card before it could be uploaded.",
            ),
        },
        ItemState::Pending => pending_reason(item, held, now, &tries, error),
    }
}

/// Why a pending file waits.
fn pending_reason(item: &Item, held: &Held, now: i64, tries: &str, error: &str) -> Reason {
    if held.unpaired {
        return reason(
            "unpaired",
            "Waiting for the camera to be paired with an account (the app pairs it).",
        );
    }
    if let Some(code) = held.account {
        let message = if code == "unauthorized" {
            "Waiting: the server refused the account's token; pair the camera again in the app."
        } else {
            "Waiting: the cloud subscription is inactive; renew it, then pair again."
        };
        return reason(code, message);
    }
    if held.paused {
        return reason(
            "paused",
            "Waiting: uploads are paused by the user (`cambackup resume` or the app resumes them).",
        );
    }
    if !held.media_available {
        return reason(
            "media_unavailable",
            "Waiting for the memory card, which is missing: it is sent once the card is back.",
        );
    }
    if !held.clock_set {
        return reason(
            "clock_not_set",
            "Waiting for the camera's clock to be set: no upload starts before it is.",
        );
    }
    if item.next_attempt_at > now {
        return reason(
            "waiting_for_retry",
            format!(
                "Waiting to try again at {} after {tries} (last: {error}).",
                utc(item.next_attempt_at)
            ),
        );
    }
    if held.server_not_before > now {
        return reason(
            "server_busy",
            format!(
                "Waiting: the server asked that nothing be sent before {}.",
                utc(held.server_not_before)
            ),
        );
    }
    // A kind the user left out never goes automatically, whatever the conditions: that first.
    if !item.manual && !held.kinds.contains(&item.kind) {
        return reason(
            "kind_not_selected",
            format!(
                "Waiting: {}s are not among the kinds you chose to back up automatically \
                 (settings: data_types); upload it by hand, or add them.",
                item.kind.as_str()
            ),
        );
    }
    let blocks = if item.manual {
        &held.manual
    } else {
        &held.auto
    };
    if let Some(b) = blocks.first() {
        return reason(b.as_str(), block_sentence(*b));
    }
    if !item.manual && !held.auto_open {
        return reason(
            "starting_soon",
            "The conditions are met: automatic uploads start once they have held for a moment.",
        );
    }
    reason(
        "queued",
        format!(
            "Queued: sent when its turn comes ({} in flight).",
            count(held.in_flight as u64, "upload", "uploads")
        ),
    )
}

/// Why a file the queue does not hold is not, from what the walk's rules say of it now.
fn not_queued_reason(on: &OnCard, settle_secs: u64, rescan_secs: u64) -> Option<Reason> {
    Some(match on {
        OnCard::Missing => return None,
        OnCard::LeftOut(why) => reason(
            why.as_str(),
            match why {
                LeftOut::ExcludedType => {
                    "Left out: its type is not a photo or video type this camera backs up \
                     (media.photo_extensions, media.video_extensions)."
                }
                LeftOut::ExcludedPath => {
                    "Left out: its path is excluded (media.exclude: hidden files, a trash \
                     folder...)."
                }
                LeftOut::Link => {
                    "Left out: it is a symbolic link, or inside one; links on the card are \
                     never followed."
                }
                LeftOut::NotRegularFile => {
                    "Left out: it is not a regular file (a directory, FIFO, socket or device)."
                }
                LeftOut::Unreadable => {
                    "Left out: it, or a directory on its way, cannot be read (permissions or \
                     card errors)."
                }
            },
        ),
        OnCard::Unsettled { secs_ago, .. } => reason(
            "not_settled",
            format!(
                "Not settled yet: it was written {secs_ago} s ago, and is queued once unchanged \
                 for {settle_secs} s."
            ),
        ),
        OnCard::Media { .. } => reason(
            "not_seen_yet",
            format!(
                "Not queued yet: the next scan of the card (within {rescan_secs} s) queues it."
            ),
        ),
    })
}

impl App {
    /// `GET /v1/files/{storage_path}`: the file at `input` (a storage path, or an absolute
    /// path on the card), its state and why. 404 `no_such_file` for a path that the queue has
    /// never held and that is not on the card.
    pub fn file(&self, input: &str) -> Result<FileView, AppError> {
        let media = &self.config.media;
        let given_as = if input.starts_with('/') {
            "card_path"
        } else {
            "storage_path"
        };
        let mut view = FileView {
            given_as: given_as.to_string(),
            state: "not_queued".to_string(),
            ..FileView::default()
        };
        let path = match StoragePath::from_user_as_named(&media.root, input) {
            Ok(p) => p,
            Err(PathError::Outside(_)) => {
                view.storage_path = input.to_string();
                view.reason = reason(
                    "outside_media_root",
                    format!(
                        "Never looked at: it is not under the media root ({}), the only place \
                         cambackup backs up.",
                        media.root.display()
                    ),
                );
                return Ok(view);
            }
            Err(e) => return Err(AppError::bad_request("bad_path", e.to_string())),
        };
        view.storage_path = path.to_string();
        // With the card out, nothing under the root is the card's (an empty mount point).
        let on = if self.media_available() {
            scan::look_at(
                &media.root,
                &media.filter,
                Duration::from_secs(media.settle_secs),
                &path,
                SystemTime::now(),
            )
        } else {
            OnCard::Missing
        };
        let version = match on {
            OnCard::Media { size, mtime_ns } | OnCard::Unsettled { size, mtime_ns, .. } => {
                Some((size, mtime_ns))
            }
            _ => None,
        };
        view.on_card = on != OnCard::Missing;
        let row = self.store.item_for_path(&path, version)?;
        // The file on the card is another version than the queue's (still being written, or
        // not seen yet): that is what the user asks about. A done version stays the answer for
        // a settled file, which may be its very bytes under a moved stamp (the scan tells).
        let newer = |i: &Item| {
            version.is_some_and(|v| v != (i.size, i.mtime_ns))
                && (i.state != ItemState::Done || matches!(on, OnCard::Unsettled { .. }))
        };
        match row {
            Some((item, _)) if newer(&item) => {
                self.describe_card_file(&mut view, &on, Some(&item));
                Ok(view)
            }
            Some((item, freed_at)) => {
                let now = now_unix();
                let (held, in_flight, other_card) = {
                    let live = self.live();
                    let sent = live.in_flight.get(&item.id).map(|f| f.bytes_sent);
                    // Another card is in the slot than the one the file came from.
                    let other = item.card.is_some()
                        && live.card.serial.is_some()
                        && item.card != live.card.serial;
                    (Held::of(&live), sent, other)
                };
                // With the card out, or another card in, a file missing from the slot is not
                // deleted: only out.
                let there = view.on_card || !held.media_available || other_card;
                view.reason = reason_of(&item, freed_at, there, in_flight, &held, now);
                view.state = item.state.as_str().to_string();
                view.id = Some(item.id);
                view.kind = Some(item.kind.as_str().to_string());
                view.size = Some(item.size);
                view.attempts = item.attempts;
                view.bytes_sent = in_flight.unwrap_or(item.bytes_sent);
                view.last_error = item
                    .last_error
                    .clone()
                    .filter(|_| matches!(item.state, ItemState::Pending | ItemState::Failed));
                view.next_attempt_at = (item.state == ItemState::Pending
                    && item.next_attempt_at > now)
                    .then_some(item.next_attempt_at);
                view.queued_at = Some(item.queued_at);
                view.completed_at = item.completed_at;
                view.freed_at = freed_at;
                view.card_label = self
                    .card_name(item.card.as_deref())
                    .filter(|n| Some(n) != item.card.as_ref());
                view.card = item.card;
                Ok(view)
            }
            None if on == OnCard::Missing => Err(AppError {
                kind: ErrorKind::NotFound,
                code: "no_such_file",
                message: format!(
                    "`{input}` ({path} under {}): cambackup has never queued a file there, and \
                     there is none on the card{}",
                    media.root.display(),
                    if self.media_available() {
                        ""
                    } else {
                        " (the memory card is missing)"
                    }
                ),
            }),
            None => {
                self.describe_card_file(&mut view, &on, None);
                Ok(view)
            }
        }
    }

    /// A `not_queued` answer for a file on the card: why the walk leaves it out, or that it
    /// will be queued. `older`: a version of it the queue holds.
    fn describe_card_file(&self, view: &mut FileView, on: &OnCard, older: Option<&Item>) {
        let media = &self.config.media;
        if let Some(r) = not_queued_reason(on, media.settle_secs, media.rescan_secs) {
            view.reason = r;
        }
        if let OnCard::Media { size, .. } | OnCard::Unsettled { size, .. } = on {
            view.size = Some(*size);
            view.kind = media
                .filter
                .classify(&crate::media::StoragePath::from_stored(
                    view.storage_path.clone(),
                ))
                .map(|k| k.as_str().to_string());
        }
        if let Some(i) = older {
            view.card = i.card.clone();
        }
        view.card = view.card.take().or_else(|| self.card().serial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(state: ItemState) -> Item {
        Item {
            id: 7,
            storage_path: StoragePath::from_stored("DCIM/A.JPG".into()),
            kind: Kind::Photo,
            size: 100,
            mtime_ns: 1,
            state,
            manual: false,
            bytes_sent: 40,
            attempts: 2,
            next_attempt_at: 0,
            last_error: Some("HTTP 500".into()),
            upload_url: None,
            upload_expires_at: None,
            upload_endpoint: None,
            creations: 1,
            queued_at: 1,
            completed_at: Some(1_796_643_005),
            fingerprint: None,
            card: None,
        }
    }

    fn open() -> Held {
        Held {
            unpaired: false,
            account: None,
            paused: false,
            media_available: true,
            clock_set: true,
            server_not_before: 0,
            auto: vec![],
            manual: vec![],
            auto_open: true,
            kinds: vec![Kind::Photo, Kind::Video],
            in_flight: 0,
        }
    }

    /// A row per reason: each state, and each thing that holds a pending file, in the order
    /// the scheduler asks them.
    #[test]
    fn each_state_and_hold_has_its_reason() {
        let now = 1_000;
        let pending = item(ItemState::Pending);
        let retry = Item {
            next_attempt_at: 2_000,
            ..pending.clone()
        };
        let video = Item {
            kind: Kind::Video,
            ..pending.clone()
        };
        let skipped = |why: &str| Item {
            last_error: Some(why.into()),
            ..item(ItemState::Skipped)
        };
        let with = |f: fn(&mut Held)| {
            let mut h = open();
            f(&mut h);
            h
        };
        // (code, item, freed_at, on the card, bytes in flight, what holds)
        type Row = (&'static str, Item, Option<i64>, bool, Option<u64>, Held);
        let rows: Vec<Row> = vec![
            ("done", item(ItemState::Done), None, true, None, open()),
            ("freed", item(ItemState::Done), Some(5), false, None, open()),
            (
                "deleted_from_card",
                item(ItemState::Done),
                None,
                false,
                None,
                open(),
            ),
            ("uploading", pending.clone(), None, true, Some(10), open()),
            (
                "uploading",
                item(ItemState::Uploading),
                None,
                true,
                None,
                open(),
            ),
            ("failed", item(ItemState::Failed), None, true, None, open()),
            (
                "cancelled",
                item(ItemState::Cancelled),
                None,
                true,
                None,
                open(),
            ),
            (
                "waiting_for_card",
                skipped(store::REASON_WAITING_FOR_CARD),
                None,
                false,
                None,
                open(),
            ),
            (
                "replaced",
                skipped(store::REASON_REPLACED),
                None,
                true,
                None,
                open(),
            ),
            (
                "deleted_before_upload",
                skipped(store::REASON_DELETED),
                None,
                false,
                None,
                open(),
            ),
            (
                "unpaired",
                pending.clone(),
                None,
                true,
                None,
                with(|h| h.unpaired = true),
            ),
            (
                "unauthorized",
                pending.clone(),
                None,
                true,
                None,
                with(|h| h.account = Some("unauthorized")),
            ),
            (
                "paused",
                pending.clone(),
                None,
                true,
                None,
                with(|h| h.paused = true),
            ),
            (
                "media_unavailable",
                pending.clone(),
                None,
                true,
                None,
                with(|h| h.media_available = false),
            ),
            (
                "clock_not_set",
                pending.clone(),
                None,
                true,
                None,
                with(|h| h.clock_set = false),
            ),
            (
                "waiting_for_retry",
                retry,
                None,
                true,
                None,
                with(|h| h.auto = vec![Block::Offline]),
            ),
            (
                "server_busy",
                pending.clone(),
                None,
                true,
                None,
                with(|h| h.server_not_before = 5_000),
            ),
            (
                "auto_upload_off",
                pending.clone(),
                None,
                true,
                None,
                with(|h| h.auto = vec![Block::AutoUploadOff]),
            ),
            (
                "network_not_allowed",
                pending.clone(),
                None,
                true,
                None,
                with(|h| h.auto = vec![Block::NetworkNotAllowed, Block::NotCharging]),
            ),
            (
                "kind_not_selected",
                video.clone(),
                None,
                true,
                None,
                with(|h| h.kinds = vec![Kind::Photo]),
            ),
            // A kind left out never goes automatically: that, not the charger it also waits on.
            (
                "kind_not_selected",
                video,
                None,
                true,
                None,
                with(|h| {
                    h.kinds = vec![Kind::Photo];
                    h.auto = vec![Block::NotCharging];
                }),
            ),
            (
                "starting_soon",
                pending.clone(),
                None,
                true,
                None,
                with(|h| h.auto_open = false),
            ),
            ("queued", pending.clone(), None, true, None, open()),
        ];
        for (code, it, freed, on_card, flight, held) in rows {
            let r = reason_of(&it, freed, on_card, flight, &held, now);
            assert_eq!(r.code, code, "{it:?} {held:?}: {}", r.message);
            assert!(r.message.ends_with('.'), "one sentence: {}", r.message);
            assert!(
                REASON_CODES.contains(&code) || Block::ALL.iter().any(|b| b.as_str() == code),
                "{code} is listed"
            );
        }
        // A manual upload waits only on what blocks manual uploads.
        let manual = Item {
            manual: true,
            ..pending
        };
        let h = with(|h| h.auto = vec![Block::NotCharging]);
        assert_eq!(reason_of(&manual, None, true, None, &h, now).code, "queued");
    }
}
