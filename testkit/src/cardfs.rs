//! A FAT32 card image served through FUSE: rust-fatfs (`fatfs`) reads and writes the image made
//! by `mkfs.vfat -F 32`, and `fuser` serves it (`mount(2)` on `/dev/fuse` as root, no libfuse).
//! The FAT32 driver of testkit's [`crate::card::Card`] (issue 23).
//!
//! Why not Debian's `fusefat`: under load it now and then handed out wrong bytes, twice alike,
//! so a checksum could not tell (docs/cards.md). This driver is small enough to read: every
//! operation goes to one worker thread that owns the [`fatfs::FileSystem`] (it is not `Send`),
//! one at a time, so nothing is read while something else writes.
//!
//! What it keeps of FAT, because the daemon must live with it on a real card:
//! - inode numbers exist only for one mount: a per-mount counter in the order names are first
//!   seen (as fusefat and exfat-fuse number them), so a remount renumbers every file;
//! - stamps are FAT's: local time without a zone (the mount's `utc_offset_secs` turns them into
//!   Unix time, both ways, as a kernel `vfat` mount with `time_offset=` does), 2-second mtime
//!   resolution, clamped to 1980-01-01 00:00 and 2107-12-31 (the kernel's clamp), an access
//!   date without a time;
//! - names are case-insensitive and keep the case they were written in (`img_0001.jpg` opens
//!   `IMG_0001.JPG`; creating it writes into the existing file);
//! - a file stops at 4 GiB − 1: a write or a `truncate` past it fails with `EFBIG`;
//! - the volume serial and label stay in the boot sector, where `mkfs.vfat` put them; the
//!   mount's source (`/proc/self/mountinfo`) is the image's path, so the daemon reads them
//!   there as it reads a block device's;
//! - `statfs` gives the card's real size and free clusters.
//!
//! And what it does not: files have no owner or mode (all show the mount's `uid`/`gid`,
//! `0755`/`0644`; `chmod` is ignored as `vfat`'s `quiet` option does), a directory's stamps are
//! not set, a directory is not moved to another parent (`EXDEV`, so `mv` copies: fatfs 0.3 does
//! not rewrite its `..` entry), a rename that only changes case does nothing (the kernel takes
//! both names for one inode and never asks), and an unlinked file is gone for the handles still
//! open on it.
//!
//! Writes go straight to the image (the image is always what fatfs last wrote, so a reader of
//! its boot sector never sees a stale one); small reads (FAT entries, directory entries) come
//! from a page cache of the image, which the writes keep current. `fsync` syncs the image;
//! unmounting lets fatfs write its FSInfo sector and clear the dirty flag, so `fsck.vfat -n`
//! finds the image clean.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// The kernel may cache names and attributes this long: every change goes through this mount.
const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;
/// FAT32's largest file: its size field is 32 bits.
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;
/// 1980-01-01 00:00:00 and 2107-12-31 23:59:58, as seconds of local time from 1970.
const DOS_FLOOR: i64 = 315_532_800;
const DOS_CEIL: i64 = 4_354_819_198;

/// How the card is mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Mounted read-only: the image is opened read-only and every change is `EROFS`.
    pub read_only: bool,
    /// The local time the card's stamps are in, as seconds east of UTC (Tokyo: 32,400).
    pub utc_offset_secs: i64,
    /// The owner every file shows.
    pub uid: u32,
    /// The group every file shows.
    pub gid: u32,
}

/// A mounted card image. Dropping it unmounts it (see [`Mounted::unmount`]).
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    worker: Option<JoinHandle<io::Result<()>>>,
    mountpoint: PathBuf,
    /// The FUSE connection's number (the mount's minor device), to abort it if need be.
    connection: u32,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .field("connection", &self.connection)
            .finish()
    }
}

/// Serves the FAT image `image` at `dir` (an existing directory; what is in it is hidden).
/// Fails if the image holds no FAT file system or the mount cannot be made (not root, no
/// `/dev/fuse`).
pub fn mount(image: &Path, dir: &Path, options: &Options) -> io::Result<Mounted> {
    let file = std::fs::File::options()
        .read(true)
        .write(!options.read_only)
        .open(image)?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (jobs, jobs_rx) = mpsc::channel::<Job>();
    let opts = options.clone();
    let worker = std::thread::Builder::new()
        .name("cardfs".into())
        .spawn(move || worker(file, opts, ready_tx, jobs_rx))?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = worker.join();
            return Err(io::Error::new(
                e.kind(),
                format!("{}: not a FAT file system: {e}", image.display()),
            ));
        }
        Err(_) => return Err(io::Error::other("the card's worker thread died")),
    }
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        // The mount's source: where the daemon reads the volume's serial and label.
        fuser::MountOption::FSName(image.to_string_lossy().into_owned()),
        fuser::MountOption::Subtype("cardfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    if options.read_only {
        config.mount_options.push(fuser::MountOption::RO);
    }
    config.acl = fuser::SessionACL::All;
    let session = match fuser::spawn_mount(CardFs { jobs }, dir, &config) {
        Ok(s) => s,
        Err(e) => {
            // The file system (with the job sender) is dropped: the worker ends.
            let _ = worker.join();
            return Err(e);
        }
    };
    let connection = libc::minor(std::fs::metadata(dir)?.dev());
    Ok(Mounted {
        session: Some(session),
        worker: Some(worker),
        mountpoint: dir.to_path_buf(),
        connection,
    })
}

impl Mounted {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts (lazily if a file is held open, as a card pulled from its slot), waits until
    /// every open file is closed and the image written, at most 10 s (then the connection is
    /// aborted: the holder gets `ENOTCONN`), and returns fatfs's last write's outcome.
    pub fn unmount(mut self) -> io::Result<()> {
        self.end()
    }

    /// Serves until the mount is unmounted from outside (`umount DIR`), then lets fatfs write
    /// its last sectors; returns that outcome. For `testkit`'s `cardfs` command.
    pub fn wait(mut self) -> io::Result<()> {
        if let Some(session) = self.session.take() {
            let _ = session.join();
        }
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the card's worker thread panicked")),
            None => Ok(()),
        }
    }

    fn end(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let c = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes())
            .map_err(io::Error::other)?;
        // SAFETY: a valid C string; umount2 has no memory preconditions.
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            // Busy: detach it; the session ends when the last open file is closed.
            // SAFETY: as above.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !session.guard.is_finished() {
            abort_connection(self.connection);
        }
        let _ = session.join();
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the card's worker thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// Aborts FUSE connection `n` through fusectl (mounted here if it is not yet).
fn abort_connection(n: u32) {
    let dir = Path::new("/sys/fs/fuse/connections");
    if !dir.join(n.to_string()).exists() {
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let (src, target, fstype) = (c("fusectl"), c("/sys/fs/fuse/connections"), c("fusectl"));
        // SAFETY: valid C strings, no data argument.
        unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }
    let _ = std::fs::write(dir.join(n.to_string()).join("abort"), "1");
}

/// One operation, run on the worker thread, which replies to the kernel itself.
type Job = Box<dyn FnOnce(&mut Volume) + Send>;

/// The FUSE side: hands each request to the worker, in the order the kernel sent them.
struct CardFs {
    jobs: mpsc::Sender<Job>,
}

impl CardFs {
    /// Queues `job`; if the worker is gone its reply is dropped, which answers `EIO`.
    fn run(&self, job: impl FnOnce(&mut Volume) + Send + 'static) {
        let _ = self.jobs.send(Box::new(job));
    }
}

/// Owns the file system: mounts it, runs every job, and unmounts it (FSInfo written, the
/// dirty flag cleared) once the FUSE session has ended.
fn worker(
    file: std::fs::File,
    options: Options,
    ready: mpsc::Sender<io::Result<()>>,
    jobs: mpsc::Receiver<Job>,
) -> io::Result<()> {
    let sync = file.try_clone()?;
    let disk = match Disk::new(file) {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let pages = disk.pages.clone();
    // fatfs asks a `&'static` clock for "now": one per mount, a few bytes, kept.
    let clock: &'static Clock = Box::leak(Box::new(Clock {
        offset: options.utc_offset_secs,
    }));
    let fs = match fatfs::FileSystem::new(disk, fatfs::FsOptions::new().time_provider(clock)) {
        Ok(fs) => fs,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let mut root = Node::new(ROOT, String::new(), true);
    root.mtime = UNIX_EPOCH;
    root.atime = UNIX_EPOCH;
    let mut vol = Volume {
        fs,
        sync,
        pages,
        nodes: HashMap::from([(ROOT, root)]),
        next_ino: ROOT + 1,
        options,
    };
    let _ = ready.send(Ok(()));
    for job in jobs {
        job(&mut vol);
    }
    let Volume { fs, sync, .. } = vol;
    fs.unmount()?;
    if !vol_read_only(&sync) {
        sync.sync_all()?;
    }
    Ok(())
}

fn vol_read_only(f: &std::fs::File) -> bool {
    // SAFETY: fcntl F_GETFL on an open descriptor.
    let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(f), libc::F_GETFL) };
    flags & libc::O_ACCMODE == libc::O_RDONLY
}

/// The time fatfs stamps writes with: now, in the mount's local time.
#[derive(Debug)]
struct Clock {
    offset: i64,
}

impl fatfs::TimeProvider for Clock {
    fn get_current_date(&self) -> fatfs::Date {
        to_dos(SystemTime::now(), self.offset).date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        to_dos(SystemTime::now(), self.offset)
    }
}

/// `t` as FAT stores it: local time (`offset` seconds east of UTC), clamped to FAT's years.
fn to_dos(t: SystemTime, offset: i64) -> fatfs::DateTime {
    let unix = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64) - 1,
    };
    let local = unix.saturating_add(offset).clamp(DOS_FLOOR, DOS_CEIL);
    let (y, m, d) = civil_from_days(local.div_euclid(86_400));
    let s = local.rem_euclid(86_400);
    fatfs::DateTime {
        date: fatfs::Date {
            year: y as u16,
            month: m as u16,
            day: d as u16,
        },
        time: fatfs::Time {
            hour: (s / 3600) as u16,
            min: (s / 60 % 60) as u16,
            sec: (s % 60) as u16,
            millis: 0,
        },
    }
}

/// A FAT local date and time as Unix time.
fn from_dos(dt: fatfs::DateTime, offset: i64) -> SystemTime {
    let days = days_from_civil(
        i64::from(dt.date.year),
        i64::from(dt.date.month),
        i64::from(dt.date.day),
    );
    let t = &dt.time;
    let local = days * 86_400 + i64::from(t.hour) * 3600 + i64::from(t.min) * 60 + i64::from(t.sec);
    let unix = local - offset;
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day counted from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The image, read and written at positions. Writes go straight through; reads smaller than
/// a sector (FAT entries, directory entries: what fatfs reads one at a time, thousands per
/// operation) come from a page cache that the writes keep current. File data (a cluster, or
/// what is left of one) is read from the image directly.
struct Disk {
    file: std::fs::File,
    pos: u64,
    len: u64,
    pages: Pages,
}

/// The page cache, shared with [`Volume::write_raw`] (on the worker thread only).
type Pages = Rc<RefCell<HashMap<u64, Box<[u8]>>>>;

/// Writes `buf` at `at` of the image and into the cached pages it covers.
fn write_through(file: &std::fs::File, pages: &Pages, at: u64, buf: &[u8]) -> io::Result<usize> {
    let n = file.write_at(buf, at)?;
    let (start, end) = (at, at + n as u64);
    let mut pages = pages.borrow_mut();
    for p in start / PAGE..end.div_ceil(PAGE) {
        if let Some(page) = pages.get_mut(&p) {
            let (from, to) = (start.max(p * PAGE), end.min((p + 1) * PAGE));
            page[(from - p * PAGE) as usize..(to - p * PAGE) as usize]
                .copy_from_slice(&buf[(from - start) as usize..(to - start) as usize]);
        }
    }
    Ok(n)
}

const PAGE: u64 = 4096;
/// Reads shorter than this are metadata: cached.
const SMALL: usize = 512;
/// At most 64 MiB cached (a 32 GB card's FAT is 4 MiB); past it the cache starts again.
const MAX_PAGES: usize = 16_384;

impl Disk {
    fn new(file: std::fs::File) -> io::Result<Disk> {
        let len = file.metadata()?.len();
        Ok(Disk {
            file,
            pos: 0,
            len,
            pages: Rc::default(),
        })
    }

    /// Copies what page `n` holds from `at` into `buf`; returns how many bytes.
    fn read_page(&mut self, n: u64, at: usize, buf: &mut [u8]) -> io::Result<usize> {
        let mut pages = self.pages.borrow_mut();
        if !pages.contains_key(&n) {
            if pages.len() >= MAX_PAGES {
                pages.clear();
            }
            let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
            let mut got = 0;
            while got < buf.len() {
                match self.file.read_at(&mut buf[got..], n * PAGE + got as u64)? {
                    0 => break,
                    k => got += k,
                }
            }
            pages.insert(n, buf);
        }
        let page = &pages[&n];
        let k = buf.len().min(page.len() - at);
        buf[..k].copy_from_slice(&page[at..at + k]);
        Ok(k)
    }
}

impl Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let max = buf.len().min((self.len - self.pos) as usize);
        let n = if max < SMALL {
            let at = (self.pos % PAGE) as usize;
            self.read_page(self.pos / PAGE, at, &mut buf[..max])?
        } else {
            self.file.read_at(&mut buf[..max], self.pos)?
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = write_through(&self.file, &self.pages, self.pos, buf)?;
        let end = self.pos + n as u64;
        self.pos = end;
        self.len = self.len.max(end);
        Ok(n)
    }

    /// Nothing to do: every write is in the image already (fatfs calls this at each file's
    /// drop); `fsync` syncs the image.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Disk {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

type Fat = fatfs::FileSystem<Disk>;

/// A file or directory as this mount knows it.
#[derive(Debug)]
struct Node {
    parent: u64,
    /// Its name as written on the card (the long name, in its case).
    name: String,
    dir: bool,
    size: u64,
    mtime: SystemTime,
    atime: SystemTime,
    /// A directory's entries, once listed: every change goes through this mount, so the list
    /// stays what the card holds.
    children: Option<Children>,
}

impl Node {
    fn new(parent: u64, name: String, dir: bool) -> Node {
        Node {
            parent,
            name,
            dir,
            size: 0,
            mtime: UNIX_EPOCH,
            atime: UNIX_EPOCH,
            children: None,
        }
    }
}

/// A directory's entries in the card's order, and by case-folded name.
#[derive(Debug, Default)]
struct Children {
    order: Vec<u64>,
    by_name: HashMap<String, u64>,
}

/// What a directory entry says.
struct Meta {
    name: String,
    dir: bool,
    size: u64,
    mtime: SystemTime,
    atime: SystemTime,
}

/// FAT compares names without case (fatfs upper-cases both).
fn fold(name: &str) -> String {
    name.chars().flat_map(char::to_uppercase).collect()
}

/// The worker's state: the file system and this mount's inodes.
struct Volume {
    fs: Fat,
    sync: std::fs::File,
    pages: Pages,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    options: Options,
}

/// fatfs's errors as the kernel's.
fn errno(e: io::Error) -> Errno {
    if let Some(n) = e.raw_os_error() {
        return Errno::from_i32(n);
    }
    let msg = e.to_string();
    match e.kind() {
        io::ErrorKind::NotFound => Errno::ENOENT,
        io::ErrorKind::AlreadyExists => Errno::EEXIST,
        io::ErrorKind::InvalidInput => Errno::EINVAL,
        io::ErrorKind::WriteZero => Errno::ENOSPC,
        _ if msg.contains("No space") => Errno::ENOSPC,
        _ if msg.contains("not empty") => Errno::ENOTEMPTY,
        _ if msg.contains("Is a directory") => Errno::EISDIR,
        _ if msg.contains("Not a directory") => Errno::ENOTDIR,
        _ => Errno::EIO,
    }
}

/// A name as FAT can hold it: UTF-8, not `.` or `..`.
fn name_of(name: &OsStr) -> Result<String, Errno> {
    match name.to_str() {
        Some("." | "..") | Some("") => Err(Errno::EINVAL),
        Some(s) => Ok(s.to_string()),
        None => Err(Errno::EINVAL),
    }
}

fn zeros(f: &mut impl Write, mut n: u64) -> io::Result<()> {
    let z = [0u8; 65_536];
    while n > 0 {
        let k = n.min(z.len() as u64) as usize;
        f.write_all(&z[..k])?;
        n -= k as u64;
    }
    Ok(())
}

impl Volume {
    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.options.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// The path of `ino` from the root, `/`-separated, as fatfs opens it.
    fn path(&self, ino: u64) -> Result<String, Errno> {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let n = self.node(at)?;
            names.push(n.name.as_str());
            at = n.parent;
        }
        names.reverse();
        Ok(names.join("/"))
    }

    fn dir(&self, ino: u64) -> Result<fatfs::Dir<'_, Disk>, Errno> {
        if ino == ROOT {
            return Ok(self.fs.root_dir());
        }
        self.fs.root_dir().open_dir(&self.path(ino)?).map_err(errno)
    }

    fn file(&self, ino: u64) -> Result<fatfs::File<'_, Disk>, Errno> {
        let n = self.node(ino)?;
        if n.dir {
            return Err(Errno::EISDIR);
        }
        self.fs
            .root_dir()
            .open_file(&self.path(ino)?)
            .map_err(errno)
    }

    fn meta(&self, e: &fatfs::DirEntry<'_, Disk>) -> Meta {
        let off = self.options.utc_offset_secs;
        let a = e.accessed();
        Meta {
            name: e.file_name(),
            dir: e.is_dir(),
            size: e.len(),
            mtime: from_dos(e.modified(), off),
            atime: from_dos(
                fatfs::DateTime {
                    date: a,
                    time: fatfs::Time {
                        hour: 0,
                        min: 0,
                        sec: 0,
                        millis: 0,
                    },
                },
                off,
            ),
        }
    }

    /// Reads directory `ino`'s entries into the table, once.
    fn list(&mut self, ino: u64) -> Result<(), Errno> {
        let n = self.node(ino)?;
        if !n.dir {
            return Err(Errno::ENOTDIR);
        }
        if n.children.is_some() {
            return Ok(());
        }
        let mut metas = Vec::new();
        for e in self.dir(ino)?.iter() {
            let e = e.map_err(errno)?;
            let name = e.file_name();
            if name != "." && name != ".." {
                metas.push(self.meta(&e));
            }
        }
        let mut children = Children::default();
        for m in metas {
            let child = self.next_ino;
            self.next_ino += 1;
            children.by_name.insert(fold(&m.name), child);
            children.order.push(child);
            self.nodes.insert(child, node_of(ino, m));
        }
        self.nodes.get_mut(&ino).expect("listed").children = Some(children);
        Ok(())
    }

    /// The entry `name` of directory `parent`, whatever its case.
    fn child(&mut self, parent: u64, name: &str) -> Result<u64, Errno> {
        self.list(parent)?;
        let n = self.node(parent)?;
        n.children
            .as_ref()
            .and_then(|c| c.by_name.get(&fold(name)).copied())
            .ok_or(Errno::ENOENT)
    }

    /// What the card's entry of `ino` says now.
    fn reread(&self, ino: u64) -> Result<Meta, Errno> {
        let n = self.node(ino)?;
        let want = fold(&n.name);
        for e in self.dir(n.parent)?.iter() {
            let e = e.map_err(errno)?;
            if fold(&e.file_name()) == want {
                return Ok(self.meta(&e));
            }
        }
        Err(Errno::ENOENT)
    }

    /// Takes `ino`'s size and stamps from the card again, after a change.
    fn refresh(&mut self, ino: u64) -> Result<FileAttr, Errno> {
        let m = self.reread(ino)?;
        let n = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        n.size = m.size;
        n.mtime = m.mtime;
        n.atime = m.atime;
        Ok(self.attr(ino))
    }

    /// Adds the entry `name` just made in `parent` to the table.
    fn add(&mut self, parent: u64, name: &str) -> Result<u64, Errno> {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes
            .insert(ino, Node::new(parent, name.to_string(), false));
        let m = match self.reread(ino) {
            Ok(m) => m,
            Err(e) => {
                self.nodes.remove(&ino);
                return Err(e);
            }
        };
        let mut node = node_of(parent, m);
        if node.dir {
            node.children = Some(Children::default());
        }
        self.nodes.insert(ino, node);
        let c = self.children_mut(parent);
        c.by_name.insert(fold(name), ino);
        c.order.push(ino);
        Ok(ino)
    }

    fn children_mut(&mut self, dir: u64) -> &mut Children {
        self.nodes
            .get_mut(&dir)
            .and_then(|n| n.children.as_mut())
            .expect("a listed directory")
    }

    /// Takes `ino` out of its directory's list (and, if `forget`, out of the table).
    fn detach(&mut self, ino: u64, forget: bool) {
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        let (parent, key) = (n.parent, fold(&n.name));
        let c = self.children_mut(parent);
        c.by_name.remove(&key);
        c.order.retain(|&i| i != ino);
        if forget {
            self.nodes.remove(&ino);
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let n = &self.nodes[&ino];
        let cluster = self.fs.cluster_size();
        FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(u64::from(cluster)) * u64::from(cluster / 512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind: if n.dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if n.dir { 0o755 } else { 0o644 },
            nlink: if n.dir { 2 } else { 1 },
            uid: self.options.uid,
            gid: self.options.gid,
            rdev: 0,
            blksize: cluster,
            flags: 0,
        }
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<FileAttr, Errno> {
        let ino = self.child(parent, name)?;
        Ok(self.attr(ino))
    }

    /// A size change (zeros written to grow, as FAT keeps no holes) and stamps.
    fn setattr(
        &mut self,
        ino: u64,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        let n = self.node(ino)?;
        if size.is_none() && atime.is_none() && mtime.is_none() {
            // chmod, chown: FAT has neither; ignored, as vfat's `quiet` does.
            return Ok(self.attr(ino));
        }
        self.writable()?;
        if n.dir {
            if size.is_some() {
                return Err(Errno::EISDIR);
            }
            // fatfs sets no directory stamps.
            return Ok(self.attr(ino));
        }
        let old = n.size;
        let off = self.options.utc_offset_secs;
        let at = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        {
            let mut f = self.file(ino)?;
            if let Some(len) = size {
                if len > MAX_FILE_SIZE {
                    return Err(Errno::EFBIG);
                }
                if len < old {
                    f.seek(SeekFrom::Start(len)).map_err(errno)?;
                    f.truncate().map_err(errno)?;
                } else if len > old {
                    f.seek(SeekFrom::End(0)).map_err(errno)?;
                    zeros(&mut f, len - old).map_err(errno)?;
                }
                if len != old && mtime.is_none() {
                    #[allow(deprecated)] // fatfs 0.3's only way to set a stamp
                    f.set_modified(to_dos(SystemTime::now(), off));
                }
            }
            if let Some(t) = mtime {
                #[allow(deprecated)]
                f.set_modified(to_dos(at(t), off));
            }
            if let Some(t) = atime {
                #[allow(deprecated)]
                f.set_accessed(to_dos(at(t), off).date);
            }
            f.flush().map_err(errno)?;
        }
        self.refresh(ino)
    }

    fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let len = self.node(ino)?.size;
        if offset >= len {
            return Ok(Vec::new());
        }
        let want = (len - offset).min(u64::from(size)) as usize;
        let mut buf = vec![0u8; want];
        let mut f = self.file(ino)?;
        f.seek(SeekFrom::Start(offset)).map_err(errno)?;
        let mut got = 0;
        while got < want {
            match f.read(&mut buf[got..]).map_err(errno)? {
                0 => break,
                k => got += k,
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        self.writable()?;
        let old = self.node(ino)?.size;
        if offset >= MAX_FILE_SIZE && !data.is_empty() {
            return Err(Errno::EFBIG);
        }
        let n = data
            .len()
            .min((MAX_FILE_SIZE - offset.min(MAX_FILE_SIZE)) as usize);
        {
            let mut f = self.file(ino)?;
            if offset > old {
                // FAT has no holes: the gap is written out, as vfat does.
                f.seek(SeekFrom::End(0)).map_err(errno)?;
                zeros(&mut f, offset - old).map_err(errno)?;
            } else {
                f.seek(SeekFrom::Start(offset)).map_err(errno)?;
            }
            f.write_all(&data[..n]).map_err(errno)?;
            f.flush().map_err(errno)?;
        }
        self.refresh(ino)?;
        Ok(n as u32)
    }

    fn create(&mut self, parent: u64, name: &str, flags: i32) -> Result<FileAttr, Errno> {
        self.writable()?;
        if let Ok(ino) = self.child(parent, name) {
            if flags & libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            if self.node(ino)?.dir {
                return Err(Errno::EISDIR);
            }
            if flags & libc::O_TRUNC != 0 {
                return self.setattr(ino, Some(0), None, None);
            }
            return Ok(self.attr(ino));
        }
        self.dir(parent)?.create_file(name).map_err(errno)?;
        let ino = self.add(parent, name)?;
        Ok(self.attr(ino))
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Result<FileAttr, Errno> {
        self.writable()?;
        if self.child(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        let before = self.fat().map_err(errno)?;
        self.dir(parent)?.create_dir(name).map_err(errno)?;
        self.fix_new_dir(&before, parent == ROOT).map_err(errno)?;
        let ino = self.add(parent, name)?;
        Ok(self.attr(ino))
    }

    /// The image's geometry and first FAT.
    fn fat(&self) -> io::Result<Geometry> {
        let mut boot = [0u8; 512];
        self.sync.read_exact_at(&mut boot, 0)?;
        let u16_at = |i: usize| u64::from(u16::from_le_bytes([boot[i], boot[i + 1]]));
        let u32_at = |i: usize| {
            u64::from(u32::from_le_bytes(
                boot[i..i + 4].try_into().expect("4 bytes"),
            ))
        };
        let (bps, reserved, fats) = (u16_at(11), u16_at(14), u64::from(boot[16]));
        let fat_len = u32_at(36) * bps;
        let mut fat = vec![0u8; fat_len as usize];
        self.sync.read_exact_at(&mut fat, reserved * bps)?;
        Ok(Geometry {
            cluster: bps * u64::from(boot[13]),
            data: reserved * bps + fats * fat_len,
            fat,
        })
    }

    /// fatfs 0.3 writes a new directory's `.` and `..` each after a long-name entry, and gives
    /// `..` the root's cluster where FAT32 wants 0: `fsck.vfat` then renames them and says the
    /// directory shares the root's clusters. The new directory's cluster (the one that went
    /// from free to used and starts with those entries) is rewritten as FAT wants it: `.`,
    /// `..`, nothing else.
    fn fix_new_dir(&self, before: &Geometry, in_root: bool) -> io::Result<()> {
        let after = self.fat()?;
        let entries = |fat: &[u8]| -> Vec<u32> {
            fat.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) & 0x0FFF_FFFF)
                .collect()
        };
        let (old, new) = (entries(&before.fat), entries(&after.fat));
        for (x, (o, n)) in old.iter().zip(&new).enumerate().skip(2) {
            if *o != 0 || *n == 0 {
                continue;
            }
            let at = after.data + (x as u64 - 2) * after.cluster;
            let mut head = [0u8; 128];
            self.sync.read_exact_at(&mut head, at)?;
            let is_lfn = |e: &[u8]| e[11] == 0x0F;
            if !(is_lfn(&head[0..32])
                && &head[32..43] == b".          "
                && is_lfn(&head[64..96])
                && &head[96..107] == b"..         ")
            {
                continue;
            }
            let mut fixed = [0u8; 128];
            fixed[0..32].copy_from_slice(&head[32..64]);
            fixed[32..64].copy_from_slice(&head[96..128]);
            if in_root {
                // `..` of a directory in the root: cluster 0 (high and low halves).
                fixed[32 + 20..32 + 22].fill(0);
                fixed[32 + 26..32 + 28].fill(0);
            }
            write_through(&self.sync, &self.pages, at, &fixed)?;
            return Ok(());
        }
        Err(io::Error::other(
            "the new directory's cluster was not found in the FAT",
        ))
    }

    fn remove(&mut self, parent: u64, name: &str, dir: bool) -> Result<(), Errno> {
        self.writable()?;
        let ino = self.child(parent, name)?;
        let n = self.node(ino)?;
        match (dir, n.dir) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        if dir {
            self.list(ino)?;
            if !self.nodes[&ino]
                .children
                .as_ref()
                .is_none_or(|c| c.order.is_empty())
            {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let disk_name = self.nodes[&ino].name.clone();
        self.dir(parent)?.remove(&disk_name).map_err(errno)?;
        self.detach(ino, true);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        self.writable()?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let ino = self.child(parent, name)?;
        let is_dir = self.node(ino)?.dir;
        if is_dir && parent != newparent {
            // fatfs 0.3 would leave the moved directory's `..` pointing at its old parent.
            return Err(Errno::EXDEV);
        }
        let src_name = self.node(ino)?.name.clone();
        if let Ok(old) = self.child(newparent, newname) {
            if old == ino {
                // The same entry (a rename that only changes case never gets here: the
                // kernel sees one inode under both names and does nothing).
                return Ok(());
            } else {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                let old_dir = self.node(old)?.dir;
                match (is_dir, old_dir) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    _ => {}
                }
                self.remove(newparent, newname, old_dir)?;
            }
        }
        {
            let from = self.dir(parent)?;
            let to = self.dir(newparent)?;
            from.rename(&src_name, &to, newname).map_err(errno)?;
        }
        self.detach(ino, false);
        let n = self.nodes.get_mut(&ino).expect("renamed");
        n.parent = newparent;
        n.name = newname.to_string();
        self.list(newparent)?;
        let c = self.children_mut(newparent);
        c.by_name.insert(fold(newname), ino);
        c.order.push(ino);
        Ok(())
    }

    fn readdir(&mut self, ino: u64) -> Result<Vec<(u64, FileType, String)>, Errno> {
        self.list(ino)?;
        let n = self.node(ino)?;
        let mut all = vec![
            (ino, FileType::Directory, ".".to_string()),
            (n.parent, FileType::Directory, "..".to_string()),
        ];
        for &c in &n.children.as_ref().expect("listed").order {
            let child = &self.nodes[&c];
            let kind = if child.dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            all.push((c, kind, child.name.clone()));
        }
        Ok(all)
    }
}

/// Where clusters are, and the first FAT's bytes.
struct Geometry {
    cluster: u64,
    data: u64,
    fat: Vec<u8>,
}

fn node_of(parent: u64, m: Meta) -> Node {
    Node {
        parent,
        name: m.name,
        dir: m.dir,
        size: if m.dir { 0 } else { m.size },
        mtime: m.mtime,
        atime: m.atime,
        children: None,
    }
}

impl Filesystem for CardFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_string_lossy().into_owned();
        self.run(move |v| match v.lookup(parent.0, &name) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run(move |v| match v.node(ino.0) {
            Ok(_) => reply.attr(&TTL, &v.attr(ino.0)),
            Err(e) => reply.error(e),
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.run(move |v| match v.setattr(ino.0, size, atime, mtime) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.run(move |v| match v.mkdir(parent.0, &name) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.run(move |v| match v.create(parent.0, &name, flags) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_string_lossy().into_owned();
        self.run(move |v| match v.remove(parent.0, &name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_string_lossy().into_owned();
        self.run(move |v| match v.remove(parent.0, &name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = name.to_string_lossy().into_owned();
        let newname = match name_of(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.run(
            move |v| match v.rename(parent.0, &name, newparent.0, &newname, flags) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.run(move |v| {
            let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
            match v.node(ino.0) {
                Err(e) => reply.error(e),
                Ok(_) if writes && v.options.read_only => reply.error(Errno::EROFS),
                // No `keep_cache`: the kernel drops the file's pages at each open.
                Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run(move |v| match v.read(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.run(move |v| match v.write(ino.0, offset, &data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Every write is in the image already.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |v| match v.sync.sync_data() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |v| match v.sync.sync_data() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.run(move |v| match v.readdir(ino.0) {
            Ok(all) => {
                for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(move |v| match v.fs.stats() {
            Ok(s) => reply.statfs(
                u64::from(s.total_clusters()),
                u64::from(s.free_clusters()),
                u64::from(s.free_clusters()),
                0,
                0,
                s.cluster_size(),
                255,
                s.cluster_size(),
            ),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has checked the mode bits already.
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_stamps_are_local_two_second_and_clamped_to_fat_years() {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        // 2026-12-07 10:00:01 UTC reads 10:00:00: two-second steps.
        let dt = to_dos(t(1_796_637_601), 0);
        assert_eq!((dt.date.year, dt.date.month, dt.date.day), (2026, 12, 7));
        assert_eq!((dt.time.hour, dt.time.min, dt.time.sec), (10, 0, 1));
        assert_eq!(
            from_dos(dt, 0),
            t(1_796_637_601),
            "set and read back in one zone"
        );
        // Written in Tokyo (local 19:00), read in UTC: nine hours later.
        let tokyo = to_dos(t(1_796_637_600), 9 * 3600);
        assert_eq!(tokyo.time.hour, 19);
        assert_eq!(from_dos(tokyo, 0), t(1_796_637_600 + 9 * 3600));
        // Before 1980: the floor, not a wrapped year.
        let floor = to_dos(UNIX_EPOCH, 0);
        assert_eq!(
            (floor.date.year, floor.date.month, floor.date.day),
            (1980, 1, 1)
        );
        assert_eq!(from_dos(floor, 0), t(DOS_FLOOR as u64));
        let ceil = to_dos(t(5_000_000_000), 0);
        assert_eq!(ceil.date.year, 2107);
        for days in [-1_000_000, -1, 0, 3652, 20_000, 50_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
