//! The card watcher: inotify (through notify) on every directory of the media tree, a watch per
//! directory added here (new ones as they appear), a settler that holds each written file back
//! until it is finished, and the card's comings and goings.
//!
//! Invariants: a file is queued only when it has been closed and unchanged (size and mtime) for
//! `settle_secs`, or unchanged for three times that when no close was seen (a writer that keeps
//! the file open, or a file found by the scan); a lost event (queue overflow) or a card that
//! comes back triggers a full rescan; a card that is gone never turns its files into "deleted";
//! symlinks are never followed (inotify does not watch through them, a linked directory is not
//! walked, and a path through a link is not queued); files that could not be queued (the state
//! disk was full) are tried again within [`RETRY_SOON`], not at the next full rescan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::app::App;
use crate::media::StoragePath;
use crate::scan::{self, Recent};
use crate::store::{Checked, FoundFile};

/// How often the card's presence is checked when nothing says it changed ([`CardSignals`]
/// tells mounts, unmounts and the root's comings and goings): a net under them, one stat.
const PRESENCE_EVERY: Duration = Duration::from_secs(300);

/// What tells the watcher to look at the card at once rather than at [`PRESENCE_EVERY`]:
/// the mount table changed (`/proc/self/mountinfo` reports `POLLPRI` at every mount and
/// unmount in the daemon's mount namespace: a card put back is a mount over the mount point,
/// which inotify cannot see), or the root's name came or went in its parent directory, or
/// the root itself was removed, moved or unmounted (inotify). Issue 29: the card was looked
/// at every 5 s before, the daemon's most frequent wake-up at rest.
struct CardSignals {
    mounts: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    names: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl CardSignals {
    /// Watches `root`'s names; what cannot be watched is left to the slow look.
    fn new(root: &Path) -> CardSignals {
        use crate::conditions::changes::register;
        use std::os::fd::{FromRawFd as _, OwnedFd};
        // SAFETY: inotify_init1 has no memory preconditions; a valid fd is owned from here.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let names = (raw >= 0)
            .then(|| register(unsafe { OwnedFd::from_raw_fd(raw) }).ok())
            .flatten();
        let s = CardSignals {
            mounts: None,
            names,
        };
        s.rewatch(root);
        s
    }

    /// Listens to the mount table only while the card is away (`on`): a card that is there
    /// tells its unmount on the root's own watch, and every other mount on the device
    /// (another program's `ip netns add`, a USB stick) would otherwise wake the daemon; a
    /// registered descriptor wakes the runtime whether or not a task waits on it, so it is
    /// closed, not just ignored. True when it was opened now: the caller looks at the card
    /// once more, for a mount between its last look and the opening.
    fn listen_to_mounts(&mut self, on: bool) -> bool {
        use crate::conditions::changes::register_for;
        match (on, self.mounts.is_some()) {
            (true, false) => {
                self.mounts = std::fs::File::open("/proc/self/mountinfo")
                    .and_then(|f| {
                        register_for(std::os::fd::OwnedFd::from(f), tokio::io::Interest::PRIORITY)
                    })
                    .ok();
                self.mounts.is_some()
            }
            (false, true) => {
                self.mounts = None;
                false
            }
            _ => false,
        }
    }

    /// (Re)sets the inotify watches: the root's parent, for the root's name, and the root
    /// itself (a card that came back is a new directory, whose watch is a new one).
    fn rewatch(&self, root: &Path) {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::ffi::OsStrExt as _;
        let Some(fd) = &self.names else { return };
        let add = |dir: &Path, mask: u32| {
            if let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) {
                // SAFETY: a valid inotify descriptor and a NUL-terminated path.
                unsafe {
                    libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask | libc::IN_ONLYDIR)
                };
            }
        };
        if let Some(parent) = root.parent() {
            add(
                parent,
                libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO,
            );
        }
        add(root, libc::IN_DELETE_SELF | libc::IN_MOVE_SELF);
    }

    /// Resolves when the card may have come or gone. Cancel-safe.
    async fn changed(&self, root: &Path) {
        use crate::conditions::changes::{drain, inotify_events, readable};
        let name = root.file_name().map(|n| n.as_encoded_bytes().to_vec());
        loop {
            let told = tokio::select! {
                g = async {
                    match &self.mounts {
                        Some(m) => m.ready(tokio::io::Interest::PRIORITY).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Ok(mut g) = g {
                        g.clear_ready();
                    }
                    true
                }
                g = readable(self.names.as_ref()) => drain(g, |buf| {
                    // The root's own events, or its name in its parent.
                    inotify_events(buf).any(|(_, mask, n)| {
                        n.is_empty()
                            || mask & libc::IN_Q_OVERFLOW != 0
                            || name.as_deref() == Some(n)
                    })
                }),
            };
            if told {
                return;
            }
        }
    }
}

/// An inotify watch on the card's root alone, read without blocking at each look at the card.
///
/// A card unmounted and mounted again between two looks comes back with the same device
/// number and root inode (a FUSE driver, or a kernel driver on the same block device), so the
/// root's identity does not tell; its watches went with the old mount, and notify does not
/// pass on the kernel's `IN_UNMOUNT`. This watch's queue keeps it (with `IN_IGNORED`) until
/// read: the next look sees the card was away and watches and scans it anew.
struct MountWatch {
    fd: std::os::fd::OwnedFd,
}

impl MountWatch {
    /// Watches `root`; `None` where inotify cannot (then only the identity tells).
    fn new(root: &Path) -> Option<MountWatch> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        use std::os::unix::ffi::OsStrExt as _;
        let path = std::ffi::CString::new(root.as_os_str().as_bytes()).ok()?;
        // SAFETY: inotify_init1 has no memory preconditions; a valid fd is owned from here.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // IN_UNMOUNT and IN_IGNORED come whatever the mask; the root removed or moved too.
        let mask = libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_ONLYDIR;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
        (wd >= 0).then_some(MountWatch { fd })
    }

    /// Whether the root was unmounted (or removed, or moved) since the watch was set.
    fn gone(&self) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut buf = [0u8; 1024];
        // SAFETY: reads at most `buf.len()` bytes into `buf`; non-blocking descriptor.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        n > 0
    }
}

/// A directory that appears while the daemon runs is walked at once and again after each of
/// these: notify hands over its Create event before it adds the directory's own watch, so a
/// file written into it in between is seen by neither the first walk nor inotify (found under
/// qemu, where the window is widest; a slow SoC has it too).
const REWALK_NEW_DIR: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(5)];

/// How soon files that could not be queued, or a scan that failed, are tried again.
pub const RETRY_SOON: Duration = Duration::from_secs(5);

/// A file being watched until it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    size: u64,
    mtime_ns: i64,
    /// A close after writing was seen since the last change.
    closed: bool,
    /// When the size/mtime were last seen to change.
    since: Instant,
    /// An event said it was written (not just found by a scan): an edit in place that kept
    /// its name, size and stamp is still a new version (store/identity.rs).
    written: bool,
}

/// A file that settled: its final size and mtime, and whether it was seen written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub written: bool,
}

/// Holds written files back until they are finished. Pure: time comes in as arguments and the
/// file system through the `stat` callback, so the rules are tested without sleeping.
#[derive(Debug)]
pub struct Settler {
    settle: Duration,
    files: HashMap<PathBuf, Entry>,
}

/// What `stat` tells the settler about a file: `(size, mtime_ns)`, or `None` if it is gone.
pub type Stat = Option<(u64, i64)>;

impl Settler {
    /// A settler with the config's `settle_secs`.
    pub fn new(settle: Duration) -> Settler {
        Settler {
            settle,
            files: HashMap::new(),
        }
    }

    /// The file was written (or created, or renamed into place).
    pub fn touched(&mut self, path: &Path, now: Instant) {
        let e = self.files.entry(path.to_path_buf()).or_insert(Entry {
            size: u64::MAX,
            mtime_ns: i64::MIN,
            closed: false,
            since: now,
            written: true,
        });
        e.closed = false;
        e.since = now;
        e.written = true;
    }

    /// The file was closed after writing.
    pub fn closed(&mut self, path: &Path, now: Instant) {
        let e = self.files.entry(path.to_path_buf()).or_insert(Entry {
            size: u64::MAX,
            mtime_ns: i64::MIN,
            closed: true,
            since: now,
            written: true,
        });
        e.closed = true;
        e.written = true;
    }

    /// A file the scan found written too recently.
    pub fn recent(&mut self, r: &Recent, now: Instant) {
        self.files.entry(r.path.clone()).or_insert(Entry {
            size: r.size,
            mtime_ns: r.mtime_ns,
            closed: false,
            since: now,
            written: false,
        });
    }

    /// The file was removed or renamed away.
    pub fn forget(&mut self, path: &Path) {
        self.files.remove(path);
    }

    /// Forgets everything under `dir` (the card went away).
    pub fn forget_under(&mut self, dir: &Path) {
        self.files.retain(|p, _| !p.starts_with(dir));
    }

    /// Files being watched.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file is being watched.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Checks every watched file and returns those that have settled, with their final size
    /// and mtime. A file whose size or mtime moved starts its wait again; a vanished one is
    /// dropped.
    pub fn due(&mut self, now: Instant, mut stat: impl FnMut(&Path) -> Stat) -> Vec<Settled> {
        let mut ready = Vec::new();
        let settle = self.settle;
        self.files.retain(|path, e| {
            let Some((size, mtime_ns)) = stat(path) else {
                return false;
            };
            if (size, mtime_ns) != (e.size, e.mtime_ns) {
                e.size = size;
                e.mtime_ns = mtime_ns;
                e.since = now;
                return true;
            }
            let quiet = now.saturating_duration_since(e.since);
            if (e.closed && quiet >= settle) || quiet >= settle * 3 {
                ready.push(Settled {
                    path: path.clone(),
                    size,
                    mtime_ns,
                    written: e.written,
                });
                return false;
            }
            true
        });
        ready
    }

    /// When `due` should next be called: soon after the earliest file could settle.
    pub fn next_check(&self) -> Option<Instant> {
        self.files
            .values()
            .map(|e| {
                e.since
                    + if e.closed {
                        self.settle
                    } else {
                        self.settle * 3
                    }
            })
            .min()
    }
}

fn stat(path: &Path) -> Stat {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.is_file().then(|| (m.len(), crate::media::mtime_ns(&m)))
}

/// What the notify thread hands to the watcher task.
enum Signal {
    Event(notify::Event),
    /// The channel was full or notify reported an error: events were lost, rescan.
    Lost,
}

/// The root's device, inode and mount: a card mounted over (or unmounted from) the mount
/// point, or a root directory replaced, changes them. The mount's unique ID (statx's
/// `STATX_MNT_ID_UNIQUE`, Linux 6.8 and later; 0 where the kernel has none) is what tells a card
/// pulled and put back (or swapped) between two looks: a FUSE card mounted again gets the same
/// anonymous device number and root inode, so the device and inode alone would miss it, and
/// the watches of the old mount would be dead.
type RootId = scan::CardId;

fn root_stat(root: &Path) -> Option<RootId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(root).ok()?;
    Some((m.dev(), m.ino(), scan::mount_id(root)))
}

/// The card's identity: `current` while the root's device, inode and mount are unchanged (a
/// stat, nothing more: listing the watched root every few seconds would wake inotify and the
/// daemon for nothing); otherwise the root's identity if the card is there
/// ([`scan::CardRoot`]), else `None`.
fn root_identity(card: scan::CardRoot, current: Option<RootId>) -> Option<RootId> {
    match current {
        Some(cur) if root_stat(card.root) == Some(cur) => Some(cur),
        _ => card.identity(),
    }
}

/// Runs the scanner and watcher until shutdown: an initial scan, inotify events through the
/// settler, a rescan every `rescan_secs`, on overflow and when the card comes back.
pub async fn run(app: Arc<App>) {
    let root = app.config().media.root.clone();
    let settle = Duration::from_secs(app.config().media.settle_secs);
    let rescan_every = Duration::from_secs(app.config().media.rescan_secs.max(1));
    let (tx, mut rx) = mpsc::channel::<Signal>(4096);
    // Set by notify's thread when an event could not be passed on (the channel full, or the
    // kernel's queue overflowed): never lost itself, unlike a `Signal::Lost` in a full channel.
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The watches are ours to add (new directories from their events): after a loss, those of
    // a directory made meanwhile may be missing, so the tree's watches are added again.
    let mut rewatch = false;
    let mut settler = Settler::new(settle);
    let mut watcher: Option<RecommendedWatcher> = None;
    let mut identity = None;
    let mut mount_watch: Option<MountWatch> = None;
    let mut need_scan = true;
    let mut next_rescan = Instant::now();
    let mut next_presence = Instant::now();
    // Settled files the store could not take (state disk full): tried again soon.
    let mut unqueued: Vec<Settled> = Vec::new();
    let mut retry_at: Option<Instant> = None;
    // A failed scan is tried again soon, then less and less often (a card of 100,000 files
    // walked every 5 s for hours while the state disk stays full would be a waste).
    let mut scan_retry = RETRY_SOON;
    // New directories to walk again (see REWALK_NEW_DIR), with when.
    let mut rewalk: Vec<(PathBuf, Instant)> = Vec::new();
    let mut signals = CardSignals::new(&root);

    loop {
        let now = Instant::now();
        if now >= next_presence {
            next_presence = now + PRESENCE_EVERY;
            let (id, appeared) = look_at_card(
                &app,
                &root,
                (&tx, &lost),
                (&mut identity, &mut watcher, &mut mount_watch),
                &mut settler,
            )
            .await;
            need_scan |= appeared;
            // Said at every look, not only on a change: a camera that starts without its card
            // has no change to report, and must not show the card as there.
            app.set_media_available(id.is_some());
            signals.rewatch(&root);
            if signals.listen_to_mounts(id.is_none()) {
                next_presence = now;
            }
        }
        if std::mem::take(&mut rewatch) {
            watch_again(&root, &mut watcher, &mut identity).await;
        }
        if (need_scan || now >= next_rescan) && identity.is_some() {
            need_scan = false;
            next_rescan = now + rescan_every;
            if full_scan(&app, &mut settler).await {
                scan_retry = RETRY_SOON;
            } else {
                next_rescan = now + scan_retry;
                scan_retry = (scan_retry * 2).min(rescan_every);
            }
        }
        if retry_at.is_some_and(|t| now >= t) {
            retry_at = None;
            if !queue(&app, &root, &mut unqueued) {
                retry_at = Some(now + RETRY_SOON);
            }
        }
        app.beat("watcher");

        let wake = next_wake(
            now,
            &[next_presence, next_rescan],
            retry_at,
            &rewalk,
            &settler,
        );
        app.rest("watcher");
        tokio::select! {
            _ = app.shutdown().cancelled() => break,
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = signals.changed(&root) => next_presence = Instant::now(),
            sig = rx.recv() => {
                if drain(&app, &mut rx, sig, &lost, &mut settler, &mut rewalk, watcher.as_mut()) {
                    need_scan = true;
                }
            }
        }
        if lost.swap(false, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!("file events were lost (queue overflow): rescanning the card");
            need_scan = true;
            rewatch = true;
        }
        settle_and_queue(
            &app,
            &root,
            &mut settler,
            &mut rewalk,
            &mut unqueued,
            &mut retry_at,
        );
        // Files still being written keep the card from being safe to format.
        app.set_settling((settler.len() + unqueued.len()) as u64);
    }
    drop(watcher);
}

/// The look at the card (when [`CardSignals`] tells, else every [`PRESENCE_EVERY`]): whether
/// it is there and the same (its root's identity, and no unmount seen), and when that changed,
/// its watches set up anew ([`card_appeared`]) or, gone, what waited to settle under it
/// forgotten. Returns the root's identity and whether a card appeared (then a scan is due).
async fn look_at_card(
    app: &App,
    root: &Path,
    (tx, lost): (&mpsc::Sender<Signal>, &Arc<std::sync::atomic::AtomicBool>),
    (identity, watcher, mount_watch): (
        &mut Option<RootId>,
        &mut Option<RecommendedWatcher>,
        &mut Option<MountWatch>,
    ),
    settler: &mut Settler,
) -> (Option<RootId>, bool) {
    let remounted = mount_watch.as_ref().is_some_and(MountWatch::gone);
    if remounted {
        tracing::info!("the card was unmounted since the last look");
    }
    let id = root_identity(
        scan::CardRoot::of(&app.config().media),
        identity.filter(|_| !remounted),
    );
    let mut appeared = false;
    if id != *identity || remounted {
        *identity = id;
        *watcher = None;
        *mount_watch = None;
        if id.is_some() {
            (*watcher, *mount_watch) = card_appeared(app, root, tx, lost).await;
            appeared = true;
        } else {
            settler.forget_under(root);
            app.set_card(crate::card::Card::default());
        }
    }
    (id, appeared)
}

/// After lost events: the tree's watches added again (those of a directory made meanwhile may
/// be missing). Without a watcher after that, all is set up from scratch at the next look at
/// the card (`identity` forgotten).
async fn watch_again(
    root: &Path,
    watcher: &mut Option<RecommendedWatcher>,
    identity: &mut Option<RootId>,
) {
    if let Some(w) = watcher.take() {
        *watcher = rewatch_all(root, w).await;
        if watcher.is_none() {
            *identity = None;
        }
    }
}

/// The card is there (anew): watches its tree (off the runtime thread, which also answers the
/// API), and reads which card it is. Returns the watcher (`None`: only the periodic rescan
/// sees changes) and the watch on its mount.
async fn card_appeared(
    app: &App,
    root: &Path,
    tx: &mpsc::Sender<Signal>,
    lost: &Arc<std::sync::atomic::AtomicBool>,
) -> (Option<RecommendedWatcher>, Option<MountWatch>) {
    let mut watcher = None;
    // Before the tree's watches: an unmount during their walk is not missed.
    let mount_watch = MountWatch::new(root);
    // A watch per directory of the card: a walk that blocks its caller, so off
    // the runtime thread, which also answers the API. The scan starts after it,
    // so a file written meanwhile is seen by one or the other.
    let (r, t, l) = (root.to_path_buf(), tx.clone(), lost.clone());
    let started = Instant::now();
    let added = tokio::task::spawn_blocking(move || watch(&r, t, l))
        .await
        .unwrap_or_else(|e| Err(notify::Error::generic(&e.to_string())));
    match added {
        Ok((w, dirs)) => {
            tracing::info!(
                dirs,
                took_ms = started.elapsed().as_millis() as u64,
                "watching the card"
            );
            app.set_watching(true);
            watcher = Some(w);
        }
        Err(e) => {
            app.set_watching(false);
            tracing::error!(root = %root.display(), error = %e,
                "cannot watch the media root; relying on the periodic rescan")
        }
    }
    // Which card it is: its serial tells a card from another that reuses its
    // names (a blocking read of its boot sector, so off the runtime thread).
    let r = root.to_path_buf();
    let card = tokio::task::spawn_blocking(move || crate::card::Card::of_root(&r))
        .await
        .unwrap_or_default();
    app.set_card(card);
    (watcher, mount_watch)
}

/// Hands the signals queued (`first`, then what waits behind it) to [`handle`], so a burst of
/// events costs one pass. True when one of them calls for a rescan.
fn drain(
    app: &App,
    rx: &mut mpsc::Receiver<Signal>,
    first: Option<Signal>,
    lost: &std::sync::atomic::AtomicBool,
    settler: &mut Settler,
    rewalk: &mut Vec<(PathBuf, Instant)>,
    mut watcher: Option<&mut RecommendedWatcher>,
) -> bool {
    let root = &app.config().media.root;
    let mut rescan = false;
    let mut sig = first;
    while let Some(s) = sig {
        match s {
            Signal::Lost => {
                lost.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Signal::Event(ev) => {
                if handle(app, root, settler, rewalk, watcher.as_deref_mut(), ev) {
                    rescan = true;
                }
            }
        }
        sig = rx.try_recv().ok();
    }
    rescan
}

/// Walks the new directories whose time came, and queues the files that settled; what the
/// store could not take is tried again within seconds (`retry_at`).
fn settle_and_queue(
    app: &App,
    root: &Path,
    settler: &mut Settler,
    rewalk: &mut Vec<(PathBuf, Instant)>,
    unqueued: &mut Vec<Settled>,
    retry_at: &mut Option<Instant>,
) {
    let now = Instant::now();
    rewalk.retain(|(dir, at)| {
        if *at > now {
            return true;
        }
        walk_new_dir(app, root, dir, settler, now);
        false
    });
    let ready = settler.due(Instant::now(), stat);
    if !ready.is_empty() {
        unqueued.extend(ready);
        if !queue(app, root, unqueued) && retry_at.is_none() {
            *retry_at = Some(Instant::now() + RETRY_SOON);
        }
    }
}

/// When the watcher's loop next has something to do: the next look at the card or rescan, the
/// next retry, the next new directory to walk again, the next settler check (not sooner than
/// 100 ms from `now`).
fn next_wake(
    now: Instant,
    due: &[Instant],
    retry_at: Option<Instant>,
    rewalk: &[(PathBuf, Instant)],
    settler: &Settler,
) -> Instant {
    let mut wake = due.iter().copied().min().unwrap_or(now);
    if let Some(t) = retry_at {
        wake = wake.min(t);
    }
    if let Some(t) = rewalk.iter().map(|(_, at)| *at).min() {
        wake = wake.min(t);
    }
    if let Some(t) = settler.next_check() {
        wake = wake.min(t.max(now + Duration::from_millis(100)));
    }
    wake
}

/// Starts inotify on the whole tree: a watch on the root and on every directory below it,
/// never through a symlink (a link to `/usr` would watch, and then queue, the system's files).
/// Returns the watcher and how many directories it watches.
///
/// The watches are added here, one directory at a time, not by notify's recursive mode: that
/// walks the tree with a `stat` of every file to find the directories (a card of 100,000
/// files: ≈ 0.5 s before the first scan could start, docs/PERFORMANCE.md), where the directory
/// entries' types say it for free. New directories get their watches from [`handle`], as
/// notify's recursive mode would have added them.
fn watch(
    root: &Path,
    tx: mpsc::Sender<Signal>,
    lost: Arc<std::sync::atomic::AtomicBool>,
) -> notify::Result<(RecommendedWatcher, usize)> {
    let config = notify::Config::default().with_follow_symlinks(false);
    let handler = move |res: notify::Result<notify::Event>| {
        let sig = match res {
            Ok(ev) if ev.need_rescan() => Signal::Lost,
            Ok(ev) => Signal::Event(ev),
            Err(_) => Signal::Lost,
        };
        if matches!(sig, Signal::Lost) {
            lost.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(sig) {
            // Dropping an event is safe only because the flag brings a full scan and the
            // watches again once the loop has drained the channel.
            lost.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let mut w = RecommendedWatcher::new(handler, config)?;
    w.watch(root, RecursiveMode::NonRecursive)?;
    let dirs = 1 + watch_below(&mut w, root)?;
    Ok((w, dirs))
}

/// Adds a watch on every directory below `dir` (whose own watch is in place), found from the
/// directory entries' types: no `stat` per file, no symlink followed. Each directory is watched
/// before it is read, so a subdirectory made meanwhile is either read here or reported by the
/// watch (then [`handle`] adds it). Returns how many watches it added.
///
/// A directory that is gone by the time its watch would be added is skipped (there is nothing
/// left to watch); any other failure (the inotify watch limit, a directory that cannot be
/// read) is the caller's, as notify's recursive mode made it.
fn watch_below(w: &mut RecommendedWatcher, dir: &Path) -> notify::Result<usize> {
    let mut added = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            // `file_type` is the entry's own (d_type; a stat without following a link only
            // where the file system does not say).
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let sub = entry.path();
            match w.watch(&sub, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    added += 1;
                    stack.push(sub);
                }
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(added)
}

/// Whether a watch failed because its directory is gone (removed or renamed meanwhile).
fn gone(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Adds the watches of the whole tree again (a no-op for a directory already watched), off the
/// runtime thread: after lost events a new directory's may be missing. `None`: the watcher
/// was lost with a failed task.
async fn rewatch_all(root: &Path, mut w: RecommendedWatcher) -> Option<RecommendedWatcher> {
    let r = root.to_path_buf();
    let added = tokio::task::spawn_blocking(move || {
        let added = watch_below(&mut w, &r);
        (w, added)
    })
    .await;
    match added {
        Ok((w, Ok(_))) => Some(w),
        Ok((w, Err(e))) => {
            tracing::warn!(root = %root.display(), error = %e, "cannot watch every directory of the card again; relying on the periodic rescan");
            Some(w)
        }
        Err(e) => {
            tracing::error!(error = %e, "the task watching the card again failed");
            None
        }
    }
}

/// Adds watches for a directory that appeared (made, or moved in) and every directory below
/// it, as notify's recursive mode did. Returns true when a rescan is needed: the inotify
/// watch limit was reached (as notify reported it), so the tree is no longer fully watched.
fn watch_new_dir(watcher: Option<&mut RecommendedWatcher>, dir: &Path) -> bool {
    let Some(w) = watcher else {
        return false;
    };
    let added = match w.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => watch_below(w, dir),
        Err(e) => Err(e),
    };
    match added {
        Ok(_) => false,
        Err(e) if gone(&e) => false,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a new directory on the card");
            matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        }
    }
}

/// Feeds one event to the settler. Returns true when a rescan is needed (the root itself went
/// away or a directory appeared whose files may predate its watch).
fn handle(
    app: &App,
    root: &Path,
    settler: &mut Settler,
    rewalk: &mut Vec<(PathBuf, Instant)>,
    mut watcher: Option<&mut RecommendedWatcher>,
    ev: notify::Event,
) -> bool {
    let now = Instant::now();
    let mut rescan = false;
    for path in &ev.paths {
        if !path.starts_with(root) {
            continue;
        }
        if path == root {
            // The root itself was removed, moved or unmounted: the presence check decides.
            // Opening or reading it (the scan does) is not news.
            if matches!(
                ev.kind,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) | EventKind::Other
            ) {
                rescan = true;
            }
            continue;
        }
        let Ok(sp) = StoragePath::under(root, path) else {
            continue;
        };
        let is_media = app.filter().classify(&sp).is_some();
        // Never `is_dir()`: it follows a link, and walking a link to `/usr` would queue (and
        // read) files outside the card.
        let is_real_dir = || std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        // A directory made or moved in gets its watches first, excluded ones too (events from
        // those are noticed as activity), so that what is written into it from now on is seen.
        let appeared = match ev.kind {
            EventKind::Create(CreateKind::Folder) => true,
            // Within the card a move also brings `Both` (old and new path): `To` suffices.
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => is_real_dir(),
            _ => false,
        };
        if appeared && watch_new_dir(watcher.as_deref_mut(), path) {
            rescan = true;
        }
        match ev.kind {
            EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Data(_))
            | EventKind::Modify(ModifyKind::Any) => {
                app.activity().note_media_write();
                if is_media {
                    settler.touched(path, now);
                } else if is_real_dir() && !app.filter().skip_dir(&sp) {
                    // Files written before the new directory's watch was added (above) would be
                    // missed: walk it now, and again shortly (REWALK_NEW_DIR).
                    walk_new_dir(app, root, path, settler, now);
                    rewalk.extend(REWALK_NEW_DIR.iter().map(|d| (path.clone(), now + *d)));
                }
            }
            EventKind::Modify(ModifyKind::Name(_)) => {
                app.activity().note_media_write();
                if is_media {
                    if path.exists() {
                        settler.touched(path, now);
                    } else {
                        settler.forget(path);
                    }
                } else if is_real_dir() {
                    rescan = true;
                }
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) if is_media => {
                settler.closed(path, now);
            }
            EventKind::Remove(_) => {
                settler.forget(path);
                if is_media {
                    forget_deleted(app, &sp);
                }
            }
            _ => {}
        }
    }
    rescan
}

/// Walks a directory that appeared while the daemon runs and hands every media file in it to
/// the settler, which judges each (a file already settling keeps its place).
fn walk_new_dir(app: &App, root: &Path, dir: &Path, settler: &mut Settler, now: Instant) {
    scan::walk(
        root,
        dir,
        app.filter(),
        Duration::MAX,
        std::time::SystemTime::now(),
        |s| {
            if let scan::Seen::Recent(r) = s {
                settler.recent(&r, now);
            }
        },
    );
}

/// A media file was deleted: drop its queued (not yet uploaded) items, unless the card itself
/// is going away (then the files are not deleted, just out of reach).
fn forget_deleted(app: &App, sp: &StoragePath) {
    if !scan::CardRoot::of(&app.config().media).present() {
        return;
    }
    app.drop_deleted(sp);
}

/// Queues settled files and empties `ready`. Returns false when the store could not take them:
/// then `ready` keeps them, to be tried again soon.
///
/// A file seen written is fingerprinted (up to 512 KiB read, once per file written while the
/// daemon runs) and settled by its content: a rewrite that kept name, size and stamp is a new
/// version, and bytes sent before under another stamp are not sent again.
fn queue(app: &App, root: &Path, ready: &mut Vec<Settled>) -> bool {
    if ready.is_empty() {
        return true;
    }
    // Files held back by an earlier failure may have changed or gone since: queue what is on
    // the card now, one entry per path (never an older version after a newer one).
    ready.sort_by(|a, b| a.path.cmp(&b.path).then(b.written.cmp(&a.written)));
    ready.dedup_by(|a, b| a.path == b.path);
    ready.retain_mut(|f| match stat(&f.path) {
        Some((s, m)) => {
            (f.size, f.mtime_ns) = (s, m);
            true
        }
        None => false,
    });
    let mut files = Vec::new();
    let mut checked = Vec::new();
    for f in ready.iter() {
        // A path through a symlink (a linked directory inside the card) is not the card's.
        if let Err(e) = crate::media::check_no_symlink(root, &f.path) {
            tracing::warn!(error = %e, "not queued");
            continue;
        }
        let Ok(sp) = StoragePath::under(root, &f.path) else {
            continue;
        };
        let Some(kind) = app.filter().classify(&sp) else {
            continue;
        };
        let found = FoundFile {
            path: sp,
            kind,
            size: f.size,
            mtime_ns: f.mtime_ns,
        };
        let fingerprint = f
            .written
            .then(|| crate::card::Fingerprint::of_path(&f.path, f.size));
        match fingerprint {
            Some(Ok(Some(fingerprint))) => checked.push(Checked {
                file: found,
                fingerprint,
                written: true,
            }),
            // Changed again since its stat: the next event brings it back.
            Some(Ok(None)) => {}
            Some(Err(e)) => {
                tracing::warn!(path = %found.path, error = %e, "cannot read a written file to fingerprint it; queued by its metadata");
                files.push(found);
            }
            None => files.push(found),
        }
    }
    match app
        .enqueue(&files)
        .and_then(|n| Ok(n + app.enqueue_checked(&checked)?))
    {
        Ok(n) => {
            for f in files.iter().chain(checked.iter().map(|c| &c.file)) {
                tracing::debug!(path = %f.path, size = f.size, "settled");
            }
            if n > 0 {
                tracing::info!(files = n, "queued new files");
            }
            ready.clear();
            true
        }
        Err(e) => {
            tracing::error!(error = %e, files = files.len() + checked.len(), "could not queue settled files; trying again in a few seconds");
            false
        }
    }
}

/// Runs a full scan; false when it failed (the caller tries again soon).
async fn full_scan(app: &Arc<App>, settler: &mut Settler) -> bool {
    app.scan_started();
    let a = app.clone();
    let started = Instant::now();
    let res = tokio::task::spawn_blocking(move || a.scan_card()).await;
    match res {
        Ok(Ok(report)) => {
            let now = Instant::now();
            for r in &report.recent {
                settler.recent(r, now);
            }
            tracing::info!(
                files = report.files,
                queued = report.queued,
                dropped = report.dropped,
                settling = report.recent.len(),
                took_ms = started.elapsed().as_millis() as u64,
                walk_ms = report.walk.as_millis() as u64,
                write_ms = report.write.as_millis() as u64,
                "scanned the card"
            );
            true
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "scan failed; trying again in a few seconds");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "scan task failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    /// Whether an event for `path` arrives within `secs`.
    async fn event_for(rx: &mut mpsc::Receiver<Signal>, path: &Path, secs: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while let Ok(Some(sig)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if matches!(&sig, Signal::Event(ev) if ev.paths.iter().any(|p| p == path)) {
                return true;
            }
        }
        false
    }

    #[tokio::test(flavor = "current_thread")]
    async fn after_lost_events_a_directory_whose_event_was_lost_is_watched_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("DCIM/100MEDIA")).unwrap();
        let (tx, mut rx) = mpsc::channel(4096);
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w, dirs) = watch(&root, tx, lost).unwrap();
        assert_eq!(dirs, 3);
        // A directory made while its event is lost (here: never handed to `handle`, so no
        // watch was added for it): a file written in it goes unseen.
        let new = root.join("DCIM/101MEDIA");
        std::fs::create_dir(&new).unwrap();
        while rx.try_recv().is_ok() {}
        std::fs::write(new.join("A.JPG"), b"a").unwrap();
        assert!(!event_for(&mut rx, &new.join("A.JPG"), 1).await);
        // What the loop does after a loss: the tree's watches again.
        let _w = rewatch_all(&root, w).await.expect("the watcher back");
        std::fs::write(new.join("B.JPG"), b"b").unwrap();
        assert!(event_for(&mut rx, &new.join("B.JPG"), 5).await);
    }

    #[test]
    fn a_closed_file_settles_after_settle_time_unchanged() {
        let t0 = Instant::now();
        let s = Duration::from_secs(10);
        let mut st = Settler::new(s);
        st.touched(&p("/c/a.mp4"), t0);
        let size = std::cell::Cell::new(100u64);
        let look = |_: &Path| Some((size.get(), 1));
        // First look records the size; the wait starts then.
        assert!(st.due(t0, look).is_empty());
        size.set(200);
        assert!(
            st.due(t0 + Duration::from_secs(5), look).is_empty(),
            "grew: wait again"
        );
        st.closed(&p("/c/a.mp4"), t0 + Duration::from_secs(5));
        assert!(
            st.due(t0 + Duration::from_secs(14), look).is_empty(),
            "closed 9 s ago"
        );
        let ready = st.due(t0 + Duration::from_secs(15), look);
        assert_eq!(
            ready,
            vec![Settled {
                path: p("/c/a.mp4"),
                size: 200,
                mtime_ns: 1,
                written: true
            }],
            "final size"
        );
        assert!(st.is_empty());
    }

    #[test]
    fn a_file_never_seen_closed_waits_three_settle_times() {
        let t0 = Instant::now();
        let mut st = Settler::new(Duration::from_secs(10));
        st.touched(&p("/c/a.mp4"), t0);
        let look = |_: &Path| Some((5, 7));
        assert!(st.due(t0, look).is_empty());
        assert!(st.due(t0 + Duration::from_secs(29), look).is_empty());
        assert_eq!(st.due(t0 + Duration::from_secs(30), look).len(), 1);
    }

    #[test]
    fn a_write_after_close_restarts_the_wait() {
        let t0 = Instant::now();
        let mut st = Settler::new(Duration::from_secs(10));
        let f = p("/c/a.mp4");
        st.touched(&f, t0);
        st.closed(&f, t0);
        let look = |_: &Path| Some((5, 7));
        assert!(st.due(t0, look).is_empty());
        st.touched(&f, t0 + Duration::from_secs(9));
        assert!(
            st.due(t0 + Duration::from_secs(10), look).is_empty(),
            "reopened, not closed"
        );
        st.closed(&f, t0 + Duration::from_secs(12));
        assert_eq!(st.due(t0 + Duration::from_secs(19), look).len(), 1);
    }

    #[test]
    fn a_vanished_file_is_dropped_and_forget_under_clears_a_card() {
        let t0 = Instant::now();
        let mut st = Settler::new(Duration::from_secs(1));
        st.touched(&p("/c/a.jpg"), t0);
        st.touched(&p("/c/b.jpg"), t0);
        st.touched(&p("/d/c.jpg"), t0);
        assert!(st
            .due(t0, |f: &Path| (f != Path::new("/c/a.jpg"))
                .then_some((1, 1)))
            .is_empty());
        assert_eq!(st.len(), 2);
        st.forget_under(Path::new("/c"));
        assert_eq!(st.len(), 1);
    }
}
