//! What was sent: the digest of each chunk the server accepted, for freeing space to verify an
//! upload by (INTERFACE.md section 8). `transfer` calls in at two points only: it wraps each
//! chunk's body in [`Hashing`] (the bytes as they go out), and after an accepted PATCH it calls
//! [`record`].
//!
//! Invariants: nothing is hashed or recorded unless the maker configured freeing space; a chunk
//! is recorded only when the server acknowledged all of it and exactly its bytes were hashed,
//! so a record is never wrong, at worst missing (and a missing one keeps the file).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine as _;
use sha1::Digest as _;
use tokio::io::{AsyncRead, ReadBuf};

use crate::store::{SentChunk, Store};

/// A running SHA-1 of a body and how many bytes it has seen.
#[derive(Clone, Default)]
pub struct SentHash(Arc<Mutex<(sha1::Sha1, u64)>>);

impl SentHash {
    /// The digest and the byte count so far.
    pub fn finish(&self) -> ([u8; 20], u64) {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (g.0.clone().finalize().into(), g.1)
    }
}

/// A body that hashes what is read from it into its [`SentHash`] (or passes it through, when
/// there is none).
pub struct Hashing<R> {
    inner: R,
    hash: Option<SentHash>,
}

/// Wraps `inner`; hashes only with `hash`.
pub fn hashing<R>(inner: R, hash: Option<&SentHash>) -> Hashing<R> {
    Hashing {
        inner,
        hash: hash.cloned(),
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(h)) = (&res, &self.hash) {
            let new = &buf.filled()[before..];
            let mut g = h.0.lock().unwrap_or_else(|e| e.into_inner());
            g.0.update(new);
            g.1 += new.len() as u64;
        }
        res
    }
}

/// What one accepted PATCH carried.
pub struct Accepted<'a> {
    pub item: i64,
    pub start: u64,
    pub len: u64,
    /// The server's offset after it.
    pub acked: u64,
    /// The `Upload-Checksum` it went with (base64 SHA-1), which the server checked.
    pub checksum: Option<&'a str>,
    /// The hash of the body as read, where there was no checksum.
    pub hashed: Option<&'a SentHash>,
    /// The inode the chunk was read from.
    pub ino: Option<u64>,
}

/// Records an accepted chunk, if all of it was accepted and its digest is known. A failing
/// write is logged: the upload goes on, and is just not verified for freeing space.
pub fn record(store: &Store, a: &Accepted<'_>) {
    if a.acked != a.start + a.len || a.len == 0 {
        return;
    }
    let Some(ino) = a.ino else { return };
    let (sha1, checksum) = match (a.checksum, a.hashed) {
        (Some(b64), _) => {
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) else {
                return;
            };
            let Ok(digest) = <[u8; 20]>::try_from(bytes.as_slice()) else {
                return;
            };
            (digest, true)
        }
        (None, Some(h)) => match h.finish() {
            (digest, n) if n == a.len => (digest, false),
            _ => return,
        },
        (None, None) => return,
    };
    let chunk = SentChunk {
        start: a.start,
        len: a.len,
        sha1,
        checksum,
        ino,
    };
    if let Err(e) = store.record_sent_chunk(a.item, &chunk) {
        tracing::warn!(item = a.item, error = %e, "cannot record what was sent (the file will not be freed)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn the_hash_is_of_the_bytes_read_and_none_is_computed_without_one() {
        let h = SentHash::default();
        let mut r = hashing(&b"hello world"[..], Some(&h));
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        let (digest, n) = h.finish();
        assert_eq!(n, 11);
        assert_eq!(digest, <[u8; 20]>::from(sha1::Sha1::digest(b"hello world")));
        let mut plain = hashing(&b"abc"[..], None);
        let mut out = Vec::new();
        plain.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"abc");
    }
}
