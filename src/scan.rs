//! The full scan: walks `media.root`, queues settled media files, hands recently written ones
//! to the watcher's settler, and drops queued items whose file is gone.
//!
//! Invariants: symlinks are never followed (so nothing outside the root is ever read); a file
//! modified within `settle_secs` is never queued by the scan; items are only marked deleted when
//! the same card was present before and after the walk ([`CardRoot`]: an empty or missing
//! root, or an empty mount point, means "card out", not "files deleted"); the
//! database sees a handful of transactions (batches of [`BATCH`]), not one per file.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime};

use crate::card::{stamp_is_trusted, Fingerprint};
use crate::media::{mtime_ns, MediaFilter, StoragePath};
use crate::store::{self, Checked, FoundFile, Store, StoreError};
use crate::wire::Skipped;

/// Files per database transaction.
pub const BATCH: usize = 2000;

/// A media file seen on the card whose last write is too recent to queue it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recent {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

/// One media file the walk found.
#[derive(Debug)]
pub enum Seen {
    /// Unchanged for the settle time: ready to queue.
    Settled(FoundFile),
    /// Written too recently.
    Recent(Recent),
}

/// What a scan did.
#[derive(Debug, Default)]
pub struct Report {
    /// Media files seen.
    pub files: u64,
    /// Items added to the queue (new files or new versions).
    pub queued: usize,
    /// Items dropped because their file is gone (or replaced).
    pub dropped: usize,
    /// Files still being written (or just written): for the settler.
    pub recent: Vec<Recent>,
    /// Entries that could not be read (permissions, I/O errors), with the reason.
    pub unreadable: u64,
    /// Every entry the walk left out, by reason (`unreadable` among them): `status.skipped`.
    pub skipped: Skipped,
    /// The card was missing before or after the walk, or another card was there after it: what
    /// the walk found is queued, but nothing it missed counts as deleted or unreadable.
    pub card_gone: bool,
    /// Time spent walking the card, and writing the database (the two overlap).
    pub walk: Duration,
    pub write: Duration,
}

/// Why the walk leaves an entry of the card out: the codes of `status.skipped` and of
/// `GET /v1/files/{path}`'s reason. No entry the walk meets is left out without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftOut {
    /// Not a photo or video extension of the config.
    ExcludedType,
    /// Matched by `media.exclude` (a file, or a directory not walked).
    ExcludedPath,
    /// A symbolic link: never followed, so nothing outside the card is read.
    Link,
    /// A FIFO, socket or device.
    NotRegularFile,
    /// Could not be read (permissions, card errors, a name the root cannot hold).
    Unreadable,
}

impl LeftOut {
    /// Every reason (the docs test compares them with INTERFACE.md and the OpenAPI file).
    #[cfg(test)]
    pub const ALL: [LeftOut; 5] = [
        LeftOut::ExcludedType,
        LeftOut::ExcludedPath,
        LeftOut::Link,
        LeftOut::NotRegularFile,
        LeftOut::Unreadable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeftOut::ExcludedType => "excluded_type",
            LeftOut::ExcludedPath => "excluded_path",
            LeftOut::Link => "link",
            LeftOut::NotRegularFile => "not_regular_file",
            LeftOut::Unreadable => "unreadable",
        }
    }

    /// Counts one entry left out for this reason.
    pub fn count(self, s: &mut Skipped) {
        let n = match self {
            LeftOut::ExcludedType => &mut s.excluded_type,
            LeftOut::ExcludedPath => &mut s.excluded_path,
            LeftOut::Link => &mut s.link,
            LeftOut::NotRegularFile => &mut s.not_regular_file,
            LeftOut::Unreadable => &mut s.unreadable,
        };
        *n += 1;
    }

    /// Why a file the filter refused is left out: its type, or its path.
    fn of_refused(filter: &MediaFilter, path: &StoragePath) -> LeftOut {
        if filter.has_media_extension(path) {
            LeftOut::ExcludedPath
        } else {
            LeftOut::ExcludedType
        }
    }
}

/// What one path on the card is now, judged by the walk's own rules: what `why` says of a
/// file the queue does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnCard {
    /// Nothing there.
    Missing,
    /// The walk leaves it out.
    LeftOut(LeftOut),
    /// A media file written within `settle_secs` (`secs_ago` since its last write).
    Unsettled {
        size: u64,
        mtime_ns: i64,
        secs_ago: u64,
    },
    /// A media file the walk would queue.
    Media { size: u64, mtime_ns: i64 },
}

/// Looks at one storage path on the card as the walk would: every directory on the way
/// (not a link, not excluded, readable), then the entry itself (a regular media file, settled
/// or not). Never follows a link; reads nothing outside `root`.
pub fn look_at(
    root: &Path,
    filter: &MediaFilter,
    settle: Duration,
    path: &StoragePath,
    now: SystemTime,
) -> OnCard {
    let on_disk = path.on_disk(root);
    let Ok(rel) = on_disk.strip_prefix(root) else {
        return OnCard::Missing;
    };
    let names: Vec<_> = rel.components().map(|c| c.as_os_str()).collect();
    let (mut at, mut dsp) = (root.to_path_buf(), None::<StoragePath>);
    for (i, name) in names.iter().enumerate() {
        // As the walk reads it: the directory's listing must be readable.
        match std::fs::read_dir(&at) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return OnCard::Missing,
            Err(_) => return OnCard::LeftOut(LeftOut::Unreadable),
        }
        at.push(name);
        let Some(sp) = StoragePath::child(dsp.as_ref(), name) else {
            return OnCard::LeftOut(LeftOut::Unreadable);
        };
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return OnCard::Missing,
            Err(_) => return OnCard::LeftOut(LeftOut::Unreadable),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            return OnCard::LeftOut(LeftOut::Link);
        }
        if i + 1 < names.len() {
            if !ft.is_dir() {
                return OnCard::Missing;
            }
            if filter.skip_dir(&sp) {
                return OnCard::LeftOut(LeftOut::ExcludedPath);
            }
            dsp = Some(sp);
            continue;
        }
        if !ft.is_file() {
            return OnCard::LeftOut(LeftOut::NotRegularFile);
        }
        if filter.classify_in_checked_dir(&sp).is_none() {
            return OnCard::LeftOut(LeftOut::of_refused(filter, &sp));
        }
        let judge = Judge::new(filter, settle, now);
        let mtime = mtime_ns(&meta);
        let age = (judge.now_ns - i128::from(mtime)).max(0);
        return if age < judge.settle_ns {
            OnCard::Unsettled {
                size: meta.len(),
                mtime_ns: mtime,
                secs_ago: (age / 1_000_000_000) as u64,
            }
        } else {
            OnCard::Media {
                size: meta.len(),
                mtime_ns: mtime,
            }
        };
    }
    OnCard::Missing
}

/// The card's root and the rule that tells whether the card is in it: the one place every
/// "is the card there" question is answered (the watcher, the scan, the scheduler, freeing).
#[derive(Debug, Clone, Copy)]
pub struct CardRoot<'a> {
    /// `media.root`.
    pub root: &'a Path,
    /// `media.mount_required`: the root must be a mount point (another device than its parent).
    pub mount_required: bool,
}

impl<'a> CardRoot<'a> {
    /// The card as the maker's config describes it.
    pub fn of(media: &'a crate::config::Media) -> CardRoot<'a> {
        CardRoot {
            root: &media.root,
            mount_required: media.mount_required,
        }
    }

    /// Whether the card is there. Without `mount_required`: the root is a readable directory
    /// with something in it, since an empty directory is all a removed card leaves behind (so a
    /// freshly formatted, empty card reads as absent until something is written to it). With
    /// it: the root is a readable mount point, empty or not; an empty directory on the
    /// parent's file system (no card behind the mount point, as at a boot without one) is not
    /// a card, nor is anything written into it.
    pub fn present(&self) -> bool {
        self.identity().is_some()
    }

    /// The root's device and inode while the card is there, `None` while it is not: the same
    /// answer before and after a walk means the walk saw one card throughout.
    pub fn identity(&self) -> Option<CardId> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(self.root).ok()?;
        if !meta.is_dir() {
            return None;
        }
        let mut entries = std::fs::read_dir(self.root).ok()?;
        if self.mount_required {
            // Lexically, not `..`: a root reached through a symbolic link is judged against the
            // directory the maker named it in. `/` has no parent (the config refuses it).
            let parent = std::fs::metadata(self.root.parent()?).ok()?;
            if parent.dev() == meta.dev() {
                return None;
            }
        } else if entries.next().is_none() {
            return None;
        }
        Some((meta.dev(), meta.ino(), mount_id(self.root)))
    }
}

/// The card as its root shows it: device, inode and mount ID ([`mount_id`]).
pub type CardId = (u64, u64, u64);

/// The unique ID of the mount `path` is on (statx's `STATX_MNT_ID_UNIQUE`, Linux 6.8 and
/// later; 0 where the kernel has none). It tells a card pulled and put back (or swapped)
/// between two looks: a FUSE card mounted again gets the same anonymous device number and root
/// inode, so the device and inode alone would miss it, and the watches of the old mount would
/// be dead.
pub fn mount_id(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: a zeroed plain C struct, filled in by the call.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct the call fills in.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            0,
            libc::STATX_MNT_ID_UNIQUE,
            &mut stx,
        )
    };
    if rc == 0 && stx.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0 {
        stx.stx_mnt_id
    } else {
        0
    }
}

/// Walks `dir` (the root or a subdirectory of it) and returns settled media files and recent
/// ones. Never follows symlinks; skips excluded and hidden directories.
pub fn walk(
    root: &Path,
    dir: &Path,
    filter: &MediaFilter,
    settle: Duration,
    now: SystemTime,
    mut seen: impl FnMut(Seen),
) -> u64 {
    let Some(top) = start(root, dir) else {
        return 1;
    };
    let judge = Judge::new(filter, settle, now);
    let mut skipped = Skipped::default();
    let mut stack = vec![top];
    while let Some(d) = stack.pop() {
        let subdirs = judge.read(d, &mut seen, &mut skipped);
        // Popped in name order next.
        stack.extend(subdirs.into_iter().rev());
    }
    skipped.unreadable
}

/// A directory still to read: where it is, and its storage path (`None`: the media root).
type Dir = (PathBuf, Option<StoragePath>);

/// The first directory of a walk of `dir`; `None` (and a warning) when it is not in `root`.
fn start(root: &Path, dir: &Path) -> Option<Dir> {
    if dir == root {
        return Some((dir.to_path_buf(), None));
    }
    match StoragePath::under(root, dir) {
        Ok(sp) => Some((dir.to_path_buf(), Some(sp))),
        Err(e) => {
            tracing::warn!(error = %e, "not walking a directory outside the media root");
            None
        }
    }
}

/// What a walk needs to judge each entry.
struct Judge<'a> {
    filter: &'a MediaFilter,
    now_ns: i128,
    settle_ns: i128,
}

impl<'a> Judge<'a> {
    fn new(filter: &'a MediaFilter, settle: Duration, now: SystemTime) -> Judge<'a> {
        let now_ns = match now.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        Judge {
            filter,
            now_ns,
            settle_ns: settle.as_nanos() as i128,
        }
    }

    /// Reads one directory: hands each media file in it to `seen`, and returns its
    /// subdirectories to walk, in name order.
    ///
    /// Per entry it costs what `find -printf '%s %T@'` costs (a `statx` relative to the
    /// directory, and only for media files) plus one allocation: each name's storage path is
    /// its directory's plus the name, never re-derived from the whole path.
    fn read(&self, (d, dsp): Dir, seen: &mut impl FnMut(Seen), skipped: &mut Skipped) -> Vec<Dir> {
        let mut subdirs = Vec::new();
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "cannot read a directory on the card");
                LeftOut::Unreadable.count(skipped);
                return subdirs;
            }
        };
        // In name order: the files reach the database in nearly the order of its path index,
        // so its inserts land on the same few pages (a third less work than directory order).
        let mut entries: Vec<_> = entries.flatten().map(|e| (e.file_name(), e)).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, entry) in entries {
            // `file_type` comes from the directory entry (d_type): no stat, no symlink followed.
            let Ok(ft) = entry.file_type() else {
                LeftOut::Unreadable.count(skipped);
                continue;
            };
            let Some(sp) = StoragePath::child(dsp.as_ref(), &name) else {
                tracing::warn!(dir = %d.display(), name = ?name, "skipping a name the media root cannot hold");
                LeftOut::Unreadable.count(skipped);
                continue;
            };
            if ft.is_dir() {
                if self.filter.skip_dir(&sp) {
                    LeftOut::ExcludedPath.count(skipped);
                } else {
                    subdirs.push((d.join(&name), Some(sp)));
                }
                continue;
            }
            if !ft.is_file() {
                let why = if ft.is_symlink() {
                    LeftOut::Link
                } else {
                    LeftOut::NotRegularFile
                };
                why.count(skipped);
                continue;
            }
            let Some(kind) = self.filter.classify_in_checked_dir(&sp) else {
                LeftOut::of_refused(self.filter, &sp).count(skipped);
                continue;
            };
            // `statx` relative to the directory, not following a link (std's `DirEntry`).
            let Ok(meta) = entry.metadata() else {
                LeftOut::Unreadable.count(skipped);
                continue;
            };
            let mtime = mtime_ns(&meta);
            // A file dated in the future (a clock set back) is as recent as can be.
            let age = (self.now_ns - i128::from(mtime)).max(0);
            if age < self.settle_ns {
                seen(Seen::Recent(Recent {
                    path: d.join(&name),
                    size: meta.len(),
                    mtime_ns: mtime,
                }));
            } else {
                seen(Seen::Settled(FoundFile {
                    path: sp,
                    kind,
                    size: meta.len(),
                    mtime_ns: mtime,
                }));
            }
        }
        subdirs
    }
}

/// Directories still to read, shared by the scan's walkers: each takes one and gives back the
/// subdirectories it found. The walk is over when none is left and no walker is reading one
/// (it might still give back more).
struct Shared {
    /// The directories, and how many walkers are reading one.
    state: Mutex<(Vec<Dir>, usize)>,
    changed: Condvar,
}

impl Shared {
    fn new(top: Dir) -> Shared {
        Shared {
            state: Mutex::new((vec![top], 0)),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Dir>, usize)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next directory to read, and the token that says a walker is reading it; `None`
    /// when the walk is over.
    fn take(&self) -> Option<(Dir, Reading<'_>)> {
        let mut s = self.lock();
        loop {
            if let Some(d) = s.0.pop() {
                s.1 += 1;
                return Some((d, Reading(self)));
            }
            if s.1 == 0 {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The subdirectories found in a directory being read (before its [`Reading`] is dropped).
    fn give_back(&self, subdirs: Vec<Dir>) {
        // Taken in name order next (the stack's top is its end).
        self.lock().0.extend(subdirs.into_iter().rev());
    }
}

/// A directory being read. Dropping it, even while a walker panics, tells the others: they
/// never wait for it forever, and the panic reaches the scan's caller.
struct Reading<'a>(&'a Shared);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.lock().1 -= 1;
        self.0.changed.notify_all();
    }
}

/// Walkers for the full scan: the walk is mostly `statx` calls, which run in parallel.
fn walkers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// What one walker of the scan collected.
#[derive(Default)]
struct Walked {
    files: u64,
    skipped: Skipped,
    recent: Vec<Recent>,
    /// The open items of the snapshot judged in the directories this walker read, and the
    /// ones of them to drop.
    judged: usize,
    drops: Drops,
    /// The directories whose open items this walker judged ([`dir_key`]).
    judged_dirs: Hashes,
    /// Files whose identity needs their content (store/identity.rs), fingerprinted.
    checks: Vec<Checked>,
    /// What the queue holds in a directory could not be read: the walker stopped there.
    error: Option<StoreError>,
}

fn hash_of(parts: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// The hasher of sets whose keys are [`hash_of`] values already: hashing them a second time
/// (std's default hasher) would double the hashing per file for nothing.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys come here (`write_u64`); anything else still hashes, if poorly.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A set of [`hash_of`] values.
type Hashes = HashSet<u64, BuildHasherDefault<Prehashed>>;

/// An open item of the snapshot, as a walker found it in the queue on reaching its directory:
/// judged once the directory is read.
struct OpenItem {
    id: i64,
    version: u64,
    path: u64,
    /// From another card than the one in the slot (both known): if not seen, it waits for it.
    away: bool,
}

/// The open items to drop, by reason: applied only once the walk is over and the card was
/// there throughout it.
#[derive(Default)]
struct Drops {
    deleted: Vec<i64>,
    replaced: Vec<i64>,
    waiting: Vec<i64>,
}

impl Drops {
    /// An open item whose version the walk did not see, where `path_seen` says whether a file
    /// was seen at its path.
    fn add(&mut self, id: i64, away: bool, path_seen: bool) {
        if away {
            self.waiting.push(id);
        } else if path_seen {
            self.replaced.push(id);
        } else {
            self.deleted.push(id);
        }
    }

    fn extend(&mut self, other: Drops) {
        self.deleted.extend(other.deleted);
        self.replaced.extend(other.replaced);
        self.waiting.extend(other.waiting);
    }

    /// Only items still pending or failed by now are touched ([`Store::mark_skipped_many`]).
    fn apply(&self, store: &Store) -> Result<usize, StoreError> {
        Ok(
            store.mark_skipped_many(&self.deleted, store::REASON_DELETED)?
                + store.mark_skipped_many(&self.replaced, store::REASON_REPLACED)?
                + store.mark_skipped_many(&self.waiting, store::REASON_WAITING_FOR_CARD)?,
        )
    }
}

/// The key of a directory in the judged sets: its storage path's hash (`""`: the root).
fn dir_key(dir: Option<&StoragePath>) -> u64 {
    hash_of(dir.map_or("", StoragePath::as_str))
}

/// The key of the directory a queued item's storage path is in (see [`dir_key`]).
fn parent_key(path: &str) -> u64 {
    hash_of(path.rsplit_once('/').map_or("", |(dir, _)| dir))
}

/// The ids of the items open when the scan started: the ones it may drop. One bit an id over
/// the span of the open ids (1,000,000 items in a row: 122 KiB, where their identities took
/// 32 MiB), or a sorted list where they are sparser than one in 64; an id outside the span
/// (opened between the span's reading and the ids') goes to the list too.
#[derive(Debug, Default)]
pub(crate) struct IdSet {
    /// The id of `bits`' first bit (a multiple of 64).
    base: i64,
    bits: Vec<u64>,
    list: Vec<i64>,
}

impl IdSet {
    /// Words the bits may take beyond one an id before a list is the cheaper.
    const SLACK_WORDS: i128 = 1024;

    /// An empty set for `count` ids from `span.0` to `span.1`.
    fn for_span(span: Option<(i64, i64)>, count: usize) -> IdSet {
        let mut set = IdSet::default();
        if let Some((lo, hi)) = span.filter(|(lo, hi)| lo <= hi) {
            let words = i128::from(hi.div_euclid(64)) - i128::from(lo.div_euclid(64)) + 1;
            if words <= count as i128 + Self::SLACK_WORDS {
                set.base = lo.div_euclid(64) * 64;
                set.bits = vec![0; words as usize];
            } else {
                set.list.reserve(count);
            }
        }
        set
    }

    /// Where `id`'s bit is, if in the bits' span.
    fn bit(&self, id: i64) -> Option<(usize, u64)> {
        let at = i128::from(id) - i128::from(self.base);
        (0..self.bits.len() as i128 * 64)
            .contains(&at)
            .then(|| ((at / 64) as usize, 1u64 << (at % 64)))
    }

    fn insert(&mut self, id: i64) {
        match self.bit(id) {
            Some((w, bit)) => self.bits[w] |= bit,
            None => self.list.push(id),
        }
    }

    /// Sorts the list; to call once every id is in.
    fn finish(&mut self) {
        self.list.sort_unstable();
        self.list.dedup();
    }

    fn contains(&self, id: i64) -> bool {
        match self.bit(id) {
            Some((w, bit)) => self.bits[w] & bit != 0,
            None => self.list.binary_search(&id).is_ok(),
        }
    }

    /// How many ids are in (counted: asked twice a scan).
    fn len(&self) -> usize {
        self.bits
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>()
            + self.list.len()
    }
}

/// A file's identity as the sets hold it: its path's hash and its size and mtime, hashed.
fn version_of(path: u64, size: u64, mtime_ns: i64) -> u64 {
    hash_of((path, size, mtime_ns))
}

/// Whether a known version seen on `card` must be checked by content before it is taken for
/// the one the queue holds: the item knows its content, and either it came from another card
/// (a reformatted one, or a second one reusing its names) or, where a card is unknown, its
/// stamp says nothing (the 1980 floor of a camera without a clock). A card that keeps its
/// serial and real stamps costs no read.
fn needs_content(item_card: Option<&str>, card: Option<&str>, mtime_ns: i64) -> bool {
    match (item_card, card) {
        (Some(a), Some(b)) => a != b,
        _ => !stamp_is_trusted(mtime_ns),
    }
}

/// The full scan. Walking and writing overlap: [`walkers`] threads walk the card (sharing its
/// directories) and hand batches to a writer thread, so the scan takes about as long as the
/// slowest of them, not the sum. `serial`: the serial of the card in the slot, if known.
///
/// A file whose (path, size, mtime) the queue knows is taken as known without a read, unless
/// [`needs_content`] says otherwise; one at a path and size whose sent version has a
/// fingerprint, under another mtime (a time zone, another reader), is read too: in both cases
/// the store settles it by content ([`Store::settle_contents`]).
pub fn scan(
    card: CardRoot,
    filter: &MediaFilter,
    store: &Store,
    settle: Duration,
    serial: Option<&str>,
) -> Result<Report, StoreError> {
    let root = card.root;
    let now = SystemTime::now();
    let mut report = Report::default();
    let before = card.identity();
    let open = &open_ids(store)?;
    // With no open item (a first scan, or a card whose files are all sent) nothing is judged,
    // and where the queue holds nothing in a directory the walkers hash nothing there.
    let judging = open.len() > 0;
    let Some(top) = start(root, root) else {
        unreachable!("the root is in itself")
    };
    let dirs = &Shared::new(top);
    let judge = &Judge::new(filter, settle, now);

    let wide = store.wide_checkpoints();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(2);
    let walk_started = std::time::Instant::now();
    let (mut walked, written) = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let mut queued = 0;
            let mut busy = Duration::ZERO;
            for (mut batch, known_paths) in rx {
                let t = std::time::Instant::now();
                // In key order, inserts touch the index b-tree's pages in sequence.
                batch.sort_unstable_by(|a, b| a.path.cmp(&b.path));
                queued += store.upsert_with_hint(&batch, serial, |f| {
                    !known_paths.is_empty() && known_paths.contains(&hash_of(f.path.as_str()))
                })?;
                busy += t.elapsed();
            }
            Ok::<(usize, Duration), StoreError>((queued, busy))
        });
        let walkers: Vec<_> = (0..walkers())
            .map(|_| {
                let tx = tx.clone();
                s.spawn(move || {
                    Walker {
                        store,
                        serial,
                        judging,
                        open,
                        root,
                        tx,
                        w: Walked::default(),
                        batch: (Vec::with_capacity(BATCH), Hashes::default()),
                        dir: None,
                        loaded: false,
                        known: Known::default(),
                        here: (Hashes::default(), Hashes::default()),
                    }
                    .walk(dirs, judge)
                })
            })
            .collect();
        drop(tx);
        let walked: Vec<Walked> = walkers
            .into_iter()
            .map(|w| w.join().expect("scan walker thread panicked"))
            .collect();
        report.walk = walk_started.elapsed();
        let written = writer.join().expect("scan writer thread panicked");
        (walked, written)
    });
    if let Some(e) = walked.iter_mut().find_map(|w| w.error.take()) {
        return Err(e);
    }
    let (queued, write) = written?;
    report.queued = queued;
    report.write = write;
    let checks: Vec<Checked> = walked
        .iter_mut()
        .flat_map(|w| std::mem::take(&mut w.checks))
        .collect();
    report.queued += store.settle_contents(&checks, serial)?;
    let seen = merge(walked, &mut report);

    // A card pulled (or swapped) during the walk makes what the walk missed neither deleted
    // nor unreadable: the walk is judged only when one card was there before and after it.
    if before.is_some() && card.identity() == before {
        let mut drops = seen.drops;
        if seen.judged < open.len() {
            unwalked(store, open, &seen.judged_dirs, serial, &mut drops)?;
        }
        report.dropped = drops.apply(store)?;
    } else {
        report.card_gone = true;
        report.unreadable = 0;
        report.skipped = Skipped::default();
    }
    drop(wide);
    Ok(report)
}

/// Adds the walkers' counts to the report, and merges what they judged.
fn merge(walked: Vec<Walked>, report: &mut Report) -> Walked {
    let mut seen = Walked::default();
    for w in walked {
        report.files += w.files;
        let (all, one) = (&mut report.skipped, &w.skipped);
        all.excluded_type += one.excluded_type;
        all.excluded_path += one.excluded_path;
        all.link += one.link;
        all.not_regular_file += one.not_regular_file;
        all.unreadable += one.unreadable;
        report.unreadable = all.unreadable;
        report.recent.extend(w.recent);
        seen.judged += w.judged;
        seen.drops.extend(w.drops);
        seen.judged_dirs.extend(w.judged_dirs);
    }
    seen
}

/// The open items of the snapshot in directories no walker judged (gone, unreadable, or
/// without a media file left): none of their files was seen, so each is deleted, or waits for
/// its card. One pass over the open items, only when some were not judged during the walk.
fn unwalked(
    store: &Store,
    open: &IdSet,
    judged_dirs: &Hashes,
    serial: Option<&str>,
    drops: &mut Drops,
) -> Result<(), StoreError> {
    store.for_each_open_identity(|it| {
        if open.contains(it.id) && !judged_dirs.contains(&parent_key(it.path)) {
            drops.add(it.id, store::other_card(it.card, serial), false);
        }
    })
}

/// What the queue holds in one directory, as hashes: a known file costs no database write,
/// and a new path needs no look for an older version to replace. Loaded per directory as a
/// walker reaches it ([`Store::for_each_identity_in`]), so a scan holds one directory's worth,
/// never the whole queue's (at 1,000,000 files the whole queue's sets were 36 MiB; issue 29).
#[derive(Default)]
struct Known {
    /// Versions the queue has (a revivable one excepted).
    versions: Hashes,
    paths: Hashes,
    /// Versions to check by content ([`needs_content`]).
    verify: Hashes,
    /// (path, size) of sent versions with a fingerprint.
    sent_sizes: Hashes,
    /// The directory's items of the snapshot of open items, to judge once it is read.
    open: Vec<OpenItem>,
}

impl Known {
    /// Reads the identities of the items in `dir` (`None`: the root); `serial`: the card in
    /// the slot. Keeps the sets' room for the next directory.
    fn load(
        &mut self,
        store: &Store,
        dir: Option<&StoragePath>,
        serial: Option<&str>,
        open: &IdSet,
    ) -> Result<(), StoreError> {
        self.versions.clear();
        self.paths.clear();
        self.verify.clear();
        self.sent_sizes.clear();
        self.open.clear();
        store.for_each_identity_in(dir, |it| {
            let path = hash_of(it.path);
            let version = version_of(path, it.size, it.mtime_ns);
            if open.contains(it.id) {
                self.open.push(OpenItem {
                    id: it.id,
                    version,
                    path,
                    away: store::other_card(it.card, serial),
                });
            }
            if !it.revivable {
                self.versions.insert(version);
            }
            if it.fingerprinted && needs_content(it.card, serial, it.mtime_ns) {
                self.verify.insert(version);
            }
            if it.done && it.fingerprinted {
                self.sent_sizes.insert(hash_of((path, it.size)));
            }
            self.paths.insert(path);
        })
    }
}

/// The open items when the scan starts: the ones the walk judges. Items queued or revived
/// while it runs (a manual upload, the settler) were not in this snapshot and are left alone.
/// Only their ids are kept: each walker reads a directory's items as it reaches it
/// ([`Known::load`]) and judges the snapshot's among them once it has read the directory, so
/// a scan holds one directory's open items, not the whole queue's (issue 29).
fn open_ids(store: &Store) -> Result<IdSet, StoreError> {
    let (span, count) = store.open_id_span()?;
    let mut open = IdSet::for_span(span, count);
    store.for_each_open_identity(|it| open.insert(it.id))?;
    open.finish();
    Ok(open)
}

/// Files for the writer, and the hashes of those of their paths the queue holds (the others
/// need no look for an older version to replace).
type Batch = (Vec<FoundFile>, Hashes);

/// One walker thread: takes directories from the shared stack, judges their entries against
/// what the queue holds, and hands the files to queue to the writer in batches.
struct Walker<'a> {
    store: &'a Store,
    /// The card in the slot.
    serial: Option<&'a str>,
    /// The queue held open items when the scan started ([`open_ids`]): a walker judges the
    /// ones of each directory it reads.
    judging: bool,
    open: &'a IdSet,
    root: &'a Path,
    tx: std::sync::mpsc::SyncSender<Batch>,
    w: Walked,
    batch: Batch,
    /// The directory being read (`None`: the root), and whether `known` holds its items yet:
    /// loaded at its first media file, so a directory of directories (`DCIM`) costs no read.
    dir: Option<StoragePath>,
    loaded: bool,
    known: Known,
    /// The versions and paths of the files seen in the directory, while it has open items.
    here: (Hashes, Hashes),
}

impl Walker<'_> {
    /// Walks until no directory is left, then hands over the last batch.
    fn walk(mut self, dirs: &Shared, judge: &Judge<'_>) -> Walked {
        let mut skipped = Skipped::default();
        while let Some((d, reading)) = dirs.take() {
            (self.dir, self.loaded) = (d.1.clone(), false);
            self.here.0.clear();
            self.here.1.clear();
            dirs.give_back(judge.read(d, &mut |found| self.seen(found), &mut skipped));
            drop(reading);
            if self.w.error.is_some() {
                break;
            }
            if self.loaded {
                self.judge_dir();
            }
        }
        if !self.batch.0.is_empty() {
            let _ = self.tx.send(self.batch);
        }
        self.w.skipped = skipped;
        self.w
    }

    /// The directory just read: its open items of the snapshot whose version was not seen in
    /// it are to drop (once the walk is over), and it counts as judged.
    fn judge_dir(&mut self) {
        let (versions, paths) = &self.here;
        for it in self.known.open.drain(..) {
            self.w.judged += 1;
            if !versions.contains(&it.version) {
                self.w.drops.add(it.id, it.away, paths.contains(&it.path));
            }
        }
        self.w.judged_dirs.insert(dir_key(self.dir.as_ref()));
    }

    /// One media file the walk found.
    fn seen(&mut self, found: Seen) {
        self.w.files += 1;
        // The directory's items are read at its first media file: a settled one to tell known
        // files from new ones, a recent one only to judge the open items.
        if !self.loaded && (self.judging || matches!(found, Seen::Settled(_))) {
            self.loaded = true;
            let dir = self.dir.as_ref();
            if let Err(e) = self.known.load(self.store, dir, self.serial, self.open) {
                self.w.error = Some(e);
            }
        }
        if self.w.error.is_some() {
            return;
        }
        let judging = !self.known.open.is_empty();
        match found {
            Seen::Settled(f) => {
                let mut path_known = None;
                if judging || !self.known.paths.is_empty() {
                    let path = hash_of(f.path.as_str());
                    let version = version_of(path, f.size, f.mtime_ns);
                    if judging {
                        self.here.0.insert(version);
                        self.here.1.insert(path);
                    }
                    let known = self.known.versions.contains(&version);
                    let check = self.known.verify.contains(&version)
                        || (!known && self.known.sent_sizes.contains(&hash_of((path, f.size))));
                    if check {
                        match Fingerprint::of_path(&f.path.on_disk(self.root), f.size) {
                            Ok(Some(fingerprint)) => {
                                self.w.checks.push(Checked {
                                    file: f,
                                    fingerprint,
                                    written: false,
                                });
                                return;
                            }
                            // Changed meanwhile: the watcher or the next scan sees its final form.
                            Ok(None) => return,
                            Err(e) => {
                                tracing::warn!(path = %f.path, error = %e, "cannot read a file to check its content");
                            }
                        }
                    }
                    if known {
                        return;
                    }
                    path_known = self.known.paths.contains(&path).then_some(path);
                }
                if let Some(path) = path_known {
                    self.batch.1.insert(path);
                }
                self.batch.0.push(f);
                if self.batch.0.len() >= BATCH {
                    let full = (Vec::with_capacity(BATCH), Hashes::default());
                    // The writer only stops early on a database error, which its join reports.
                    let _ = self.tx.send(std::mem::replace(&mut self.batch, full));
                }
            }
            Seen::Recent(r) => {
                // Written too recently to queue, but there: a queued item of this very version (a
                // manual request, one the settler queued, or a file whose mtime is ahead of a
                // clock that started at 1970) is neither deleted nor replaced.
                let sp = judging.then(|| StoragePath::under(self.root, &r.path));
                if let Some(Ok(sp)) = sp {
                    let path = hash_of(sp.as_str());
                    self.here.0.insert(version_of(path, r.size, r.mtime_ns));
                    self.here.1.insert(path);
                }
                self.w.recent.push(r);
            }
        }
    }
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
