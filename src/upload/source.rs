//! Reading a chunk of the file: as a PATCH body, and for its SHA-1.
//!
//! Invariants:
//! - a chunk is read in [`BLOCK`] pieces with positioned reads (`pread`) on a descriptor of its
//!   own: nothing shares a file position, and a read left running after an aborted request
//!   moves nothing anyone else uses;
//! - the runtime thread never waits for the disk: it reads only what the page cache holds
//!   (`RWF_NOWAIT`), anything else is read on a blocking thread;
//! - memory is bounded whatever the chunk size: a body holds the block being read and the few
//!   hyper is writing (their buffers are reused), a hash one buffer of [`BLOCK`];
//! - a file that ends before the chunk does is an error (`UnexpectedEof`), never a short body
//!   or a checksum of fewer bytes;
//! - a hash whose [`Digest`] handle is dropped stops within one block; an open one keeps a
//!   SHA-1 state per MiB hashed (about 100 bytes each), nothing of the data.
//!
//! Why not `tokio::fs`: `tokio::fs::File` sends every read to the blocking pool and back (a
//! futex wake, a condvar wait and an eventfd wake per read) and copies each block once more into
//! the body's buffer; here a block is read straight into the `Bytes` hyper writes
//! (docs/PERFORMANCE.md, issue 14).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::Stream;
use sha1::Digest as _;
use tokio::task::JoinHandle;

/// Bytes per read. The blocks in flight (two or three) should stay in the CPU's cache
/// between the read that fills them and the socket write that empties them: against
/// @tus/server on loopback, 128 KiB blocks took 15 % less CPU than 512 KiB ones and 64 KiB
/// ones no less (docs/PERFORMANCE.md).
pub const BLOCK: usize = 128 * 1024;

/// The `len` bytes of `file` from `offset`, as a stream of blocks for a request body.
///
/// A block already in the page cache is read right here, on the runtime thread, with
/// `RWF_NOWAIT` (which never waits for the disk); only a block that is not cached is read on a
/// blocking thread. A cached file then streams on one thread, like curl's: a second thread per
/// block cost a wake-up and a cross-core copy of each block, and about a tenth of the throughput
/// against @tus/server on two shared cores (docs/PERFORMANCE.md). The kernel's readahead keeps
/// a sequential read ahead of the blocks asked for.
pub fn body(file: File, offset: u64, len: u64) -> impl Stream<Item = io::Result<Bytes>> {
    let state = Body {
        file: Arc::new(file),
        at: offset,
        end: offset + len,
        pool: Pool::default(),
        failed: false,
    };
    futures_util::stream::unfold(state, |mut b| async move {
        if b.at >= b.end || b.failed {
            return None;
        }
        let want = (b.end - b.at).min(BLOCK as u64) as usize;
        let block = match read_cached(&b.file, b.at, want, &b.pool) {
            Some(r) => r,
            None => {
                let (file, pool, at) = (b.file.clone(), b.pool.clone(), b.at);
                let read = tokio::task::spawn_blocking(move || read_block(&file, at, want, &pool));
                read.await
                    .unwrap_or_else(|e| Err(io::Error::other(format!("reading thread: {e}"))))
            }
        };
        match &block {
            Ok(bytes) => b.at += bytes.len() as u64,
            Err(_) => b.failed = true,
        }
        Some((block, b))
    })
}

/// Where a body stands.
struct Body {
    file: Arc<File>,
    at: u64,
    end: u64,
    pool: Pool,
    failed: bool,
}

/// `want` bytes at `at` if the page cache holds all of them (`None` otherwise, or where the
/// kernel cannot tell without waiting).
#[cfg(target_env = "gnu")]
fn read_cached(file: &File, at: u64, want: usize, pool: &Pool) -> Option<io::Result<Bytes>> {
    use std::os::fd::AsRawFd as _;
    let mut buf = lock(pool).pop().unwrap_or_else(|| vec![0; BLOCK]);
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: want,
    };
    // SAFETY: one iovec over `want` initialised bytes of `buf`, which outlives the call; the
    // kernel writes at most `want` bytes into it.
    let n = unsafe {
        libc::preadv64v2(
            file.as_raw_fd(),
            &iov,
            1,
            at as libc::off64_t,
            libc::RWF_NOWAIT,
        )
    };
    if n != want as isize {
        // EAGAIN (not cached), EOPNOTSUPP (an old kernel), a short read (partly cached, or the
        // file ends early: the blocking read tells which): the blocking thread's turn.
        lock(pool).push(buf);
        return None;
    }
    Some(Ok(Bytes::from_owner(Block {
        buf,
        len: want,
        home: Arc::downgrade(pool),
    })))
}

/// Without glibc's `preadv64v2` every block is read on a blocking thread.
#[cfg(not(target_env = "gnu"))]
fn read_cached(_: &File, _: u64, _: usize, _: &Pool) -> Option<io::Result<Bytes>> {
    None
}

/// Buffers of [`BLOCK`] bytes that the connection is done with, ready for the next reads.
type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

/// Exactly `want` bytes at `at`, or an error (`UnexpectedEof` when the file ends first).
///
/// Read into a buffer from `pool`, which goes back there when hyper drops the block: a fresh
/// buffer per block would cost a memset or page faults per byte sent (the first version of this
/// module spent a tenth of its CPU there).
fn read_block(file: &File, at: u64, want: usize, pool: &Pool) -> io::Result<Bytes> {
    let buf = lock(pool).pop();
    let mut buf = buf.unwrap_or_else(|| vec![0; BLOCK]);
    file.read_exact_at(&mut buf[..want], at)?;
    Ok(Bytes::from_owner(Block {
        buf,
        len: want,
        home: Arc::downgrade(pool),
    }))
}

fn lock(pool: &Pool) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

/// One block of a body; its buffer returns to the pool it came from, if the body still reads.
struct Block {
    buf: Vec<u8>,
    len: usize,
    home: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(pool) = self.home.upgrade() {
            lock(&pool).push(std::mem::take(&mut self.buf));
        }
    }
}

/// Where an open hash ([`Digest::open`]) keeps its state: every whole MiB from its start, so a
/// chunk's length can be chosen after its hash started (automatically sized chunks are whole
/// MiB). A multiple of [`BLOCK`], so every mark falls on a block's end.
pub const MARK: u64 = 1024 * 1024;

/// A SHA-1 being computed on a blocking thread; dropping it stops the thread.
pub struct Digest {
    task: JoinHandle<io::Result<()>>,
    cancel: Arc<AtomicBool>,
    /// The hash's state at the lengths it may be finished at, as the thread reaches them.
    states: Arc<Mutex<Vec<(u64, sha1::Sha1)>>>,
    /// How far the thread has hashed; closed when it ends.
    at: tokio::sync::watch::Receiver<u64>,
    /// Where the thread stops: the start's length, or the chunk's once chosen
    /// ([`Digest::stop_at`]).
    limit: Arc<AtomicU64>,
}

impl Digest {
    /// Starts hashing the `len` bytes of `file` from `offset`; [`Digest::finish`] with `len`.
    pub fn start(file: File, offset: u64, len: u64) -> Digest {
        Digest::spawn(file, offset, len, false)
    }

    /// Starts hashing up to `max` bytes of `file` from `offset`, for a chunk whose length is
    /// chosen later: [`Digest::finish`] with `max` or any whole number of [`MARK`]s below it.
    /// Keeps one SHA-1 state (about 100 bytes) per MiB hashed.
    pub fn open(file: File, offset: u64, max: u64) -> Digest {
        Digest::spawn(file, offset, max, true)
    }

    fn spawn(file: File, offset: u64, max: u64, marks: bool) -> Digest {
        let cancel = Arc::new(AtomicBool::new(false));
        let states = Arc::new(Mutex::new(Vec::new()));
        let limit = Arc::new(AtomicU64::new(max));
        let (tx, at) = tokio::sync::watch::channel(0);
        let (c, st, lim) = (cancel.clone(), states.clone(), limit.clone());
        let task = tokio::task::spawn_blocking(move || {
            let keep = |done: u64, h: &sha1::Sha1| {
                if done == max || (marks && done.is_multiple_of(MARK)) {
                    lock_states(&st).push((done, h.clone()));
                    tx.send_replace(done);
                }
                if done >= lim.load(Ordering::Relaxed) && done < max {
                    // Past the chunk's chosen length: the walk stops at its next block.
                    c.store(true, Ordering::Relaxed);
                }
            };
            match sha1_walk(&file, offset, max, &c, keep) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
                r => r.map(drop),
            }
        });
        Digest {
            task,
            cancel,
            states,
            at,
            limit,
        }
    }

    /// The chunk's length is chosen (an open hash, [`Digest::open`]): the thread stops hashing
    /// past it, rather than reading on to its maximum for nothing (up to `chunk_size_mib` of
    /// card reads and SHA-1 once per attempt on a slow link).
    pub fn stop_at(&self, len: u64) {
        self.limit.store(len, Ordering::Relaxed);
    }

    /// The digest of the first `len` bytes, base64 as `Upload-Checksum` wants it. `len` is the
    /// length the hash was started with, or (an open hash) a whole number of [`MARK`]s below.
    pub async fn finish(mut self, len: u64) -> io::Result<String> {
        loop {
            let state = lock_states(&self.states)
                .iter()
                .find(|(at, _)| *at == len)
                .map(|(_, h)| h.clone());
            if let Some(h) = state {
                return Ok(base64::engine::general_purpose::STANDARD.encode(h.finalize()));
            }
            if self.at.changed().await.is_err() {
                // The thread ended: with the state asked for (looked up once more), or with an
                // error, or without ever passing `len` (a length it was not started for).
                if lock_states(&self.states).iter().any(|(at, _)| *at == len) {
                    continue;
                }
                return match (&mut self.task).await {
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(io::Error::other(format!("the hashing thread failed: {e}"))),
                    Ok(Ok(())) => Err(io::Error::other(format!(
                        "no hash of {len} bytes: not a length this hash keeps"
                    ))),
                };
            }
        }
    }
}

impl Drop for Digest {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

fn lock_states(
    s: &Mutex<Vec<(u64, sha1::Sha1)>>,
) -> std::sync::MutexGuard<'_, Vec<(u64, sha1::Sha1)>> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The SHA-1 of `len` bytes of `file` at `offset`, read block by block on the calling thread
/// (freeing space reads a file back with it); a range past the file's end is an
/// [`io::ErrorKind::UnexpectedEof`].
pub fn sha1_of(file: &File, offset: u64, len: u64, cancel: &AtomicBool) -> io::Result<[u8; 20]> {
    Ok(sha1_walk(file, offset, len, cancel, |_, _| {})?
        .finalize()
        .into())
}

/// Hashes the `len` bytes of `file` after the `digest.len()` ones it has seen into `digest`:
/// the part of a resumed upload sent before a restart whose digest state was not saved.
pub fn digest_range(
    file: &File,
    digest: &mut crate::digest::FileDigest,
    len: u64,
    cancel: &AtomicBool,
) -> io::Result<()> {
    let mut buf = vec![0u8; BLOCK];
    let end = digest.len() + len;
    while digest.len() < end {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "hash abandoned"));
        }
        let want = (end - digest.len()).min(BLOCK as u64) as usize;
        file.read_exact_at(&mut buf[..want], digest.len())?;
        digest.update(&buf[..want]);
    }
    Ok(())
}

/// Hashes `len` bytes of `file` at `offset` block by block, showing `seen` the hash after each
/// block (and at the start of an empty range) with the bytes hashed so far; returns the hash.
fn sha1_walk(
    file: &File,
    offset: u64,
    len: u64,
    cancel: &AtomicBool,
    mut seen: impl FnMut(u64, &sha1::Sha1),
) -> io::Result<sha1::Sha1> {
    let mut hasher = sha1::Sha1::new();
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    if len == 0 {
        seen(0, &hasher);
    }
    while done < len {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "hash abandoned"));
        }
        let want = (len - done).min(BLOCK as u64) as usize;
        file.read_exact_at(&mut buf[..want], offset + done)?;
        hasher.update(&buf[..want]);
        done += want as u64;
        seen(done, &hasher);
    }
    Ok(hasher)
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;

    fn file_of(data: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        io::Write::write_all(&mut f, data).unwrap();
        let opened = File::open(f.path()).unwrap();
        (f, opened)
    }

    #[tokio::test]
    async fn a_body_is_the_chunk_in_blocks_and_fails_where_the_file_ends_early() {
        let data: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 253) as u8).collect();
        let (_keep, f) = file_of(&data);
        let blocks: Vec<Bytes> = body(f, 7, (2 * BLOCK + 5) as u64)
            .map(|b| b.unwrap())
            .collect()
            .await;
        assert_eq!(
            blocks.iter().map(Bytes::len).collect::<Vec<_>>(),
            [BLOCK, BLOCK, 5]
        );
        assert_eq!(blocks.concat(), data[7..7 + 2 * BLOCK + 5]);

        let (_keep, f) = file_of(&data[..100]);
        let got: Vec<io::Result<Bytes>> = body(f, 50, 60).collect().await;
        assert_eq!(got.len(), 1);
        let e = got.into_iter().next().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_digest_is_the_sha1_of_exactly_the_chunk() {
        let data: Vec<u8> = (0..BLOCK + 10).map(|i| (i % 7) as u8).collect();
        let (_keep, f) = file_of(&data);
        let want = base64::engine::general_purpose::STANDARD
            .encode(sha1::Sha1::digest(&data[3..BLOCK + 9]));
        let got = Digest::start(f, 3, BLOCK as u64 + 6)
            .finish(BLOCK as u64 + 6)
            .await
            .unwrap();
        assert_eq!(got, want);
        let (_keep, f) = file_of(&data[..10]);
        let e = Digest::start(f, 0, 11).finish(11).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn an_open_digest_finishes_at_any_whole_mib_or_its_maximum_and_nowhere_else() {
        let m = MARK as usize;
        let data: Vec<u8> = (0..3 * m + 50).map(|i| (i % 251) as u8).collect();
        let (_keep, f) = file_of(&data);
        let sum = |r: std::ops::Range<usize>| {
            base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(&data[r]))
        };
        let max = (3 * m + 40) as u64;
        for len in [m, 2 * m, 3 * m + 40] {
            let got = Digest::open(f.try_clone().unwrap(), 5, max)
                .finish(len as u64)
                .await
                .unwrap();
            assert_eq!(got, sum(5..5 + len), "{len} bytes");
        }
        let e = Digest::open(f.try_clone().unwrap(), 5, max)
            .finish(m as u64 + 1)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a length"), "{e}");
        let e = Digest::start(f, 5, max).finish(m as u64).await.unwrap_err();
        assert!(e.to_string().contains("not a length"), "{e}");
    }

    #[tokio::test]
    async fn an_open_digest_told_its_length_stops_hashing_past_it() {
        let m = MARK as usize;
        let data: Vec<u8> = (0..64 * m).map(|i| (i % 251) as u8).collect();
        let (_keep, f) = file_of(&data);
        let d = Digest::open(f, 0, data.len() as u64);
        d.stop_at(2 * MARK);
        // Time enough to hash all 64 MiB had it not been told.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let furthest = lock_states(&d.states).iter().map(|(at, _)| *at).max();
        assert_eq!(
            furthest,
            Some(2 * MARK),
            "no state kept past the chosen length"
        );
        let want =
            base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(&data[..2 * m]));
        assert_eq!(d.finish(2 * MARK).await.unwrap(), want);
    }
}
