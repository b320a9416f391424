//! Directory-relative file operations (`openat`, `fstatat`, `unlinkat`), for a deletion that
//! cannot be steered by a path changed under it.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path};

/// What the last look saw at a file's name: the version the rules judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl Seen {
    /// The same file, unchanged: a FAT or exFAT remount renumbers inodes, so this asks for the
    /// same inode only where asked to (just before a deletion, in the same mount).
    pub fn same_version(&self, other: &Seen) -> bool {
        self.size == other.size && self.mtime_ns == other.mtime_ns
    }
}

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
pub fn regular_file(dir: &OwnedFd, name: &CStr) -> io::Result<Option<Seen>> {
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
    Ok(Some(Seen {
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
