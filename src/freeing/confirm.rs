//! The confirmations just before a deletion: the server's `HEAD`, the read-back of the file
//! against the digests of what was sent, and the rules asked again with those answers.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::gather::{on_card, world};
use super::HEAD_TIMEOUT;
use crate::app::App;
use crate::config::FreeSpaceVerify;
use crate::credentials::Account;
use crate::space::{self, FileFacts, Keep, ReadBack, Server, Verdict, World};
use crate::store::{FreeCandidate, SentChunk, SentSummary};
use crate::upload::tus::Receipt;

/// Asks the server, reads back where needed, looks at the file again, and asks the rules with
/// those answers. `None`: stopped.
pub(super) async fn confirm(
    app: &Arc<App>,
    stop: &CancellationToken,
    account: Option<&Account>,
    world: &mut World,
    f: &mut FileFacts,
    c: &FreeCandidate,
) -> Option<Verdict> {
    (f.server, f.receipt) = head(app, stop, account, c).await?;
    if let (space::Receipt::Sha256(d), Some(mine)) = (&f.receipt, f.digest) {
        if *d == mine {
            app.receipt_matched(c.item.id);
        }
    }
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
        // The rules judged the record the pass gathered; the watcher may have queued the file
        // again since (an edit in place, seen and settled): that drops the record, and a read
        // back against nothing (or against a new upload's first chunks) would say "same".
        // Only the record judged counts; another one means the file changed.
        if summary_of(&chunks) != c.sent {
            tracing::info!(id = c.item.id, path = %c.item.storage_path,
                "what was sent of the file changed since the pass gathered it (queued again?): kept");
            return Some(Verdict::Keep(Keep::Changed));
        }
        let path = disk.clone();
        // A stop also ends the reading itself: a large video is seconds of card reads.
        let abandon = Arc::new(AtomicBool::new(false));
        let flag = abandon.clone();
        // Under `receipt`, the whole file's SHA-256 instead.
        let whole = f
            .digest
            .filter(|_| world.policy.verify == FreeSpaceVerify::Receipt);
        let job = tokio::task::spawn_blocking(move || read_back_file(&path, &chunks, whole, &flag));
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
/// under; under `receipt` asking for the server's receipt (`Want-Repr-Digest`). `None`:
/// stopped.
async fn head(
    app: &Arc<App>,
    stop: &CancellationToken,
    account: Option<&Account>,
    c: &FreeCandidate,
) -> Option<(Server, space::Receipt)> {
    if stop.is_cancelled() {
        return None;
    }
    let Some(account) = account else {
        return Some((Server::Doubt("not paired".into()), space::Receipt::NotAsked));
    };
    let on_receipt = app.config().media.free_space_verify == FreeSpaceVerify::Receipt;
    let ask = async {
        if on_receipt {
            app.head_upload_receipt(&c.done_url, &account.token).await
        } else {
            let st = app.head_upload(&c.done_url, &account.token).await?;
            Ok((st, Receipt::None))
        }
    };
    let answer = tokio::select! {
        // A stop comes first: a HEAD is not even begun after it.
        biased;
        _ = stop.cancelled() => return None,
        r = tokio::time::timeout(HEAD_TIMEOUT, ask) => r,
    };
    let size = c.item.size;
    let receipt = match &answer {
        Ok(Ok((_, Receipt::Sha256(d)))) => space::Receipt::Sha256(*d),
        Ok(Ok((_, Receipt::Malformed(why)))) => {
            tracing::warn!(id = c.item.id, reason = %why, "the server's Repr-Digest cannot be read: no receipt");
            space::Receipt::None
        }
        _ if on_receipt => space::Receipt::None,
        _ => space::Receipt::NotAsked,
    };
    let answer = answer.map(|r| r.map(|(st, _)| st));
    let server = match answer {
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
    };
    Some((server, receipt))
}

/// What `chunks` add up to, as the store sums them for a [`FreeCandidate`].
pub(super) fn summary_of(chunks: &[SentChunk]) -> SentSummary {
    let ino = chunks.first().map(|c| c.ino);
    SentSummary {
        chunks: chunks.len() as u64,
        bytes: chunks.iter().map(|c| c.len).sum(),
        end: chunks.iter().map(|c| c.start + c.len).max().unwrap_or(0),
        all_checksummed: !chunks.is_empty() && chunks.iter().all(|c| c.checksum),
        ino: ino.filter(|i| chunks.iter().all(|c| c.ino == *i)),
    }
}

/// Reads the file back from the card and compares each recorded chunk's SHA-1 with what was
/// sent (the `Upload-Checksum` the server checked, or the hash of the bytes as they went out).
/// Opened without following links. Whatever its inode: [`ReadBack::Same`] names the inode
/// read, which the rules compare with the file at the path at the last look. With `whole`
/// (under `receipt`, where no chunk is recorded) the whole file is read to its end and its
/// SHA-256 must equal it.
pub(super) fn read_back_file(
    path: &Path,
    chunks: &[SentChunk],
    whole: Option<[u8; 32]>,
    abandon: &AtomicBool,
) -> ReadBack {
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
    if let Some(want) = whole {
        // Under `receipt`: the whole file, to its end, against the camera's digest.
        let mut d = crate::digest::FileDigest::default();
        let len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return failed(e),
        };
        return match crate::upload::source::digest_range(&file, &mut d, len, abandon) {
            Ok(()) if d.finish() == want => ReadBack::Same { ino },
            Ok(()) => ReadBack::Differs { at: 0 },
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => ReadBack::Differs { at: 0 },
            Err(e) => failed(e),
        };
    }
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
