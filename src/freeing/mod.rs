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

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

mod command;

use crate::app::{App, PassReport};
use crate::config::Media;
use crate::credentials::Account;
use crate::space::{self, Card, FileFacts, Hold, Keep, OnCard, ReadBack, Server, Verdict, World};
#[cfg(test)]
use crate::store::Store;
use crate::store::{FreeCandidate, Item, SentChunk, StoreError};

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

/// The card's total and available space (to an unprivileged writer), by statvfs.
pub fn card_space(root: &Path) -> std::io::Result<Card> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(root.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed struct the call fills in.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok(Card {
        total_bytes: (st.f_blocks as u64).saturating_mul(unit),
        free_bytes: (st.f_bavail as u64).saturating_mul(unit),
    })
}

/// The facts of one moment: the world, and the candidates with their files' metadata.
struct Gathered {
    world: World,
    /// The account the candidates were gathered under: the pass asks the server with its
    /// token only (an account change stops the pass).
    account: Option<Account>,
    files: Vec<FileFacts>,
    candidates: HashMap<i64, FreeCandidate>,
}

fn policy(m: &Media) -> space::Policy {
    space::Policy {
        below_percent: m.free_space_below_percent,
        keep_days: m.keep_days,
        verify: m.free_space_verify,
        settle_secs: m.settle_secs,
    }
}

/// The world as it is now.
fn world(app: &App) -> World {
    let media = &app.config().media;
    let account = app.account_for_upload();
    World {
        consent: app.settings().free_space,
        policy: policy(media),
        card: card_space(&media.root).ok(),
        media_available: app.media_available() && crate::scan::CardRoot::of(media).present(),
        paired: account.is_some(),
        clock_set: crate::clock::is_set(),
        recording: app.recording() || recording_flag(app),
        card_read_only: crate::card::mounted_read_only(&media.root),
        now: crate::clock::now_unix(),
    }
}

/// The firmware's recording flag, by the gate's reader; unlike the gate (which uploads when the
/// flag cannot be read), freeing counts an unreadable flag as recording: a doubt keeps every
/// file, and a lasting permission error shows as a "recording" hold.
fn recording_flag(app: &App) -> bool {
    let r = crate::conditions::idle::read_recording_flag(&app.config().conditions.recording_flag);
    r.value || r.problem.is_some()
}

/// What the card shows at the file's path now (never through a symbolic link).
fn on_card(root: &Path, disk: &Path) -> OnCard {
    if crate::media::check_no_symlink(root, disk).is_err() {
        return OnCard::NotRegular;
    }
    match std::fs::symlink_metadata(disk) {
        Err(_) => OnCard::Missing,
        Ok(m) if !m.is_file() => OnCard::NotRegular,
        Ok(m) => OnCard::Present {
            size: m.len(),
            mtime_ns: crate::media::mtime_ns(&m),
            ino: m.ino(),
        },
    }
}

/// Gathers the facts; the files only when `with_files` (a pass that is held needs none).
fn gather(app: &App, with_files: bool) -> Result<Gathered, String> {
    let world = world(app);
    let mut files = Vec::new();
    let mut candidates = HashMap::new();
    let account = app.account_for_upload();
    if with_files {
        let root = &app.config().media.root;
        let region = account.as_ref().and_then(|a| a.region.clone());
        let endpoint = app
            .config()
            .cloud
            .endpoint_for(region.as_deref())
            .to_string();
        let all = app
            .free_candidates()
            .map_err(|e| format!("cannot read the backed-up files: {e}"))?;
        for c in all.into_iter().filter(|c| c.item.size > 0) {
            let it = &c.item;
            files.push(FileFacts {
                id: it.id,
                size: it.size,
                mtime_ns: it.mtime_ns,
                sent: c.sent,
                endpoint_ok: it.upload_endpoint.as_deref() == Some(endpoint.as_str()),
                on_card: on_card(root, &it.storage_path.on_disk(root)),
                server: Server::NotAsked,
                read_back: ReadBack::NotDone,
            });
            candidates.insert(it.id, c);
        }
    }
    Ok(Gathered {
        world,
        account,
        files,
        candidates,
    })
}

/// Runs [`gather`] on the blocking pool: a card of many files is many `stat`s.
async fn gather_off_thread(app: &Arc<App>, with_files: bool) -> Result<Gathered, String> {
    let a = app.clone();
    tokio::task::spawn_blocking(move || gather(&a, with_files))
        .await
        .map_err(|e| format!("the gathering task failed: {e}"))?
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
    // The holds first, without a file: most passes end here (the card is not low).
    let first = space::decide(&world(app), &[]);
    report.card = first_card(&first, app);
    report.held_by = first.holds.clone();
    if !first.may_free() {
        return report;
    }
    let g = match gather_off_thread(app, true).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "freeing space: cannot gather the facts");
            report.failures.push(e);
            return report;
        }
    };
    let Gathered {
        mut world,
        account,
        mut files,
        candidates,
    } = g;
    let d = space::decide(&world, &files);
    report.need_bytes = d.need_bytes;
    count_kept(&mut report, &d);
    if !d.may_free() {
        report.held_by = d.holds;
        return report;
    }
    tracing::info!(need_bytes = d.need_bytes, card = ?world.card, "the card is low: freeing space");
    loop {
        if stop.is_cancelled() {
            break;
        }
        let d = space::decide(&world, &files);
        if !d.may_free() {
            report.held_by = d.holds;
            break;
        }
        let Some(&(id, _)) = d
            .files
            .iter()
            .find(|(_, v)| matches!(v, Verdict::Free | Verdict::Confirm))
        else {
            break;
        };
        let at = files.iter().position(|f| f.id == id).expect("decided on");
        let mut f = files.swap_remove(at);
        let c = &candidates[&id];
        let Some(verdict) = confirm(app, &stop, account.as_ref(), &mut world, &mut f, c).await
        else {
            break;
        };
        match (verdict, f.on_card) {
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
                    &stop,
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
                *report.kept.entry(k.code()).or_default() += 1;
                if k.is_unverified() {
                    report.kept_unverified += 1;
                }
            }
            _ => {}
        }
        world.card = card_space(&app.config().media.root).ok();
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

fn first_card(d: &space::Decision, app: &App) -> Option<Card> {
    if d.holds.contains(&Hold::CardUnknown) {
        None
    } else {
        card_space(&app.config().media.root).ok()
    }
}

/// Counts the files the rules keep before any confirmation (too young, changed, unverified).
fn count_kept(report: &mut PassReport, d: &space::Decision) {
    for (_, v) in &d.files {
        if let Verdict::Keep(k) = v {
            *report.kept.entry(k.code()).or_default() += 1;
            if k.is_unverified() {
                report.kept_unverified += 1;
            }
        }
    }
}

/// Asks the server, reads back where needed, looks at the file again, and asks the rules with
/// those answers. `None`: stopped.
async fn confirm(
    app: &Arc<App>,
    stop: &CancellationToken,
    account: Option<&Account>,
    world: &mut World,
    f: &mut FileFacts,
    c: &FreeCandidate,
) -> Option<Verdict> {
    f.server = head(app, stop, account, c).await?;
    let root = app.config().media.root.clone();
    let disk = c.item.storage_path.on_disk(&root);
    // Read back whenever the server's answer leaves the file to be freed: in every mode, since
    // nothing but its bytes tells a file edited in place from the one uploaded.
    let read_back = matches!(
        space::decide(world, std::slice::from_ref(f)).files.first(),
        Some((_, Verdict::Confirm))
    );
    if read_back {
        let chunks = match app.sent_chunks(c.item.id) {
            Ok(ch) => ch,
            Err(e) => {
                return Some(Verdict::Keep(Keep::ReadBackFailed {
                    detail: e.to_string(),
                }))
            }
        };
        let path = disk.clone();
        // A stop also ends the reading itself: a large video is seconds of card reads.
        let abandon = Arc::new(AtomicBool::new(false));
        let flag = abandon.clone();
        let job = tokio::task::spawn_blocking(move || read_back_file(&path, &chunks, &flag));
        let started = std::time::Instant::now();
        f.read_back = tokio::select! {
            _ = stop.cancelled() => {
                abandon.store(true, Ordering::Relaxed);
                return None;
            }
            r = job => r.unwrap_or_else(|e| ReadBack::Failed(e.to_string())),
        };
        // What the read-back costs (benches/readback.sh reads this line).
        tracing::debug!(
            id = c.item.id,
            bytes = c.item.size,
            elapsed_us = started.elapsed().as_micros() as u64,
            "read back from the card"
        );
    }
    f.on_card = on_card(&root, &disk);
    *world = World {
        card: world.card,
        ..self::world(app)
    };
    space::decide(world, std::slice::from_ref(f))
        .files
        .into_iter()
        .next()
        .map(|(_, v)| v)
}

/// `HEAD` on the completed upload, now, with the token of the account the pass gathered it
/// under. `None`: stopped.
async fn head(
    app: &Arc<App>,
    stop: &CancellationToken,
    account: Option<&Account>,
    c: &FreeCandidate,
) -> Option<Server> {
    if stop.is_cancelled() {
        return None;
    }
    let Some(account) = account else {
        return Some(Server::Doubt("not paired".into()));
    };
    let ask = app.head_upload(&c.done_url, &account.token);
    let answer = tokio::select! {
        // A stop comes first: a HEAD is not even begun after it.
        biased;
        _ = stop.cancelled() => return None,
        r = tokio::time::timeout(HEAD_TIMEOUT, ask) => r,
    };
    let size = c.item.size;
    Some(match answer {
        Err(_) => Server::Doubt(format!("no answer to HEAD within {HEAD_TIMEOUT:?}")),
        // 404/410: the server lost it. Not a past `Upload-Expires` on an answer (tus expires
        // unfinished uploads; a server that dates a complete one is no reason to send it
        // again): that is a doubt, and the file is kept.
        Ok(Err(e)) if matches!(e.status(), Some(404 | 410)) => Server::Lost,
        Ok(Err(e)) => Server::Doubt(e.to_string()),
        Ok(Ok(st)) if st.offset == size && st.length == Some(size) => Server::Complete,
        Ok(Ok(st)) => Server::Incomplete {
            offset: st.offset,
            length: st.length,
        },
    })
}

/// Reads the file back from the card and compares each recorded chunk's SHA-1 with what was
/// sent (the `Upload-Checksum` the server checked, or the hash of the bytes as they went out).
/// Opened without following links. Whatever its inode: [`ReadBack::Same`] names the inode
/// read, which the rules compare with the file at the path at the last look.
fn read_back_file(path: &Path, chunks: &[SentChunk], abandon: &AtomicBool) -> ReadBack {
    use std::os::unix::fs::OpenOptionsExt as _;
    let failed = |e: std::io::Error| ReadBack::Failed(format!("{}: {e}", path.display()));
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    let ino = match file.metadata() {
        Ok(m) => m.ino(),
        Err(e) => return failed(e),
    };
    let mut at = 0u64;
    for c in chunks {
        if c.start != at {
            return ReadBack::Differs { at };
        }
        match crate::upload::source::sha1_of(&file, c.start, c.len, abandon) {
            Ok(sha1) if sha1 == c.sha1 => {}
            // Shorter than what was sent, or other bytes.
            Ok(_) => return ReadBack::Differs { at: c.start },
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return ReadBack::Differs { at: c.start }
            }
            Err(e) => return failed(e),
        }
        at += c.len;
    }
    ReadBack::Same { ino }
}

/// What the last look saw at a file's name: the version the rules judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    ino: u64,
    size: u64,
    mtime_ns: i64,
}

impl Seen {
    /// The same file, unchanged: a FAT or exFAT remount renumbers inodes, so this asks for the
    /// same inode only where asked to (just before a deletion, in the same mount).
    fn same_version(&self, other: &Seen) -> bool {
        self.size == other.size && self.mtime_ns == other.mtime_ns
    }
}

/// Deletes the file the rules freed, `seen` being what they judged at the last look; first a
/// durable note that it is about to go ([`Store::note_freeing`]), which the next pass settles
/// if the camera dies before the deletion is recorded, or if the deletion failed with the file
/// gone all the same (a command that deleted it and then failed).
async fn delete(
    app: &Arc<App>,
    stop: &CancellationToken,
    c: &FreeCandidate,
    seen: Seen,
) -> Result<(), String> {
    // The last look: consent, pairing, the card and recording may have changed during the
    // HEAD and the read-back.
    if stop.is_cancelled() || space::last_look(&world(app)).is_some() {
        return Err("freeing space was stopped (consent, pairing or recording)".into());
    }
    let id = c.item.id;
    app.note_freeing(id, seen.ino)
        .map_err(|e| format!("cannot note the deletion first: {e}"))?;
    let root = app.config().media.root.clone();
    let path = c.item.storage_path.on_disk(&root);
    let command = app.config().media.delete_command.clone();
    let stop = stop.clone();
    let done = tokio::task::spawn_blocking(move || {
        let done = delete_file(&root, &path, seen, command.as_deref(), &stop);
        // Whether the file the rules judged is still at its name after a failure: only then is
        // the note dropped (otherwise the next pass records what happened).
        let still_there = done.is_err()
            && matches!(version_at(&root, &path), Ok(Some(now)) if now.same_version(&seen));
        (done, still_there)
    })
    .await;
    let (done, still_there) = match done {
        Ok(d) => d,
        Err(e) => (Err(format!("the delete task failed: {e}")), false),
    };
    if still_there {
        if let Err(e) = app.forget_freeing(id) {
            tracing::warn!(error = %e, id, "cannot drop the note of a deletion that did not happen");
        }
    }
    done
}

/// Deletes the file at `path`, and only while it is the version the rules judged (`seen`:
/// the same inode, size and mtime): the directories down to it are opened one by one without
/// following a link, and the name is checked and unlinked in its directory, so a file put in
/// its place or rewritten since the last look (or a link swapped into the path) is never
/// deleted. With the firmware's command (the path as its one argument, no shell) the same check
/// comes first, but the command resolves the path itself, milliseconds later; success is its
/// exit 0 and that version gone from the name. The command is killed after [`DELETE_TIMEOUT`]
/// or when `stop` is cancelled; one that failed, timed out or was stopped after the file went
/// has deleted it all the same, and that is what is recorded.
fn delete_file(
    root: &Path,
    path: &Path,
    seen: Seen,
    command: Option<&Path>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    let (dir, name) = at_dir::open_parent(root, path).map_err(at)?;
    match at_dir::regular_file(&dir, &name).map_err(at)? {
        Some(now) if now == seen => {}
        Some(_) => return Err(format!("{} is another file now", path.display())),
        None => return Err(format!("{} is gone already", path.display())),
    }
    let Some(cmd) = command else {
        return at_dir::unlink(&dir, &name).map_err(|e| format!("unlink {}: {e}", path.display()));
    };
    if let Err(f) = command::run(cmd, path, DELETE_TIMEOUT, stop) {
        let why = f.describe(cmd);
        let gone = || {
            tracing::warn!(path = %path.display(), reason = %why, "the delete command did not succeed, but the file is gone: recorded as freed");
            Ok(())
        };
        return match at_dir::regular_file(&dir, &name) {
            // Gone from its name (or another file took it since): deleted.
            Ok(None) => gone(),
            // Another version under its name: deleted. A new inode alone proves nothing: FAT
            // and exFAT renumber inodes (a remount during the command), so the same size and
            // mtime is the same file, still there.
            Ok(Some(now)) if !now.same_version(&seen) => gone(),
            Ok(Some(_)) => Err(why),
            // Not to be told now (the card pulled): the note of the deletion settles it later.
            Err(e) => Err(format!("{why}; then {}", at(e))),
        };
    }
    match at_dir::regular_file(&dir, &name) {
        Ok(Some(now)) if now == seen => Err(format!(
            "{} exited 0 but {} is still there",
            cmd.display(),
            path.display()
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{} exited 0 but {}", cmd.display(), at(e))),
    }
}

/// The regular file at `path` under `root` (no link followed on the way), `None` when the name
/// is free; an error when its directory cannot be opened (gone: a card pulled) or the name
/// holds something else than a regular file.
fn version_at(root: &Path, path: &Path) -> std::io::Result<Option<Seen>> {
    let (dir, name) = at_dir::open_parent(root, path)?;
    at_dir::regular_file(&dir, &name)
}

/// Settles the deletions noted before a crash or power cut and never recorded: a noted file
/// gone from its path (or replaced by another inode) was deleted and is recorded as freed now;
/// one still there was not, and its note is dropped. Runs only with the card present.
async fn settle_notes(app: &Arc<App>) {
    let notes = match app.freeing_notes() {
        Ok(n) if n.is_empty() => return,
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the notes of earlier deletions");
            return;
        }
    };
    let app2 = app.clone();
    let settled =
        tokio::task::spawn_blocking(move || settle(&*app2, &app2.config().media.root, &notes))
            .await;
    match settled {
        // Each recorded and announced by App as it was settled.
        Ok(Ok(_freed)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot settle the notes of earlier deletions"),
        Err(e) => tracing::warn!(error = %e, "the task settling earlier deletions failed"),
    }
}

/// [`settle_notes`]' work, on a blocking thread: the items recorded as freed, and when.
///
/// A noted file is judged by its version (size and mtime), not its inode: a FAT or exFAT
/// remount (the reboot after a power cut) gives every file a new inode number, and a file
/// still there must never be recorded as freed. Gone from its name, or another version there:
/// deleted. Its directory gone (a card pulled) or unreadable: decided at a later pass.
fn settle(
    store: &impl Records,
    root: &Path,
    notes: &[(i64, u64)],
) -> Result<Vec<(Item, i64)>, StoreError> {
    let mut freed = Vec::new();
    for &(id, _) in notes {
        let Some(item) = store.item_if_any(id)? else {
            store.forget_freeing(id)?;
            continue;
        };
        let disk = item.storage_path.on_disk(root);
        let judged = Seen {
            ino: 0,
            size: item.size,
            mtime_ns: item.mtime_ns,
        };
        let gone = match version_at(root, &disk) {
            Ok(None) => true,
            Ok(Some(now)) => !now.same_version(&judged),
            Err(_) => continue,
        };
        if gone {
            let at = store.record_freed(&item)?;
            tracing::warn!(id, path = %item.storage_path, "a file deleted to free space before a crash, power cut or failed command is recorded as freed now");
            freed.push((item, at));
        } else {
            store.forget_freeing(id)?;
        }
    }
    Ok(freed)
}

/// Where settlement reads the noted items and writes what it found: App in the daemon (which
/// also announces each freed file), the store itself in the tests of settlement.
trait Records {
    fn item_if_any(&self, id: i64) -> Result<Option<Item>, StoreError>;
    fn forget_freeing(&self, id: i64) -> Result<(), StoreError>;
    fn record_freed(&self, item: &Item) -> Result<i64, StoreError>;
}

impl Records for App {
    fn item_if_any(&self, id: i64) -> Result<Option<Item>, StoreError> {
        App::item_if_any(self, id)
    }
    fn forget_freeing(&self, id: i64) -> Result<(), StoreError> {
        App::forget_freeing(self, id)
    }
    fn record_freed(&self, item: &Item) -> Result<i64, StoreError> {
        App::record_freed(self, item)
    }
}

#[cfg(test)]
impl Records for Store {
    fn item_if_any(&self, id: i64) -> Result<Option<Item>, StoreError> {
        self.item(id)
    }
    fn forget_freeing(&self, id: i64) -> Result<(), StoreError> {
        Store::forget_freeing(self, id)
    }
    fn record_freed(&self, item: &Item) -> Result<i64, StoreError> {
        self.mark_freed(item.id)
    }
}

/// Directory-relative file operations (`openat`, `fstatat`, `unlinkat`), for a deletion that
/// cannot be steered by a path changed under it.
mod at_dir {
    use std::ffi::{CStr, CString, OsStr};
    use std::io;
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    use std::path::{Component, Path};

    /// The directory holding `path` (under `root`, each directory opened without following a
    /// link) and the file's name in it.
    pub fn open_parent(root: &Path, path: &Path) -> io::Result<(OwnedFd, CString)> {
        let rel = path
            .strip_prefix(root)
            .map_err(|_| io::Error::other("not under the media root"))?;
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => parts.push(n),
                _ => return Err(io::Error::other("not a plain path under the media root")),
            }
        }
        let name = parts
            .pop()
            .ok_or_else(|| io::Error::other("no file name"))?;
        let mut dir = OwnedFd::from(std::fs::File::open(root)?);
        for p in parts {
            dir = open_dir_at(&dir, &c_name(p)?)?;
        }
        Ok((dir, c_name(name)?))
    }

    fn c_name(n: &OsStr) -> io::Result<CString> {
        CString::new(n.as_bytes()).map_err(|_| io::Error::other("a NUL byte in a name"))
    }

    fn open_dir_at(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is an open descriptor.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened by this call and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The regular file `name` in `dir` (not following a link): inode, size, mtime; `None`:
    /// no such name.
    pub fn regular_file(dir: &OwnedFd, name: &CStr) -> io::Result<Option<super::Seen>> {
        let mut st = std::mem::MaybeUninit::<libc::stat64>::uninit();
        // SAFETY: `name` is NUL-terminated, `st` is writable memory of the right type.
        let r = unsafe {
            libc::fstatat64(
                dir.as_raw_fd(),
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::NotFound => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: `fstatat64` returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(Some(super::Seen {
            ino: st.st_ino,
            size: st.st_size as u64,
            // As `media::mtime_ns` gives it for std's metadata.
            mtime_ns: mtime_ns_of(&st),
        }))
    }

    /// `time_t` and `long` are `i32` on 32-bit ARM, `i64` on 64-bit targets.
    #[allow(clippy::useless_conversion)]
    fn mtime_ns_of(st: &libc::stat64) -> i64 {
        i64::from(st.st_mtime)
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(st.st_mtime_nsec))
    }

    pub fn unlink(dir: &OwnedFd, name: &CStr) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is an open descriptor.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

// ----- GET /v1/space -----

/// `GET /v1/space` (and `cambackup space`): the card, the rules in force, what a pass would
/// free now and why not the rest. Deletes nothing and asks the server nothing: "would free"
/// files are still confirmed (HEAD, read-back) just before a real deletion.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceView {
    pub card: Option<Card>,
    pub rules: Rules,
    /// Why nothing would be freed now (empty: a pass would free).
    pub held_by: Vec<Hold>,
    pub target_free_bytes: Option<u64>,
    pub need_bytes: u64,
    /// Oldest first: what a pass would delete, each after the confirmations named.
    pub would_free: Vec<FileView>,
    /// Files that could be freed, but older ones free enough.
    pub not_needed: u64,
    /// Files kept, by reason.
    pub kept_by_reason: std::collections::BTreeMap<&'static str, u64>,
    /// The kept files (at most [`MAX_LISTED`]), with their reason.
    pub kept: Vec<FileView>,
    /// Files freed so far, newest first (at most [`MAX_LISTED`]).
    pub freed: Vec<FreedView>,
    pub last_pass: Option<PassReport>,
}

/// The most files a list in [`SpaceView`] holds.
pub const MAX_LISTED: usize = 200;

/// The rules in force.
#[derive(Debug, Clone, Serialize)]
pub struct Rules {
    pub free_space: crate::settings::FreeSpace,
    pub free_space_below_percent: Option<u8>,
    pub margin_percent: u64,
    pub keep_days: u32,
    pub free_space_verify: &'static str,
    /// `unlink`, or the maker's command.
    pub delete_with: String,
}

/// One file in [`SpaceView`].
#[derive(Debug, Clone, Serialize)]
pub struct FileView {
    pub id: i64,
    pub storage_path: crate::media::StoragePath,
    pub size: u64,
    /// The file's modification time (unix seconds).
    pub modified_at: i64,
    /// What is asked just before deleting it: `head`, `read_back`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub confirm: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<Keep>,
}

/// A freed file.
#[derive(Debug, Clone, Serialize)]
pub struct FreedView {
    pub id: i64,
    pub storage_path: crate::media::StoragePath,
    pub size: u64,
    pub freed_at: i64,
}

/// Builds [`SpaceView`] from the facts of now.
pub async fn preview(app: &Arc<App>) -> Result<SpaceView, String> {
    let g = gather_off_thread(app, true).await?;
    let d = space::decide(&g.world, &g.files);
    let media = &app.config().media;
    let file_view = |id: i64| {
        let it = &g.candidates[&id].item;
        FileView {
            id,
            storage_path: it.storage_path.clone(),
            size: it.size,
            modified_at: it.mtime_ns.div_euclid(1_000_000_000),
            confirm: Vec::new(),
            kept: None,
        }
    };
    let mut view = SpaceView {
        card: g.world.card,
        rules: Rules {
            free_space: g.world.consent,
            free_space_below_percent: media.free_space_below_percent,
            margin_percent: space::MARGIN_PERCENT,
            keep_days: media.keep_days,
            free_space_verify: media.free_space_verify.as_str(),
            delete_with: media
                .delete_command
                .as_ref()
                .map_or_else(|| "unlink".to_string(), |p| p.display().to_string()),
        },
        held_by: d.holds.clone(),
        target_free_bytes: d.target_free_bytes,
        need_bytes: d.need_bytes,
        would_free: Vec::new(),
        not_needed: 0,
        kept_by_reason: Default::default(),
        kept: Vec::new(),
        freed: app
            .freed_files(MAX_LISTED as u32)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(it, at)| FreedView {
                id: it.id,
                storage_path: it.storage_path,
                size: it.size,
                freed_at: at,
            })
            .collect(),
        last_pass: app.last_pass(),
    };
    for (id, v) in d.files {
        match v {
            Verdict::Free | Verdict::Confirm if view.would_free.len() < MAX_LISTED => {
                let mut f = file_view(id);
                // Asked of every file just before its deletion.
                f.confirm = vec!["head", "read_back"];
                view.would_free.push(f);
            }
            Verdict::NotNeeded => view.not_needed += 1,
            Verdict::Keep(k) => {
                *view.kept_by_reason.entry(k.code()).or_default() += 1;
                if view.kept.len() < MAX_LISTED {
                    let mut f = file_view(id);
                    f.kept = Some(k);
                    view.kept.push(f);
                }
            }
            _ => {}
        }
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use sha1::Digest as _;

    use super::*;

    #[test]
    fn statvfs_reads_a_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let c = card_space(dir.path()).unwrap();
        assert!(c.total_bytes > 0 && c.free_bytes <= c.total_bytes, "{c:?}");
        assert!(card_space(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn read_back_compares_each_chunk_with_what_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("A.JPG");
        std::fs::write(&path, b"hello world").unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        let never = AtomicBool::new(false);
        let chunk = |start: u64, bytes: &[u8]| SentChunk {
            start,
            len: bytes.len() as u64,
            sha1: sha1::Sha1::digest(bytes).into(),
            checksum: false,
            ino,
        };
        let good = [chunk(0, b"hello"), chunk(5, b" world")];
        assert_eq!(read_back_file(&path, &good, &never), ReadBack::Same { ino });
        let bad = [chunk(0, b"hello"), chunk(5, b" WORLD")];
        assert_eq!(
            read_back_file(&path, &bad, &never),
            ReadBack::Differs { at: 5 }
        );
        let longer = [chunk(0, b"hello"), chunk(5, b" world!")];
        assert_eq!(
            read_back_file(&path, &longer, &never),
            ReadBack::Differs { at: 5 }
        );
        // The same bytes on another inode (a FAT remount) read back the same, and say which
        // inode was read.
        let copy = dir.path().join("A.new");
        std::fs::write(&copy, b"hello world").unwrap();
        std::fs::rename(&copy, &path).unwrap();
        let new_ino = std::fs::metadata(&path).unwrap().ino();
        assert_ne!(new_ino, ino);
        assert_eq!(
            read_back_file(&path, &good, &never),
            ReadBack::Same { ino: new_ino }
        );
        assert!(matches!(
            read_back_file(&dir.path().join("gone"), &good, &never),
            ReadBack::Failed(_)
        ));
    }

    /// What a last look at `path` sees.
    fn seen_of(path: &Path) -> Seen {
        let m = std::fs::symlink_metadata(path).unwrap();
        Seen {
            ino: m.ino(),
            size: m.len(),
            mtime_ns: crate::media::mtime_ns(&m),
        }
    }

    #[test]
    fn a_failing_delete_command_keeps_the_file_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let path = root.join("A.JPG");
        std::fs::write(&path, b"x").unwrap();
        let ino = seen_of(&path);
        let err = delete_file(
            root,
            &path,
            ino,
            Some(Path::new("/bin/false")),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(err.contains("/bin/false failed"), "{err}");
        assert!(path.exists());
        let err = delete_file(
            root,
            &path,
            ino,
            Some(Path::new("/bin/true")),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(err.contains("still there"), "{err}");
        delete_file(
            root,
            &path,
            ino,
            Some(Path::new("/bin/rm")),
            &CancellationToken::new(),
        )
        .unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_command_that_deleted_the_file_then_failed_or_was_stopped_has_freed_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let cmd = root.join("delete.sh");
        std::fs::write(
            &cmd,
            "#!/bin/sh\nrm -- \"$1\"\necho 'index not updated' >&2\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&cmd, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = root.join("A.JPG");
        std::fs::write(&path, b"x").unwrap();
        delete_file(
            root,
            &path,
            seen_of(&path),
            Some(&cmd),
            &CancellationToken::new(),
        )
        .unwrap();
        assert!(!path.exists());
        // Deleted, then hung until freeing was stopped: freed all the same.
        std::fs::write(&cmd, "#!/bin/sh\nrm -- \"$1\"\nexec sleep 600\n").unwrap();
        std::fs::write(&path, b"x").unwrap();
        let stop = CancellationToken::new();
        let (p, s) = (path.clone(), stop.clone());
        let t = std::thread::spawn(move || {
            while p.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
            s.cancel();
        });
        delete_file(root, &path, seen_of(&path), Some(&cmd), &stop).unwrap();
        t.join().unwrap();
        // Refused and still there: kept, and the command's words say why.
        std::fs::write(&cmd, "#!/bin/sh\necho 'file locked' >&2\nexit 3\n").unwrap();
        std::fs::write(&path, b"x").unwrap();
        let err = delete_file(
            root,
            &path,
            seen_of(&path),
            Some(&cmd),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(
            err.ends_with("failed (exit status: 3): file locked"),
            "{err}"
        );
        assert!(path.exists());
        // Failed, and the file is there under a new inode with its size and mtime (as after
        // a FAT or exFAT remount, which renumbers inodes): kept, not recorded as freed.
        std::fs::write(
            &cmd,
            "#!/bin/sh\ncp -p -- \"$1\" \"$1.t\" && mv -- \"$1.t\" \"$1\"\nexit 3\n",
        )
        .unwrap();
        let seen = seen_of(&path);
        let err = delete_file(root, &path, seen, Some(&cmd), &CancellationToken::new());
        assert!(err.is_err(), "recorded as freed, yet it is on the card");
        let now = seen_of(&path);
        assert_ne!(now.ino, seen.ino, "the test needs a new inode");
        assert!(now.same_version(&seen));
    }

    #[test]
    fn only_the_file_the_rules_saw_is_deleted_never_one_put_in_its_place_or_behind_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("card");
        let sub = root.join("DCIM/100MEDIA");
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join("A.JPG");
        std::fs::write(&path, b"seen").unwrap();
        let seen = seen_of(&path);
        // Another file took the name after the last look: kept, with and without a command.
        let other = sub.join("B.tmp");
        std::fs::write(&other, b"new").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let err = delete_file(&root, &path, seen, None, &CancellationToken::new()).unwrap_err();
        assert!(err.contains("another file"), "{err}");
        let err = delete_file(
            &root,
            &path,
            seen,
            Some(Path::new("/bin/rm")),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(err.contains("another file"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // The same inode rewritten in place after the last look: kept too.
        let seen = seen_of(&path);
        std::fs::write(&path, b"rewritten").unwrap();
        assert_eq!(seen_of(&path).ino, seen.ino);
        let err = delete_file(&root, &path, seen, None, &CancellationToken::new()).unwrap_err();
        assert!(err.contains("another file"), "{err}");
        // A directory on the way swapped for a link to another one with the same name in it.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("A.JPG"), b"not on the card").unwrap();
        let ino = seen_of(&elsewhere.join("A.JPG"));
        std::fs::rename(&sub, root.join("DCIM/moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &sub).unwrap();
        assert!(delete_file(&root, &path, ino, None, &CancellationToken::new()).is_err());
        assert!(elsewhere.join("A.JPG").exists());
        // The file the rules saw goes.
        std::fs::remove_file(&sub).unwrap();
        std::fs::rename(root.join("DCIM/moved"), &sub).unwrap();
        let now = seen_of(&path);
        delete_file(&root, &path, now, None, &CancellationToken::new()).unwrap();
        assert!(!path.exists());
        assert!(
            delete_file(&root, &path, now, None, &CancellationToken::new())
                .unwrap_err()
                .contains("gone already")
        );
    }

    #[test]
    fn a_deletion_cut_before_its_record_is_recorded_at_the_next_pass_and_one_that_did_not_happen_is_forgotten(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("card");
        std::fs::create_dir_all(root.join("DCIM")).unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let mut ids = Vec::new();
        for name in ["DCIM/A.JPG", "DCIM/B.JPG", "DCIM/C.JPG", "DCIM/D.JPG"] {
            std::fs::write(root.join(name), name).unwrap();
            let m = std::fs::metadata(root.join(name)).unwrap();
            let f = crate::store::FoundFile {
                path: crate::media::StoragePath::from_stored(name.into()),
                kind: crate::media::Kind::Photo,
                size: m.len(),
                mtime_ns: crate::media::mtime_ns(&m),
            };
            store.upsert_files(&[f]).unwrap();
            let id = store.max_item_id().unwrap();
            assert!(store.mark_uploading(id).unwrap());
            store
                .set_upload_url(
                    id,
                    "http://127.0.0.1:1/files/a",
                    None,
                    "http://127.0.0.1:1/files/",
                )
                .unwrap();
            store.mark_done(id).unwrap();
            store.note_freeing(id, m.ino()).unwrap();
            ids.push(id);
        }
        // A was deleted and the power went before its record; B's name holds another file
        // now (deleted, then the camera reused the name); C was never deleted; D was never
        // deleted either, but the reboot's remount of a FAT card gave it another inode number.
        std::fs::remove_file(root.join("DCIM/A.JPG")).unwrap();
        std::fs::write(root.join("DCIM/B.new"), "another").unwrap();
        std::fs::rename(root.join("DCIM/B.new"), root.join("DCIM/B.JPG")).unwrap();
        let d = root.join("DCIM/D.JPG");
        let mtime = std::fs::metadata(&d).unwrap().modified().unwrap();
        std::fs::copy(&d, root.join("DCIM/D.new")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(root.join("DCIM/D.new"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(root.join("DCIM/D.new"), &d).unwrap();
        let notes = store.freeing_notes().unwrap();
        assert_eq!(notes.len(), 4);
        assert!(notes
            .iter()
            .any(|&(id, ino)| id == ids[3] && ino != seen_of(&d).ino));
        // With the card pulled (its directories gone), nothing is decided.
        std::fs::rename(root.join("DCIM"), dir.path().join("out")).unwrap();
        assert!(settle(&store, &root, &notes).unwrap().is_empty());
        assert_eq!(store.freeing_notes().unwrap().len(), 4);
        std::fs::rename(dir.path().join("out"), root.join("DCIM")).unwrap();
        let freed = settle(&store, &root, &notes).unwrap();
        let freed: Vec<i64> = freed.iter().map(|(i, _)| i.id).collect();
        assert_eq!(freed, ids[..2]);
        let recorded: Vec<i64> = store.freed(10).unwrap().iter().map(|(i, _)| i.id).collect();
        assert_eq!(recorded.len(), 2);
        assert!(!recorded.contains(&ids[2]) && !recorded.contains(&ids[3]));
        assert!(
            store.freeing_notes().unwrap().is_empty(),
            "every note settled"
        );
        assert!(root.join("DCIM/C.JPG").exists() && d.exists());
    }
}
