//! A power-cut file system (issue 26): a FUSE layer over a directory that holds every write in
//! memory until it is synced, and at a cut keeps only what was synced.
//!
//! Why: `kill -9` proves little about durability, since every byte the process wrote is in the
//! page cache and survives it. A camera losing power keeps only what reached the flash: a
//! file's data as of its last `fsync`/`fdatasync`, and a directory's entries (creations,
//! renames, unlinks) as of the directory's last `fsync`. This layer models exactly that, the
//! pessimistic POSIX reading (as Jepsen's LazyFS does), so a missing sync shows as lost data:
//!
//! - [`PowerCutFs::mount`] loads the directory's tree into memory and serves it at a mount
//!   point. Reads see every write at once, as on a real disk's page cache.
//! - `fsync` of a file makes its current data durable; `fsync` of a directory makes its
//!   current entries durable (a new file's or directory's name, a rename, an unlink). Nothing
//!   else does: a file synced but whose directory was not is lost if its name is new, and a
//!   rename whose directory was not synced leaves the old name.
//! - [`Mounted::cut`] unmounts (the caller has killed whatever used it) and writes back to the
//!   directory only the durable tree: each durable name with its inode's durable data.
//!   Optionally the last unsynced write is torn: a random prefix of it reaches the disk, as a
//!   write cut off mid-page does. [`Mounted::unmount`] instead writes back everything, as a
//!   clean shutdown would.
//!
//! SQLite works on it in WAL mode: its `-shm` file is `mmap`ped shared (FUSE serves that
//! through the page cache, so the mount is not `direct_io`), its locks are POSIX locks the
//! kernel keeps for a FUSE mount that does not take them over, and it syncs the directory
//! when it creates a `-wal` file, as it must. The main database file's own name is made
//! durable by nothing SQLite does (it never syncs the directory for it): a database created
//! and never followed by a directory sync is lost at a cut, as it may be on a real disk.
//!
//! Requires root (the mount is made with `mount(2)` on `/dev/fuse`, no libfuse or fusermount);
//! [`available`] says whether this machine can.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// The kernel may cache names and attributes this long: every change goes through this mount,
/// so the cache is never stale, and a cut remounts (a fresh cache).
const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;

/// What one inode holds: the view every read gets, and what a cut would leave.
#[derive(Debug, Clone)]
enum Body {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

#[derive(Debug, Clone)]
struct Node {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    /// The name it was last given, for [`Stats`].
    name: OsString,
}

/// How many syncs each file name got, and how many cuts dropped something: what the soak
/// reports about which syncs matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// `fsync`/`fdatasync` of files, by the file's name.
    pub file_syncs: BTreeMap<String, u64>,
    /// `fsync` of directories, by the directory's name (`/` for the root).
    pub dir_syncs: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// The latest write not yet synced: `(inode, offset, bytes)`, what a tearing cut tears.
    last_unsynced: Option<(u64, u64, Vec<u8>)>,
    stats: Stats,
}

/// The file system; [`PowerCutFs::mount`] serves it.
#[derive(Clone)]
pub struct PowerCutFs {
    state: Arc<Mutex<State>>,
}

/// A mounted [`PowerCutFs`]: cut it, or unmount it cleanly. Dropping it is a clean unmount.
pub struct Mounted {
    fs: PowerCutFs,
    session: Option<fuser::BackgroundSession>,
    backing: PathBuf,
    mountpoint: PathBuf,
}

/// Whether this machine can mount the layer (root and `/dev/fuse`).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0
}

fn new_node(body: Body, perm: u16, name: &OsStr, uid: u32, gid: u32) -> Node {
    let now = SystemTime::now();
    Node {
        body,
        perm,
        uid,
        gid,
        mtime: now,
        ctime: now,
        name: name.to_owned(),
    }
}

impl PowerCutFs {
    /// Loads `backing`'s tree (regular files and directories; anything else is refused) and
    /// serves it at `mountpoint`, an empty directory.
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Mounted> {
        let mut state = State {
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            last_unsynced: None,
            stats: Stats::default(),
        };
        load(&mut state, backing, ROOT, OsStr::new("/"))?;
        let fs = PowerCutFs {
            state: Arc::new(Mutex::new(state)),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("powercut".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        config.acl = fuser::SessionACL::All;
        let session = fuser::spawn_mount(fs.clone(), mountpoint, &config)?;
        Ok(Mounted {
            fs,
            session: Some(session),
            backing: backing.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads `dir` into the node `ino`, everything durable (it is on the disk).
fn load(state: &mut State, dir: &Path, ino: u64, name: &OsStr) -> io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    let mut entries = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let child = state.next_ino;
        state.next_ino += 1;
        let ft = e.file_type()?;
        if ft.is_dir() {
            load(state, &e.path(), child, &e.file_name())?;
        } else if ft.is_file() {
            let m = e.metadata()?;
            let data = std::fs::read(e.path())?;
            let mut node = new_node(
                Body::File {
                    durable: data.clone(),
                    data,
                },
                (m.mode() & 0o7777) as u16,
                &e.file_name(),
                m.uid(),
                m.gid(),
            );
            node.mtime = m.modified()?;
            state.nodes.insert(child, node);
        } else {
            return Err(io::Error::other(format!(
                "{}: only files and directories can be under the power-cut layer",
                e.path().display()
            )));
        }
        entries.insert(e.file_name(), child);
    }
    let node = new_node(
        Body::Dir {
            durable: entries.clone(),
            entries,
        },
        (meta.mode() & 0o7777) as u16,
        name,
        meta.uid(),
        meta.gid(),
    );
    state.nodes.insert(ino, node);
    Ok(())
}

/// Writes the tree under `ino` to `dir` (which exists and is empty): the durable tree, or the
/// current one.
fn store(state: &State, ino: u64, dir: &Path, durable: bool) -> io::Result<()> {
    let Some(Node {
        body: Body::Dir {
            entries,
            durable: kept,
        },
        ..
    }) = state.nodes.get(&ino)
    else {
        return Ok(());
    };
    for (name, child) in if durable { kept } else { entries } {
        let Some(node) = state.nodes.get(child) else {
            continue;
        };
        let path = dir.join(name);
        match &node.body {
            Body::Dir { .. } => {
                std::fs::create_dir(&path)?;
                store(state, *child, &path, durable)?;
            }
            Body::File { data, durable: d } => {
                std::fs::write(&path, if durable { d } else { data })?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(node.perm.into()))?;
            }
        }
        std::os::unix::fs::lchown(&path, Some(node.uid), Some(node.gid))?;
    }
    Ok(())
}

impl Mounted {
    /// The power goes: unmounts (whatever used the mount must be dead or have closed its
    /// files), and leaves in the backing directory only what was synced. With `tear` (a
    /// random draw in 0..1), that much of the last unsynced write reaches the disk too.
    /// Returns the sync counts of this mount.
    pub fn cut(mut self, tear: Option<f64>) -> io::Result<Stats> {
        self.end(true, tear)
    }

    /// A clean unmount: everything written stays, synced or not. Returns the sync counts.
    pub fn unmount(mut self) -> io::Result<Stats> {
        self.end(false, None)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The sync counts so far.
    pub fn stats(&self) -> Stats {
        self.fs.lock().stats.clone()
    }

    fn end(&mut self, cut: bool, tear: Option<f64>) -> io::Result<Stats> {
        let Some(session) = self.session.take() else {
            return Ok(Stats::default());
        };
        // A lazy unmount if a straggler still holds a file: the layer's state is what counts.
        if session.umount_and_join().is_err() {
            let c = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes())
                .map_err(io::Error::other)?;
            // SAFETY: a valid C string; MNT_DETACH only detaches the mount.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let mut state = self.fs.lock();
        if let (true, Some(r), Some((ino, offset, bytes))) = (cut, tear, state.last_unsynced.take())
        {
            let keep = ((bytes.len() as f64) * r.clamp(0.0, 1.0)) as usize;
            if let Some(Node {
                body: Body::File { durable, .. },
                ..
            }) = state.nodes.get_mut(&ino)
            {
                write_at(durable, offset, &bytes[..keep.min(bytes.len())]);
            }
        }
        for e in std::fs::read_dir(&self.backing)? {
            let p = e?.path();
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        store(&state, ROOT, &self.backing, cut)?;
        Ok(state.stats.clone())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.end(false, None);
    }
}

fn write_at(buf: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let at = offset as usize;
    if buf.len() < at + bytes.len() {
        buf.resize(at + bytes.len(), 0);
    }
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn attr(ino: u64, n: &Node) -> FileAttr {
    let (kind, size, nlink) = match &n.body {
        Body::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
        Body::Dir { .. } => (FileType::Directory, 0, 2),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: n.mtime,
        mtime: n.mtime,
        ctime: n.ctime,
        crtime: n.ctime,
        kind,
        perm: n.perm,
        nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl State {
    fn dir_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::Dir { entries, .. }) => Ok(entries),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn child(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir_mut(parent)?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn is_empty_dir(&self, ino: u64) -> bool {
        matches!(self.nodes.get(&ino).map(|n| &n.body), Some(Body::Dir { entries, .. }) if entries.is_empty())
    }

    fn add(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        body: Body,
        mode: u32,
        umask: u32,
    ) -> Result<(u64, FileAttr), Errno> {
        if self.dir_mut(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = new_node(
            body,
            (mode & !umask & 0o7777) as u16,
            name,
            req.uid(),
            req.gid(),
        );
        let a = attr(ino, &node);
        self.nodes.insert(ino, node);
        self.dir_mut(parent)?.insert(name.to_owned(), ino);
        self.touch(parent);
        Ok((ino, a))
    }

    fn touch(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.mtime = SystemTime::now();
            n.ctime = n.mtime;
        }
    }
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.lock();
        match s.child(parent.0, name) {
            Ok(ino) => reply.entry(&TTL, &attr(ino, &s.nodes[&ino]), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = self.lock();
        match s.nodes.get(&ino.0) {
            Some(n) => reply.attr(&TTL, &attr(ino.0, n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.lock();
        let Some(n) = s.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(m) = mode {
            n.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            n.uid = u;
        }
        if let Some(g) = gid {
            n.gid = g;
        }
        if let Some(len) = size {
            match &mut n.body {
                Body::File { data, .. } => data.resize(len as usize, 0),
                Body::Dir { .. } => return reply.error(Errno::EISDIR),
            }
            n.mtime = SystemTime::now();
        }
        match mtime {
            Some(TimeOrNow::SpecificTime(t)) => n.mtime = t,
            Some(TimeOrNow::Now) => n.mtime = SystemTime::now(),
            None => {}
        }
        n.ctime = SystemTime::now();
        reply.attr(&TTL, &attr(ino.0, n));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let body = Body::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        match self.lock().add(req, parent.0, name, body, mode, umask) {
            Ok((_, a)) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let body = Body::File {
            data: Vec::new(),
            durable: Vec::new(),
        };
        match self.lock().add(req, parent.0, name, body, mode, umask) {
            Ok((_, a)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = s.child(parent.0, name).and_then(|ino| {
            if matches!(s.nodes[&ino].body, Body::Dir { .. }) {
                return Err(Errno::EISDIR);
            }
            s.dir_mut(parent.0)?.remove(name);
            s.touch(parent.0);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = s.child(parent.0, name).and_then(|ino| {
            if !matches!(s.nodes[&ino].body, Body::Dir { .. }) {
                return Err(Errno::ENOTDIR);
            }
            if !s.is_empty_dir(ino) {
                return Err(Errno::ENOTEMPTY);
            }
            s.dir_mut(parent.0)?.remove(name);
            s.touch(parent.0);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        let mut s = self.lock();
        let r = (|| {
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || flags.contains(RenameFlags::RENAME_WHITEOUT)
            {
                return Err(Errno::EINVAL);
            }
            let ino = s.child(parent.0, name)?;
            let src_dir = matches!(s.nodes[&ino].body, Body::Dir { .. });
            if let Some(&old) = s.dir_mut(newparent.0)?.get(newname) {
                if old == ino {
                    return Ok(());
                }
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                let dst_dir = matches!(s.nodes[&old].body, Body::Dir { .. });
                match (src_dir, dst_dir) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    (true, true) if !s.is_empty_dir(old) => return Err(Errno::ENOTEMPTY),
                    _ => {}
                }
            }
            s.dir_mut(parent.0)?.remove(name);
            s.dir_mut(newparent.0)?.insert(newname.to_owned(), ino);
            if let Some(n) = s.nodes.get_mut(&ino) {
                n.name = newname.to_owned();
            }
            s.touch(parent.0);
            s.touch(newparent.0);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.lock().nodes.contains_key(&ino.0) {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOENT);
        }
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
        let s = self.lock();
        match s.nodes.get(&ino.0).map(|n| &n.body) {
            Some(Body::File { data, .. }) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Some(Body::Dir { .. }) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.lock();
        let Some(n) = s.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Body::File { data, .. } = &mut n.body else {
            return reply.error(Errno::EISDIR);
        };
        write_at(data, offset, bytes);
        n.mtime = SystemTime::now();
        s.last_unsynced = Some((ino.0, offset, bytes.to_vec()));
        reply.written(bytes.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let Some(n) = s.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let name = n.name.to_string_lossy().into_owned();
        if let Body::File { data, durable } = &mut n.body {
            durable.clone_from(data);
        }
        if s.last_unsynced
            .as_ref()
            .is_some_and(|(i, _, _)| *i == ino.0)
        {
            s.last_unsynced = None;
        }
        *s.stats.file_syncs.entry(name).or_default() += 1;
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.lock();
        let entries = match s.dir_mut(ino.0) {
            Ok(e) => e.clone(),
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (ino.0, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in entries {
            let kind = match s.nodes[&child].body {
                Body::Dir { .. } => FileType::Directory,
                Body::File { .. } => FileType::RegularFile,
            };
            all.push((child, kind, name));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let Some(n) = s.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let name = n.name.to_string_lossy().into_owned();
        if let Body::Dir { entries, durable } = &mut n.body {
            durable.clone_from(entries);
        }
        *s.stats.dir_syncs.entry(name).or_default() += 1;
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A 4 GiB disk, mostly free: the daemon's state is small.
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 1 << 16, 1 << 15, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has checked the mode bits already.
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A backing directory and a mount point; `None` (the test is skipped) where FUSE cannot be
    /// mounted, unless `CI` is set.
    fn dirs() -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
        if !available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "the power-cut layer needs root and /dev/fuse"
            );
            eprintln!("skipped: no root or /dev/fuse");
            return None;
        }
        let t = tempfile::tempdir().unwrap();
        let (b, m) = (t.path().join("disk"), t.path().join("mnt"));
        std::fs::create_dir(&b).unwrap();
        std::fs::create_dir(&m).unwrap();
        Some((t, b, m))
    }

    fn sync_dir(p: &Path) {
        std::fs::File::open(p).unwrap().sync_all().unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn synced_data_and_names_survive_a_cut_and_the_rest_does_not() {
        let Some((_t, disk, mnt)) = dirs() else {
            return;
        };
        let m = PowerCutFs::mount(&disk, &mnt).unwrap();
        // Synced file in a synced directory: survives whole.
        let mut f = std::fs::File::create(mnt.join("kept")).unwrap();
        f.write_all(b"synced").unwrap();
        f.sync_all().unwrap();
        // Its later, unsynced append is lost.
        f.write_all(b" and more").unwrap();
        // Data synced, but its name never is: the file is lost.
        let mut g = std::fs::File::create(mnt.join("nameless")).unwrap();
        g.write_all(b"x").unwrap();
        g.sync_data().unwrap();
        sync_dir(&mnt);
        std::fs::write(mnt.join("late"), b"after the directory sync").unwrap();
        // Reads saw everything before the cut.
        assert_eq!(std::fs::read(mnt.join("kept")).unwrap(), b"synced and more");
        drop((f, g));
        let stats = m.cut(None).unwrap();
        assert_eq!(names(&disk), ["kept", "nameless"]);
        assert_eq!(std::fs::read(disk.join("kept")).unwrap(), b"synced");
        assert_eq!(std::fs::read(disk.join("nameless")).unwrap(), b"x");
        assert_eq!(stats.file_syncs["kept"], 1);
        assert_eq!(stats.dir_syncs["/"], 1);
    }

    #[test]
    fn a_file_whose_directory_was_never_synced_is_gone() {
        let Some((_t, disk, mnt)) = dirs() else {
            return;
        };
        let m = PowerCutFs::mount(&disk, &mnt).unwrap();
        std::fs::create_dir(mnt.join("sub")).unwrap();
        let mut f = std::fs::File::create(mnt.join("sub/file")).unwrap();
        f.write_all(b"data").unwrap();
        f.sync_all().unwrap();
        drop(f);
        // The file's directory is synced, but the directory's own name is not.
        sync_dir(&mnt.join("sub"));
        m.cut(None).unwrap();
        assert!(names(&disk).is_empty());
    }

    #[test]
    fn a_rename_without_a_directory_sync_leaves_the_old_name_and_data() {
        let Some((_t, disk, mnt)) = dirs() else {
            return;
        };
        std::fs::write(disk.join("choices.json"), b"old").unwrap();
        let m = PowerCutFs::mount(&disk, &mnt).unwrap();
        assert_eq!(std::fs::read(mnt.join("choices.json")).unwrap(), b"old");
        // The atomic replace, without the directory sync.
        let mut t = std::fs::File::create(mnt.join("choices.json.tmp")).unwrap();
        t.write_all(b"new").unwrap();
        t.sync_all().unwrap();
        drop(t);
        std::fs::rename(mnt.join("choices.json.tmp"), mnt.join("choices.json")).unwrap();
        assert_eq!(std::fs::read(mnt.join("choices.json")).unwrap(), b"new");
        m.cut(None).unwrap();
        assert_eq!(names(&disk), ["choices.json"]);
        assert_eq!(std::fs::read(disk.join("choices.json")).unwrap(), b"old");

        // With the directory sync, the new content is the file's.
        let m = PowerCutFs::mount(&disk, &mnt).unwrap();
        let mut t = std::fs::File::create(mnt.join("choices.json.tmp")).unwrap();
        t.write_all(b"new").unwrap();
        t.sync_all().unwrap();
        drop(t);
        std::fs::rename(mnt.join("choices.json.tmp"), mnt.join("choices.json")).unwrap();
        sync_dir(&mnt);
        m.cut(None).unwrap();
        assert_eq!(names(&disk), ["choices.json"]);
        assert_eq!(std::fs::read(disk.join("choices.json")).unwrap(), b"new");
    }

    #[test]
    fn an_unlink_without_a_directory_sync_comes_back_and_a_tear_keeps_a_prefix() {
        let Some((_t, disk, mnt)) = dirs() else {
            return;
        };
        std::fs::write(disk.join("gone"), b"still here").unwrap();
        std::fs::write(disk.join("log"), b"line 1\n").unwrap();
        let m = PowerCutFs::mount(&disk, &mnt).unwrap();
        std::fs::remove_file(mnt.join("gone")).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("log"))
            .unwrap();
        f.write_all(b"line 2\n").unwrap();
        drop(f);
        m.cut(Some(0.5)).unwrap();
        assert_eq!(names(&disk), ["gone", "log"]);
        assert_eq!(std::fs::read(disk.join("gone")).unwrap(), b"still here");
        // Half of the torn append ("lin" of "line 2\n") reached the disk.
        assert_eq!(std::fs::read(disk.join("log")).unwrap(), b"line 1\nlin");
    }

    #[test]
    fn a_clean_unmount_keeps_everything_with_its_mode() {
        let Some((_t, disk, mnt)) = dirs() else {
            return;
        };
        let m = PowerCutFs::mount(&disk, &mnt).unwrap();
        std::fs::create_dir(mnt.join("d")).unwrap();
        std::fs::write(mnt.join("d/f"), b"unsynced").unwrap();
        std::fs::set_permissions(mnt.join("d/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        m.unmount().unwrap();
        assert_eq!(std::fs::read(disk.join("d/f")).unwrap(), b"unsynced");
        let mode = std::fs::metadata(disk.join("d/f")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// SQLite in WAL mode (the daemon's journal), in a process killed at the cut: its
    /// mmapped `-shm`, its locks and a second connection (this process's) work on the layer,
    /// and after the cut the database holds what it committed, not the transaction left open.
    #[test]
    fn sqlite_in_wal_mode_works_and_keeps_what_it_committed() {
        use std::io::BufRead;
        let Some((_t, disk, mnt)) = dirs() else {
            return;
        };
        let m = PowerCutFs::mount(&disk, &mnt).unwrap();
        let db = mnt.join("queue.db");
        let mut sqlite = std::process::Command::new("sqlite3")
            .arg(&db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sqlite3 (the CLI) runs");
        let mut input = sqlite.stdin.take().unwrap();
        let mut output = std::io::BufReader::new(sqlite.stdout.take().unwrap()).lines();
        let mut run = |sql: &str, marker: &str| {
            writeln!(input, "{sql}\nSELECT '{marker}';").unwrap();
            input.flush().unwrap();
            while output.next().unwrap().unwrap() != marker {}
        };
        run(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
             CREATE TABLE t(x); INSERT INTO t VALUES (1);",
            "created",
        );
        // The database file is new: only a directory sync makes its name durable.
        sync_dir(&mnt);
        run("INSERT INTO t VALUES (2);", "inserted");
        {
            let reader = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let n: i64 = reader
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 2);
        }
        run(
            "BEGIN; INSERT INTO t VALUES (3); UPDATE t SET x = x + 10;",
            "open",
        );
        sqlite.kill().unwrap();
        sqlite.wait().unwrap();
        m.cut(Some(0.7)).unwrap();
        let c = rusqlite::Connection::open(disk.join("queue.db")).unwrap();
        let rows: Vec<i64> = c
            .prepare("SELECT x FROM t ORDER BY x")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows, [1, 2]);
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }
}
