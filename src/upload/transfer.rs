//! One attempt at one queue item: discover, create or resume, stream the chunks, report.
//!
//! Invariants:
//! - the upload URL is in the database before the first byte of data goes out, so a crash at
//!   any point resumes the same server upload instead of creating a second one;
//! - the file is checked against the queued version (size, mtime, inode) before every chunk
//!   and once more after the last byte: a changed file is never spliced onto an upload of its
//!   older self, nor declared done with mixed bytes (its server upload is ended instead);
//! - the file is opened without following symlinks, at a path with no symlink under the media
//!   root: nothing outside the root is ever read;
//! - an upload URL is used only against the endpoint it was created at: after the endpoint
//!   changed, no request (and no token) goes to the old host;
//! - progress reaches the database at most every [`PERSIST_EVERY`] (the state lives on flash),
//!   and always when the attempt ends early;
//! - `Done` only when the server's own offset equals the file's length;
//! - a stop aborts the request in flight at once (the future is dropped, the connection closed).
//!
//! What each outcome does to the item (back-off, failed state, account state) is the
//! scheduler's business; this module only says which it is.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::os::unix::fs::OpenOptionsExt as _;

use tokio_util::sync::CancellationToken;

use crate::clock::now_unix;
use crate::config::{ChunkSizing, Config};
use crate::credentials::Account;
use crate::digest::FileDigest;
use crate::store::{Item, Store};
use crate::upload::metadata::UploadMetadata;
use crate::upload::prompt::Prompt;
use crate::upload::tus::{Client, TusError, UploadState};
use crate::upload::{chunk, retry, sent, source, tus};
use crate::words::count;

const MIB: f64 = (1 << 20) as f64;

/// Progress reaches the database at most this often while chunks are acknowledged.
pub const PERSIST_EVERY: Duration = Duration::from_secs(2);

/// A server that loses our upload more often than this within one attempt is not helped by a
/// third creation; the attempt ends in a retry with back-off instead.
const MAX_CREATIONS_PER_ATTEMPT: u32 = 2;

/// 409 answers (offset mismatch) tolerated within one attempt before backing off.
const MAX_CONFLICTS_PER_ATTEMPT: u32 = 3;

/// What one transfer needs.
pub struct TransferCtx<'a> {
    /// The daemon's one tus client (connections and discovery are shared).
    pub client: &'a Client,
    /// Where the upload URL and progress are recorded.
    pub store: &'a Store,
    /// Endpoint, chunk size, media root and the device's identity for the metadata.
    pub config: &'a Config,
    /// Token for `Authorization`, user ID for the metadata, region for the endpoint.
    pub account: &'a Account,
}

/// How one attempt at an item ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server holds every byte.
    Done,
    /// A transient failure: try again later (after `retry_after` if the server said so).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// 503 or 429 without `Retry-After`: the server is overloaded or down as a whole. Tried
    /// again after the item's back-off, and no other file starts before then.
    ServerBusy(String),
    /// A permanent failure for this item (413, a 4xx that will not change): stop retrying.
    Failed(String),
    /// 401: the server refused the token. Nothing more is sent until the user pairs again.
    Unauthorized(String),
    /// 402, or a 403 that says the subscription is inactive.
    SubscriptionInactive(String),
    /// The file on the card could not be read (card removed, file deleted or replaced).
    FileUnreadable(String),
    /// The server refused the device's TLS certificate (mutual TLS; the alert is named): tried
    /// again under the back-off like a network error, and shown in `attention` until an upload
    /// goes through.
    CertificateRefused(String),
    /// The server cannot be reached through the uplink (Wi-Fi without internet, a captive
    /// portal): tried again when the link changes, not before (`gate::Block::NoInternet`,
    /// `gate::Block::CaptivePortal`).
    NoPath {
        reach: super::tus::Reach,
        error: String,
    },
    /// `stop` fired; the server's offset is saved and the item resumes later.
    Stopped,
}

// The scanner and this module must compute a file's identity the same way: one function.
use crate::media::mtime_ns;

/// Uploads (or resumes) one item until done, stopped or failed.
///
/// `progress` gets the item's bytes on the server after each acknowledged chunk, and, about
/// four times a second during a chunk, the bytes handed to the connection so far (not yet
/// acknowledged: after a failure the next value may be lower). Only acknowledged offsets are
/// written to the store.
pub async fn upload(
    ctx: &TransferCtx<'_>,
    item: &Item,
    stop: &CancellationToken,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Outcome {
    let mut t = Transfer {
        ctx,
        item,
        stop,
        progress,
        path: item.storage_path.on_disk(&ctx.config.media.root),
        identity: None,
        url: item.upload_url.clone(),
        offset: item.bytes_sent,
        persisted: item.bytes_sent,
        expires_at: item.upload_expires_at,
        last_persist: Instant::now(),
        changed: false,
        sending: false,
        // Under `receipt` the whole file's digest stands for the chunks' record.
        record_sent: ctx.config.media.frees_space() && !ctx.config.media.digests_whole_files(),
        whole: ctx
            .config
            .media
            .digests_whole_files()
            .then(FileDigest::default),
        prompt: Prompt::default(),
        acked: if item.upload_url.is_some() {
            item.bytes_sent
        } else {
            0
        },
    };
    let result = t.run().await;
    if t.changed && t.sending {
        // Bytes went out in this attempt and the file changed meanwhile: what the server holds
        // may mix two versions. (A change seen before any byte went out is another card with
        // the same names, or a file rewritten while the daemon was down: the upload is left
        // alone, and resumes if that version comes back.)
        t.end_mixed_upload().await;
    }
    match result {
        Ok(()) => Outcome::Done,
        Err(out) => {
            tracing::debug!(item = item.id, path = %item.storage_path, outcome = ?out, "upload attempt ended");
            out
        }
    }
}

/// Awaits `fut` unless `stop` fires first (`None`): dropping the future aborts its request.
async fn or_stop<T>(stop: &CancellationToken, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        r = fut => Some(r),
    }
}

/// What identifies the queued version of the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// A chunk about to be sent: where, how long, and its SHA-1 if the server verifies them.
struct Planned {
    offset: u64,
    /// Its length; for an `open` chunk the most it may carry.
    len: u64,
    digest: Option<source::Digest>,
    /// Its length is chosen when it is sent ([`Transfer::plan_open`]).
    open: bool,
}

/// How a session's chunks went.
enum Sent {
    /// Every byte is acknowledged; `acknowledged`: by a PATCH answer of this session.
    All { acknowledged: bool },
    /// The upload was lost or its offset could not be told: a new session starts.
    Restart,
}

/// One attempt's state. `offset` is the last offset the server acknowledged (or reported).
struct Transfer<'a, 'c> {
    ctx: &'a TransferCtx<'c>,
    item: &'a Item,
    stop: &'a CancellationToken,
    progress: &'a (dyn Fn(u64) + Send + Sync),
    path: PathBuf,
    identity: Option<FileId>,
    url: Option<String>,
    offset: u64,
    persisted: u64,
    expires_at: Option<i64>,
    last_persist: Instant,
    /// The file on the card is no longer the queued version.
    changed: bool,
    /// A PATCH of this attempt started reading the file.
    sending: bool,
    /// Freeing space verifies by what was sent (only on cameras whose maker configured it):
    /// each accepted chunk's digest is recorded. Decided once per attempt.
    record_sent: bool,
    /// Under `free_space_verify = "receipt"`: the camera's SHA-256 of the file's bytes the
    /// server accepted, `[0, len)`, computed from the bodies as they went out; brought to the
    /// session's offset before each chunk ([`Transfer::catch_up_whole`]).
    whole: Option<FileDigest>,
    /// The run of failures tried again at once (module [`super::prompt`]).
    prompt: Prompt,
    /// The highest offset the server stated for the upload at `url` (a PATCH's answer, a
    /// HEAD): it holds those bytes. A later, lower offset is a server that lost or misreads
    /// what it acknowledged ([`Transfer::head`]).
    acked: u64,
}

impl Transfer<'_, '_> {
    /// One attempt: creation or resumption, then the chunks, each re-checked and paced.
    async fn run(&mut self) -> Result<(), Outcome> {
        let rule = chunk::Rule::of(&self.ctx.config.cloud);
        // The rate survives new sessions within the attempt: the link is the same.
        let mut pacer = chunk::Pacer::default();
        let hashing = self.preflight().await?;
        let mut creations = 0;
        let mut conflicts = 0;
        loop {
            // Where the server's upload stands. `confirmed`: the server itself told us the
            // offset (HEAD or a PATCH answer), not just "a new upload starts at 0".
            let Some(mut confirmed) = self.open_session(&mut creations).await? else {
                continue;
            };
            (self.progress)(self.offset);
            match self
                .send_chunks(&mut pacer, &rule, hashing, &mut conflicts)
                .await?
            {
                Sent::Restart => continue,
                Sent::All { acknowledged } => confirmed |= acknowledged,
            }
            self.complete_whole().await?;

            // The last byte is acknowledged, but the file may have been rewritten while it was
            // read: then the server holds a mix of two versions. Never call that done.
            self.check_file(&std::fs::symlink_metadata(&self.path))?;
            if let Some(url) = self.url.clone() {
                self.still_this_upload(&url)?;
            }

            if !confirmed && !self.server_holds_all().await? {
                continue;
            }
            return Ok(());
        }
    }

    /// Before any session: the stored upload URL is dropped if it belongs to another endpoint
    /// or origin or has expired, the file is checked to be the queued version, and the server's
    /// capabilities are asked. Returns whether the server verifies chunks by SHA-1.
    async fn preflight(&mut self) -> Result<bool, Outcome> {
        let ctx = self.ctx;
        let token = &ctx.account.token;
        let endpoint = ctx.config.cloud.endpoint_for(ctx.account.region.as_deref());
        let size = self.item.size;
        // First of all: an upload created at another endpoint (the config moved to a new
        // host, the account to another region) is never touched there, not even ended: a new
        // one starts here.
        if self.url.is_some() && self.item.upload_endpoint.as_deref() != Some(endpoint) {
            tracing::info!(
                item = self.item.id,
                "the endpoint changed since this upload was created; starting anew"
            );
            self.forget_url("it was created at another endpoint")?;
        }
        // An upload URL away from the endpoint's origin (stored before that rule, or written
        // by hand) is never asked: the token would go with the question. A new upload starts.
        if let Some(why) = self.url.as_deref().and_then(|u| foreign_url(endpoint, u)) {
            tracing::warn!(item = self.item.id, why, "refusing a stored upload URL");
            self.forget_url(&format!("its URL is refused: {why}"))?;
        }
        // Before anything goes out: is the file still the version that was queued?
        self.check_file(&std::fs::symlink_metadata(&self.path))?;
        self.note_fingerprint().await;

        let caps = self
            .until_stop(ctx.client.options(endpoint, token))
            .await?
            .map_err(|e| self.outcome_for(&e))?;
        if let Some(max) = caps.max_size.filter(|m| size > *m) {
            return Err(Outcome::Failed(format!(
                "server refuses files this large: {} is {}, the server accepts at most {max} \
                 (Tus-Max-Size)",
                self.item.storage_path,
                count(size, "byte", "bytes")
            )));
        }
        // An upload the server has let expire cannot be resumed; do not even ask.
        if self.url.is_some() && self.expires_at.is_some_and(|t| t <= now_unix()) {
            self.forget_url("its Upload-Expires has passed")?;
        }
        Ok(caps.sha1_checksum())
    }

    /// Creates the upload (its URL stored before any data) or asks where the stored one
    /// stands. `Some(confirmed)`: the session is open at `self.offset`, `confirmed` when the
    /// server said so itself; `None`: start the session again (the upload was lost).
    async fn open_session(&mut self, creations: &mut u32) -> Result<Option<bool>, Outcome> {
        let ctx = self.ctx;
        let token = &ctx.account.token;
        let endpoint = ctx.config.cloud.endpoint_for(ctx.account.region.as_deref());
        let size = self.item.size;
        match self.url.clone() {
            None => {
                if *creations >= MAX_CREATIONS_PER_ATTEMPT {
                    return Err(Outcome::Retry {
                        error: format!(
                            "the server lost the upload of {} twice in one attempt",
                            self.item.storage_path
                        ),
                        retry_after: None,
                    });
                }
                *creations += 1;
                let md = UploadMetadata::new(
                    &ctx.account.user_id,
                    &ctx.config.device.device_type,
                    &ctx.config.device.serial,
                    &self.item.storage_path,
                );
                let created = match self
                    .until_stop(ctx.client.create(endpoint, size, &md, token))
                    .await?
                {
                    Ok(c) => c,
                    Err(e) => {
                        // Tried again at once where a new request gets past it; a
                        // creation whose answer was lost leaves an empty upload behind.
                        self.pause_or_end(&e).await?;
                        *creations -= 1;
                        return Ok(None);
                    }
                };
                // Into the database before any data: from here on a crash resumes this
                // upload instead of creating a second one. No URL stored, no data sent.
                ctx.store
                    .set_upload_url(self.item.id, &created.url, created.expires_at, endpoint)
                    .map_err(|e| Outcome::Retry {
                        error: format!("cannot record the new upload's URL: {e}"),
                        retry_after: None,
                    })?;
                tracing::info!(item = self.item.id, path = %self.item.storage_path, url = %created.url, "created upload");
                self.url = Some(created.url);
                self.offset = created.offset.unwrap_or(0);
                self.persisted = 0;
                self.expires_at = created.expires_at;
                Ok(Some(created.offset.is_some()))
            }
            Some(url) => {
                let Some(st) = self.head(&url).await? else {
                    return Ok(None);
                };
                // Did the server keep any of a PATCH that broke? (`chunk::BodyLimit`)
                if let Some(refused) = ctx.client.body_limit().judge(&url, st.offset) {
                    self.refused_by_cuts(refused, st.offset)?;
                }
                if let Some(len) = st.length.filter(|l| *l != size) {
                    self.forget_url(&format!(
                        "the server's upload is {} long, the file {size}",
                        count(len, "byte", "bytes")
                    ))?;
                    return Ok(None);
                }
                self.accept_server_offset(st.offset)?;
                self.expires_at = st.expires_at.or(self.expires_at);
                Ok(Some(true))
            }
        }
    }

    /// Sends the chunks from `self.offset` to the end, each planned (and hashed) one ahead.
    async fn send_chunks(
        &mut self,
        pacer: &mut chunk::Pacer,
        rule: &chunk::Rule,
        hashing: bool,
        conflicts: &mut u32,
    ) -> Result<Sent, Outcome> {
        let client = self.ctx.client;
        let token = &self.ctx.account.token;
        let size = self.item.size;
        let mut acknowledged = false;
        // The chunk planned one ahead: its SHA-1 is computed while the current one is sent.
        let mut ahead: Option<Planned> = None;
        let limit = client.body_limit();
        while self.offset < size {
            let url = self.url.clone().expect("a session has an upload URL");
            self.still_this_upload(&url)?;
            let rule = &limit.apply(rule, Instant::now());
            let mut this = match ahead.take() {
                // Not one planned longer than a cap another upload learnt meanwhile.
                Some(p) if p.offset == self.offset && (p.open || p.len <= rule.bound) => p,
                _ => self.plan(self.offset, pacer.next_len(rule), hashing)?,
            };
            if this.open {
                // Hashed ahead before any rate was known: its length is chosen now, from
                // the rate the first chunk measured (the hash kept a state at every MiB).
                this.len = self.chunk_len(this.offset, pacer.next_len(rule));
                if let Some(d) = &this.digest {
                    d.stop_at(this.len);
                }
            }
            let end = this.offset + this.len;
            if hashing && end < size {
                ahead = Some(if rule.sizing == ChunkSizing::Auto && !pacer.knows_rate() {
                    self.plan_open(end, rule.bound)?
                } else {
                    self.plan(end, pacer.next_len(rule), true)?
                });
            }
            let (base, len) = (this.offset, this.len);
            self.catch_up_whole().await?;
            let digest = match this.digest {
                Some(d) => match self.until_stop(d.finish(len)).await? {
                    Ok(sum) => Some(sum),
                    Err(e) => return Err(self.read_failed(&e)),
                },
                None => None,
            };
            // Where no checksum covers the chunk, the body is hashed as it goes out.
            let hashed = (self.record_sent && digest.is_none()).then(sent::SentHash::default);
            let whole = self.whole.as_ref().map(sent::WholeHash::from);
            let body = sent::hashing(
                sent::digesting(source::body(self.open_chunk()?, base, len), whole.as_ref()),
                hashed.as_ref(),
            );
            self.sending = true;
            let progress = self.progress;
            let on_sent = move |n: u64| progress(base + n);
            let started = Instant::now();
            let patch = client.patch(&url, token, base, body, len, digest.as_deref(), &on_sent);
            match self.until_stop(patch).await? {
                Ok(ack) => {
                    pacer.acknowledged(len, started.elapsed());
                    limit.accepted(&url);
                    self.expires_at = ack.expires_at.or(self.expires_at);
                    acknowledged = true;
                    self.accepted(
                        base,
                        len,
                        ack.offset,
                        digest.as_deref(),
                        hashed.as_ref(),
                        whole.as_ref(),
                    );
                }
                Err(e) if e.status() == Some(409) && *conflicts < MAX_CONFLICTS_PER_ATTEMPT => {
                    // Our offset and the server's disagree (a chunk we thought lost
                    // arrived after all): ask the server and carry on from its offset.
                    *conflicts += 1;
                    let Some(st) = self.head(&url).await? else {
                        return Ok(Sent::Restart);
                    };
                    self.accept_server_offset(st.offset)?;
                    (self.progress)(self.offset);
                }
                Err(e) if e.is_gone() => {
                    self.forget_url(&e.to_string())?;
                    return Ok(Sent::Restart);
                }
                Err(e) if e.status() == Some(413) && len > chunk::MIN => {
                    // A limit on bodies: shorter ones (already, if another upload lowered
                    // the cap meanwhile).
                    let cap = limit.refused(len, chunk::Refusal::Answered413, Instant::now());
                    self.body_limit_lowered(len, cap, "was answered 413");
                    return Ok(Sent::Restart);
                }
                Err(e) if e.status() == Some(413) => {
                    self.persist();
                    // A file changed meanwhile says so, as after any failure (`end_with`).
                    self.check_file(&std::fs::symlink_metadata(&self.path))?;
                    return Err(Outcome::Failed(format!(
                        "the server or a proxy before it refuses a PATCH body of {} (413); \
                         cambackup sends at least 1 MiB a PATCH where the file has it: the \
                         limit on request bodies must be raised ({e})",
                        count(len, "byte", "bytes")
                    )));
                }
                Err(e) => {
                    if e.connection_broke() {
                        limit.broke(&url, base, len);
                    }
                    // The next session asks HEAD where the upload stands.
                    self.pause_or_end(&e).await?;
                    return Ok(Sent::Restart);
                }
            }
        }
        Ok(Sent::All { acknowledged })
    }

    /// Brings the whole file's digest to the session's offset, where the server's upload
    /// stands: at once when the chunks ran in one go; after a restart from the state saved
    /// at the last accepted chunk, reading from the card only what lies between it and the
    /// server's offset (bytes the server kept of a PATCH cut short, or nothing); from the
    /// first byte only when no saved state is at or below the offset (a new upload needs none).
    async fn catch_up_whole(&mut self) -> Result<(), Outcome> {
        let Some(have) = &self.whole else {
            return Ok(());
        };
        let to = self.offset;
        if have.len() == to {
            return Ok(());
        }
        let mut from = if have.len() < to {
            have.clone()
        } else {
            FileDigest::default()
        };
        if let Ok(Some(saved)) = self.ctx.store.sent_digest(self.item.id) {
            if let Some(d) = FileDigest::from_bytes(&saved.state)
                .filter(|d| d.len() == saved.at && d.len() <= to && d.len() > from.len())
            {
                from = d;
            }
        }
        if from.len() < to {
            let file = self.open_chunk()?;
            let (start, abandon) = (from.len(), std::sync::Arc::new(AtomicBool::new(false)));
            let flag = abandon.clone();
            tracing::info!(
                item = self.item.id,
                from = start,
                to,
                "reading the part sent back from the card for the file's digest"
            );
            let job = tokio::task::spawn_blocking(move || {
                source::digest_range(&file, &mut from, to - start, &flag).map(|()| from)
            });
            let read = or_stop(self.stop, job).await;
            abandon.store(true, Ordering::Relaxed);
            from = match read {
                None => return Err(self.stopped()),
                Some(Ok(Ok(d))) => d,
                Some(Ok(Err(e))) => return Err(self.read_failed(&e)),
                Some(Err(e)) => {
                    return Err(Outcome::Retry {
                        error: format!("reading thread: {e}"),
                        retry_after: None,
                    })
                }
            };
        }
        self.whole = Some(from);
        Ok(())
    }

    /// Every byte is on the server: the whole file's digest is kept, also where no chunk was
    /// sent in this attempt (a restart after the last chunk was accepted and before the item
    /// was done): from the saved state, or, where a crash lost that too, read from the card.
    async fn complete_whole(&mut self) -> Result<(), Outcome> {
        let size = self.item.size;
        if self.whole.as_ref().is_none_or(|w| w.len() == size) {
            return Ok(());
        }
        self.catch_up_whole().await?;
        if let Some(d) = self.whole.as_ref().filter(|d| d.len() == size) {
            let saved = crate::store::SentDigest {
                at: size,
                state: d.to_bytes(),
                sha256: Some(d.finish()),
            };
            if let Err(e) = self.ctx.store.record_sent_digest(self.item.id, &saved) {
                tracing::warn!(item = self.item.id, error = %e, "cannot save the file's digest (it will not be freed on a receipt)");
            }
        }
        Ok(())
    }

    /// Nothing was sent (a zero-byte file, just created): "done" needs the server's own word
    /// that it holds the whole length. False: start the session again.
    async fn server_holds_all(&mut self) -> Result<bool, Outcome> {
        let size = self.item.size;
        let url = self.url.clone().expect("a session has an upload URL");
        let Some(st) = self.head(&url).await? else {
            return Ok(false);
        };
        if st.offset != size {
            return Err(Outcome::Retry {
                error: format!(
                    "HEAD {url}: the server reports offset {} of a {size}-byte upload \
                     with nothing left to send",
                    st.offset
                ),
                retry_after: None,
            });
        }
        Ok(true)
    }

    /// Awaits `fut` unless the stop token fires first; then the offset is saved and the
    /// attempt ends as [`Outcome::Stopped`] (dropping `fut` aborts its request).
    async fn until_stop<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Outcome> {
        match or_stop(self.stop, fut).await {
            Some(r) => Ok(r),
            None => Err(self.stopped()),
        }
    }

    /// `HEAD` on the upload: its state, or `None` when the server no longer has it (the URL
    /// is then forgotten: the caller starts a new session, which creates anew).
    async fn head(&mut self, url: &str) -> Result<Option<UploadState>, Outcome> {
        let ctx = self.ctx;
        loop {
            match self
                .until_stop(ctx.client.head(url, &ctx.account.token))
                .await?
            {
                Ok(st) if st.offset < self.acked => {
                    // The server's offset went back below what it acknowledged: it lost bytes,
                    // or its view of the upload is inconsistent (an object store whose listing
                    // of the parts misses some: Swift with a server down). Resuming there risks
                    // an object assembled from the wrong parts, which nothing would tell; a new
                    // upload is whole. The old one is ended, where the server can.
                    let why = format!(
                        "HEAD {url}: the server reports offset {} after acknowledging {}",
                        st.offset, self.acked
                    );
                    tracing::warn!(item = self.item.id, path = %self.item.storage_path, reason = %why, "the server's offset went back; ending that upload");
                    let end = ctx.client.terminate(url, &ctx.account.token);
                    let _ = self
                        .until_stop(tokio::time::timeout(Duration::from_secs(10), end))
                        .await?;
                    self.forget_url(&why)?;
                    return Ok(None);
                }
                Ok(st) => {
                    self.acked = st.offset;
                    return Ok(Some(st));
                }
                Err(e) if e.is_gone() => {
                    self.forget_url(&e.to_string())?;
                    return Ok(None);
                }
                Err(e) => self.pause_or_end(&e).await?,
            }
        }
    }

    /// After a failed request: a short pause, when a new request may get past the failure at
    /// once (module [`super::prompt`]), or the end of the attempt ([`Transfer::end_with`]).
    async fn pause_or_end(&mut self, e: &TusError) -> Result<(), Outcome> {
        let Some(pause) = self.prompt.pause_for(e, Instant::now(), retry::jitter()) else {
            return Err(self.end_with(e));
        };
        self.persist();
        tracing::info!(item = self.item.id, error = %e, try_ = self.prompt.tries(), pause_ms = pause.as_millis() as u64, "request cut; trying again at once");
        self.until_stop(tokio::time::sleep(pause)).await
    }

    /// Takes the server's offset as ours, unless it is beyond the file (never valid).
    fn accept_server_offset(&mut self, offset: u64) -> Result<(), Outcome> {
        if offset > self.item.size {
            return Err(Outcome::Failed(format!(
                "the server reports {} of {}, which has only {}",
                count(offset, "byte", "bytes"),
                self.item.storage_path,
                self.item.size
            )));
        }
        self.offset = offset;
        Ok(())
    }

    /// The file changed after some of its bytes went out: the server's upload mixes two
    /// versions. It is ended (tus termination, where the server has it) and forgotten, so it
    /// is never resumed nor completed; the new version is queued as a file of its own.
    async fn end_mixed_upload(&mut self) {
        let Some(url) = self.url.clone() else { return };
        tracing::warn!(item = self.item.id, path = %self.item.storage_path, "the file changed while it was sent; ending its server upload");
        let ask = self.ctx.client.terminate(&url, &self.ctx.account.token);
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(10), ask).await {
            tracing::warn!(error = %e, "could not terminate the mixed upload");
        }
        let _ = self.forget_url("the file changed while it was sent");
    }

    /// Records the fingerprint of the bytes about to go out, where the item has none yet (the
    /// scan queues by metadata alone): a later look at the card tells these bytes from others
    /// under the same name, size and stamp (store/identity.rs). Best effort: without it the
    /// item is judged by its metadata, as before.
    async fn note_fingerprint(&self) {
        if self.item.fingerprint.is_some() {
            return;
        }
        let (path, size) = (self.path.clone(), self.item.size);
        let fp =
            tokio::task::spawn_blocking(move || crate::card::Fingerprint::of_path(&path, size))
                .await;
        match fp {
            Ok(Ok(Some(fp))) => {
                if let Err(e) = self.ctx.store.set_fingerprint(self.item.id, &fp) {
                    tracing::warn!(item = self.item.id, error = %e, "cannot record the file's fingerprint");
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(item = self.item.id, error = %e, "cannot fingerprint the file")
            }
            _ => {}
        }
    }

    /// Whether the item still stands for the upload at `url`. The watcher forgets an item's
    /// upload when it finds new bytes under the file's name, size and stamp (an edit in place:
    /// store/identity.rs), which the metadata checks cannot see: the chunks still to send are
    /// then the new bytes' tail, never to be appended to the old head, nor the old upload
    /// called done. The attempt ends; the next one creates a new upload.
    fn still_this_upload(&self, url: &str) -> Result<(), Outcome> {
        match self.ctx.store.item(self.item.id) {
            Ok(Some(it)) if it.upload_url.as_deref() != Some(url) => Err(Outcome::Retry {
                error: format!(
                    "{} changed while it was sent (new bytes under the same size and stamp): \
                     it is sent anew",
                    self.item.storage_path
                ),
                retry_after: None,
            }),
            _ => Ok(()),
        }
    }

    /// Checks file metadata against the queued version; remembers the inode on first sight.
    /// A symlink is never the queued file (the scan and the watcher never follow them).
    fn check_file(&mut self, meta: &std::io::Result<std::fs::Metadata>) -> Result<(), Outcome> {
        let meta = meta.as_ref().map_err(|e| self.unreadable(e))?;
        if !meta.is_file() {
            return Err(Outcome::FileUnreadable(format!(
                "{}: not a regular file (a symbolic link, or replaced by a directory)",
                self.path.display()
            )));
        }
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let changed = meta.len() != self.item.size
            || mtime_ns(meta) != self.item.mtime_ns
            || self.identity.is_some_and(|known| known != id);
        if changed {
            self.changed = true;
            return Err(Outcome::FileUnreadable(format!(
                "{}: changed since queued (queued {}, now {})",
                self.path.display(),
                count(self.item.size, "byte", "bytes"),
                count(meta.len(), "byte", "bytes")
            )));
        }
        self.identity = Some(id);
        Ok(())
    }

    /// The file could not be opened or examined: gone (card pulled, file deleted) or broken.
    fn unreadable(&self, e: &std::io::Error) -> Outcome {
        let shown = self.path.display();
        if e.kind() == std::io::ErrorKind::NotFound {
            Outcome::FileUnreadable(format!("{shown}: missing"))
        } else {
            Outcome::FileUnreadable(format!("{shown}: {e}"))
        }
    }

    /// The server accepted `len` bytes at `offset` (its offset now `acked`), sent with `digest`
    /// (the chunk's SHA-1 in base64, when the server offers checksums) or hashed as it went out
    /// (`hashed`, when freeing space needs it and no checksum covered it). Every accepted chunk
    /// passes here once: what was sent is recorded here, and the offset moves on.
    fn accepted(
        &mut self,
        offset: u64,
        len: u64,
        acked: u64,
        digest: Option<&str>,
        hashed: Option<&sent::SentHash>,
        whole: Option<&sent::WholeHash>,
    ) {
        tracing::trace!(item = self.item.id, offset, len, digest, "chunk accepted");
        let a = sent::Accepted {
            item: self.item.id,
            start: offset,
            len,
            acked,
            checksum: digest,
            hashed,
            ino: self.identity.map(|i| i.ino),
        };
        if self.record_sent {
            sent::record(self.ctx.store, &a);
        }
        if let (Some(_), Some(w)) = (&self.whole, whole) {
            if let Some(d) = sent::record_whole(self.ctx.store, &a, self.item.size, w) {
                self.whole = Some(d);
            }
        }
        self.offset = offset + len;
        self.acked = self.acked.max(self.offset);
        self.prompt.progressed();
        (self.progress)(self.offset);
        if self.last_persist.elapsed() >= PERSIST_EVERY {
            self.persist();
        }
    }

    /// The next chunk from `offset`, about `want` bytes, with its SHA-1 started when `hash`.
    ///
    /// The last byte goes in a PATCH of its own, after one more look at the file: a version
    /// that changed while it was read never becomes a complete upload on the server (whose
    /// post-finish hooks may already act on it).
    fn plan(&mut self, offset: u64, want: u64, hash: bool) -> Result<Planned, Outcome> {
        let len = self.chunk_len(offset, want);
        let digest = if hash {
            Some(source::Digest::start(self.open_chunk()?, offset, len))
        } else {
            None
        };
        Ok(Planned {
            offset,
            len,
            digest,
            open: false,
        })
    }

    /// The chunk from `offset` whose length is chosen when it is sent (at most `bound`), its
    /// SHA-1 started now: the chunk after an attempt's first, planned while the first is sent,
    /// before its answer has measured the rate. Its length will be whole MiB or reach the last
    /// byte's own PATCH, where the open hash keeps its states.
    fn plan_open(&mut self, offset: u64, bound: u64) -> Result<Planned, Outcome> {
        let max = self.chunk_len(offset, bound);
        Ok(Planned {
            offset,
            len: max,
            digest: Some(source::Digest::open(self.open_chunk()?, offset, max)),
            open: true,
        })
    }

    /// About `want` bytes from `offset`: never past the file, and never the last byte, which
    /// goes in a PATCH of its own (see [`Transfer::plan`]).
    fn chunk_len(&self, offset: u64, want: u64) -> u64 {
        let size = self.item.size;
        let mut len = want.max(1).min(size - offset);
        if offset + len == size && len > 1 {
            len -= 1;
        }
        len
    }

    /// The file opened without following a symlink and checked against the queued version.
    ///
    /// Opened anew for each use rather than sharing one descriptor, and read with positioned
    /// reads (`upload/source`): a read left running by an aborted request moves nothing.
    /// Opening and `fstat` are quick, so they run here rather than on the blocking pool.
    fn open_chunk(&mut self) -> Result<std::fs::File, Outcome> {
        if let Err(e) = crate::media::check_no_symlink(&self.ctx.config.media.root, &self.path) {
            return Err(Outcome::FileUnreadable(e.to_string()));
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path);
        let f = match opened {
            Ok(f) => f,
            Err(e) => return Err(self.unreadable(&e)),
        };
        self.check_file(&f.metadata())?;
        Ok(f)
    }

    /// Reading the file for a chunk's checksum failed: it ended early (changed) or is gone.
    fn read_failed(&mut self, e: &std::io::Error) -> Outcome {
        if let Err(out) = self.check_file(&std::fs::symlink_metadata(&self.path)) {
            return out;
        }
        Outcome::FileUnreadable(format!("{}: {e}", self.path.display()))
    }

    /// Writes the acknowledged offset to the store, if it moved. A failing write is logged,
    /// not fatal: the server's offset (HEAD) is the truth a resume starts from anyway.
    fn persist(&mut self) {
        self.last_persist = Instant::now();
        if self.url.is_none() || self.offset == self.persisted {
            return;
        }
        match self
            .ctx
            .store
            .set_progress(self.item.id, self.offset, self.expires_at)
        {
            Ok(()) => self.persisted = self.offset,
            Err(e) => {
                tracing::warn!(item = self.item.id, error = %e, "cannot record upload progress")
            }
        }
    }

    /// Drops the server upload (gone, expired, wrong length): the next session creates anew.
    fn forget_url(&mut self, why: &str) -> Result<(), Outcome> {
        tracing::info!(item = self.item.id, path = %self.item.storage_path, reason = why, "starting a new upload");
        self.ctx
            .store
            .clear_upload_url(self.item.id)
            .map_err(|e| Outcome::Retry {
                error: format!("cannot forget the old upload URL: {e}"),
                retry_after: None,
            })?;
        self.url = None;
        self.offset = 0;
        self.acked = 0;
        self.persisted = 0;
        self.expires_at = None;
        Ok(())
    }

    fn stopped(&mut self) -> Outcome {
        self.persist();
        Outcome::Stopped
    }

    /// Ends the attempt on a tus error: progress saved, and a failure that is really the file's
    /// (card pulled mid-chunk) reported as such.
    fn end_with(&mut self, e: &TusError) -> Outcome {
        self.persist();
        if let Err(out) = self.check_file(&std::fs::symlink_metadata(&self.path)) {
            return out;
        }
        self.outcome_for(e)
    }

    /// Two PATCHes in a row at `base` broke with none of them kept: a body of `refused` bytes
    /// is taken as refused (`chunk::BodyLimit`). At 1 MiB or less nothing shorter is sent:
    /// the attempt ends under the back-off (a link that drops may still be the cause), its
    /// error naming the limit to raise.
    fn refused_by_cuts(&mut self, refused: u64, base: u64) -> Result<(), Outcome> {
        if refused <= chunk::MIN {
            self.persist();
            // A file changed meanwhile says so, as after any failure (`end_with`).
            self.check_file(&std::fs::symlink_metadata(&self.path))?;
            return Err(Outcome::Retry {
                error: format!(
                    "PATCHes of {} of {} broke twice at offset {base} with nothing kept: the \
                     server or a proxy before it may refuse request bodies this long (cambackup \
                     sends at least 1 MiB a PATCH where the file has it): the limit on request \
                     bodies must be raised",
                    count(refused, "byte", "bytes"),
                    self.item.storage_path,
                ),
                retry_after: None,
            });
        }
        let limit = self.ctx.client.body_limit();
        let cap = limit.refused(refused, chunk::Refusal::BrokeTwice, Instant::now());
        self.body_limit_lowered(
            refused,
            cap,
            "broke twice at the same offset with nothing kept",
        );
        Ok(())
    }

    /// Says so when a refused body lowered the daemon's cap on PATCH bodies to `cap`.
    fn body_limit_lowered(&self, len: u64, cap: Option<u64>, how: &str) {
        let Some(cap) = cap else { return };
        tracing::warn!(
            item = self.item.id,
            body = len,
            cap,
            "a PATCH body of {:.1} MiB {how}: the server or a proxy before it limits request \
             bodies; PATCHes now carry at most {} MiB (set cloud.chunk_size_mib below the \
             limit to spare the refused bodies)",
            len as f64 / MIB,
            cap / chunk::MIN,
        );
    }

    /// INTERFACE.md section 6: what each answer means for the item.
    fn outcome_for(&self, e: &TusError) -> Outcome {
        outcome_for(e, &self.item.storage_path.to_string(), self.item.size)
    }
}

/// Why `url` may not receive the token as an upload URL of `endpoint`, if it may not.
fn foreign_url(endpoint: &str, url: &str) -> Option<String> {
    let endpoint = reqwest::Url::parse(endpoint).ok()?;
    match reqwest::Url::parse(url) {
        Ok(u) => tus::check_upload_url(&endpoint, &u).err(),
        Err(e) => Some(format!("not a URL: {e}")),
    }
}

/// Maps a tus error to an outcome (INTERFACE.md section 6). 404/410 on an upload URL and 409 are
/// handled before this, in the flow; here they are plain failures (e.g. 404 from the endpoint).
fn outcome_for(e: &TusError, path: &str, size: u64) -> Outcome {
    let msg = e.to_string();
    if let Some(reach) = e.reach() {
        return Outcome::NoPath { reach, error: msg };
    }
    match (e, e.status()) {
        (TusError::BadToken, _) | (_, Some(401)) => Outcome::Unauthorized(msg),
        (TusError::Network { .. }, _) if e.certificate_refused().is_some() => {
            Outcome::CertificateRefused(msg)
        }
        (_, Some(402)) => Outcome::SubscriptionInactive(msg),
        (_, Some(403)) if e.server_message().to_lowercase().contains("subscription") => {
            Outcome::SubscriptionInactive(msg)
        }
        (_, Some(413)) => Outcome::Failed(format!(
            "server refuses files this large: {path} is {} ({msg})",
            count(size, "byte", "bytes")
        )),
        // Overloaded or down as a whole, without saying for how long: no file gets through
        // until the back-off has passed, so none is sent meanwhile (a camera with k files
        // queued asked k times per back-off step before, as many fleets do after an outage).
        (_, Some(429 | 503)) if e.retry_after().is_none() => Outcome::ServerBusy(msg),
        _ if e.is_transient() => Outcome::Retry {
            error: msg,
            retry_after: e.retry_after(),
        },
        _ => Outcome::Failed(msg),
    }
}

#[cfg(test)]
#[path = "transfer_tests.rs"]
mod tests;
