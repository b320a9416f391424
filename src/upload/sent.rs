//! What was sent: the digest of each chunk the server accepted, for freeing space to verify an
//! upload by (INTERFACE.md section 8), and under `free_space_verify = "receipt"` the camera's
//! SHA-256 of the whole file. `transfer` calls in at two points only: it wraps each chunk's
//! body in [`hashing`] and [`digesting`] (the bytes as they go out), and after an accepted
//! PATCH it calls [`record`] and [`record_whole`].
//!
//! Invariants: nothing is hashed or recorded unless the maker configured freeing space (the
//! whole file's SHA-256 only under `receipt`); a chunk is recorded only when the server
//! acknowledged all of it and exactly its bytes were hashed, so a record is never wrong, at
//! worst missing (and a missing one keeps the file). The whole file's digest moves on only by
//! a chunk the server acknowledged whole, so it is always of the bytes the server holds.

use std::io;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use sha1::Digest as _;

use crate::digest::FileDigest;
use crate::store::{SentChunk, SentDigest, Store};

/// The camera's SHA-256 of the whole file, going on from where the chunk starts over the
/// bytes of its body as they go out; it becomes the file's digest when the server accepts
/// the whole chunk ([`record_whole`]).
#[derive(Clone)]
pub struct WholeHash(Arc<Mutex<FileDigest>>);

impl WholeHash {
    /// Goes on from `from` (the digest of the bytes before the chunk).
    pub fn from(from: &FileDigest) -> WholeHash {
        WholeHash(Arc::new(Mutex::new(from.clone())))
    }

    fn get(&self) -> FileDigest {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Wraps a body: every block that goes out is hashed into the whole file's digest first (or
/// passed through, when there is none).
pub fn digesting<S>(inner: S, whole: Option<&WholeHash>) -> impl Stream<Item = io::Result<Bytes>>
where
    S: Stream<Item = io::Result<Bytes>>,
{
    let whole = whole.cloned();
    inner.inspect(move |r| {
        if let (Ok(block), Some(w)) = (r, &whole) {
            w.0.lock().unwrap_or_else(|e| e.into_inner()).update(block);
        }
    })
}

/// After an accepted PATCH: the whole file's digest over `[0, acked)`, when the server
/// acknowledged exactly the chunk's bytes and all of them were hashed (`None` otherwise: the
/// caller's digest stays where it was). Saved in the store, so a resume after a restart goes
/// on from here; with the digest itself once `acked` is the file's size. A failing write is
/// logged: the upload goes on, and a resume reads the part sent back from the card.
pub fn record_whole(
    store: &Store,
    a: &Accepted<'_>,
    size: u64,
    whole: &WholeHash,
) -> Option<FileDigest> {
    let d = whole.get();
    if a.acked != a.start + a.len || d.len() != a.acked {
        return None;
    }
    let saved = SentDigest {
        at: d.len(),
        state: d.to_bytes(),
        sha256: (d.len() == size).then(|| d.finish()),
    };
    if let Err(e) = store.record_sent_digest(a.item, &saved) {
        tracing::warn!(item = a.item, error = %e, "cannot save the file's digest (a resume reads the part sent back)");
    }
    Some(d)
}

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

/// Wraps a body: every block that goes out is hashed into `hash` first (or passed through,
/// when there is none).
pub fn hashing<S>(inner: S, hash: Option<&SentHash>) -> impl Stream<Item = io::Result<Bytes>>
where
    S: Stream<Item = io::Result<Bytes>>,
{
    let hash = hash.cloned();
    inner.inspect(move |r| {
        if let (Ok(block), Some(h)) = (r, &hash) {
            let mut g = h.0.lock().unwrap_or_else(|e| e.into_inner());
            g.0.update(block);
            g.1 += block.len() as u64;
        }
    })
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

    #[tokio::test]
    async fn the_hash_is_of_the_blocks_sent_and_none_is_computed_without_one() {
        let blocks = || {
            futures_util::stream::iter(
                [&b"hello "[..], &b"world"[..]].map(|b| Ok(Bytes::from_static(b))),
            )
        };
        let h = SentHash::default();
        let out: Vec<_> = hashing(blocks(), Some(&h)).collect().await;
        assert_eq!(out.len(), 2);
        let (digest, n) = h.finish();
        assert_eq!(n, 11);
        assert_eq!(digest, <[u8; 20]>::from(sha1::Sha1::digest(b"hello world")));
        let plain: Vec<_> = hashing(blocks(), None).collect().await;
        let bytes: Vec<u8> = plain
            .into_iter()
            .flat_map(|b| b.unwrap().to_vec())
            .collect();
        assert_eq!(bytes, b"hello world");
    }
}
