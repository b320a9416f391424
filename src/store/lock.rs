//! One daemon per state directory: an exclusive `flock` on the directory itself, held for the
//! life of the process.
//!
//! Why: two daemons on one `state.dir` would each run the queue (every file sent twice, the
//! ledger appended from two processes) and each believe it holds the user's choices. The lock
//! is on the directory, not on a file in it, so taking it needs no free space (a full state
//! disk must not keep the daemon from starting) and leaves nothing behind. The kernel drops it
//! when the process ends, however it ends; the descriptor is close-on-exec, so a child (the
//! delete command) never inherits it.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Held while the daemon runs; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _dir: std::fs::File,
}

/// Why the state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another cambackup daemon{} is running on state.dir {dir}: stop it first \
         (two daemons on one state directory would send every file twice)",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock state.dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl DirLock {
    /// Creates `dir` if needed (mode 0700) and takes the lock, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let f = std::fs::File::open(dir).map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(DirLock { _dir: f });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let pid = f.metadata().ok().and_then(|m| holder(m.dev(), m.ino()));
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        // A file system without locks (some network or FUSE ones) must not keep the camera
        // from backing up: run unguarded, and say so.
        if matches!(
            e.raw_os_error(),
            Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS)
        ) {
            tracing::warn!(dir = %dir.display(), error = %e, "state.dir cannot be locked here: nothing stops a second daemon on it");
            return Ok(DirLock { _dir: f });
        }
        Err(io(e))
    }
}

/// The pid holding a `flock` on the inode (`/proc/locks`), for the message; `None` if unknown.
fn holder(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    text.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = DirLock::acquire(&state).unwrap();
        // flock locks belong to the open file description: a second open in this very
        // process conflicts just as another process's would.
        match DirLock::acquire(&state) {
            // The pid is read from /proc/locks, best effort (emulators may not show it).
            Err(LockError::Held { pid, .. }) => {
                assert!(pid.is_none() || pid == Some(std::process::id()), "{pid:?}")
            }
            other => panic!("not refused: {other:?}"),
        }
        drop(first);
        DirLock::acquire(&state).unwrap();
    }
}
