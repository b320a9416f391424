//! A real tus 1.0.0 server for tests, with fault injection.
//!
//! [`Receiver`] listens on `127.0.0.1:0` (or on a listener the test made, e.g. in a network
//! namespace, optionally behind TLS: [`ReceiverBuilder::listener`], [`ReceiverBuilder::tls`])
//! and keeps each upload on disk in its own temp dir (`ID.bin` with the data, sparse where it
//! is zeros; `ID.json` with the length, offset and decoded metadata). It speaks
//! the core protocol plus the creation, termination, checksum (sha1) and expiration extensions,
//! gives receipts (RFC 9530: a `HEAD` of a complete upload with `Want-Repr-Digest` naming
//! `sha-256` is answered `Repr-Digest: sha-256=:…:`, the SHA-256 of the bytes in its store file
//! as they are then, so a test that changes a stored byte or truncates the file gets another
//! digest), and records every request so tests can assert on what went over the wire.
//!
//! It is built on hyper's connection API rather than a router because fault injection needs
//! to own the connection: "reset after K bytes" must tear down the TCP stream in the middle of
//! a request body, which a handler alone cannot do.
//!
//! tus semantics kept on purpose:
//! - A PATCH that is cut short still advances the offset by the bytes that arrived (the
//!   offset moves as bytes are written, so a HEAD during a stalled PATCH sees the progress).
//! - With an `Upload-Checksum` header, bytes only count once the whole body arrived and the
//!   checksum matched; a mismatch answers 460 and an interrupted body is discarded, because
//!   neither can be verified.
//! - A newer PATCH on the same upload supersedes an older one still in flight (the older one
//!   stops writing), like tusd's upload locks; a stalled request cannot corrupt a resumed one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use sha1::{Digest, Sha1};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The URL path uploads are created under.
const BASE_PATH: &str = "/files/";

/// Status a tus server answers when `Upload-Checksum` does not match the body.
pub const CHECKSUM_MISMATCH: u16 = 460;

/// How the receiver behaves; set through [`ReceiverBuilder`].
#[derive(Debug, Clone)]
struct Options {
    token: Option<String>,
    termination: bool,
    checksum: bool,
    max_size: Option<u64>,
    expires_in: Option<Duration>,
    relative_location: bool,
    receipts: bool,
}

/// Configures a [`Receiver`] before it starts. `Receiver::builder().token("t").start().await`.
pub struct ReceiverBuilder {
    options: Options,
    listener: Option<std::net::TcpListener>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    base: Option<String>,
}

impl ReceiverBuilder {
    /// Require `Authorization: Bearer TOKEN` on every request but OPTIONS (else 401).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.options.token = Some(token.into());
        self
    }

    /// Do not offer (or accept) termination: OPTIONS leaves it out and DELETE answers 405.
    pub fn without_termination(mut self) -> Self {
        self.options.termination = false;
        self
    }

    /// Do not offer the checksum extension: OPTIONS leaves it out and `Upload-Checksum` is
    /// ignored, as a server without the extension would.
    pub fn without_checksum(mut self) -> Self {
        self.options.checksum = false;
        self
    }

    /// Give no receipts: a `HEAD` asking for `Repr-Digest` gets none, as tusd and
    /// @tus/server as they ship.
    pub fn without_receipts(mut self) -> Self {
        self.options.receipts = false;
        self
    }

    /// Refuse creations with a larger `Upload-Length` (413), and announce `Tus-Max-Size`.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.options.max_size = Some(bytes);
        self
    }

    /// Offer the expiration extension: uploads expire this long after creation, answering
    /// 410 afterwards, and responses carry `Upload-Expires`.
    pub fn expires_in(mut self, after: Duration) -> Self {
        self.options.expires_in = Some(after);
        self
    }

    /// Serves on `listener` (bound by the caller, e.g. inside a network namespace) instead of
    /// a new one on `127.0.0.1:0`.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Speaks TLS with this server config (e.g. [`crate::tls::TestCa::server_config`]).
    pub fn tls(mut self, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The scheme, host and port clients use, e.g. `https://upload.test:8443` (default:
    /// `http://` and the listening address).
    pub fn base_url(mut self, base: impl Into<String>) -> Self {
        self.base = Some(base.into());
        self
    }

    /// Answer creations with a relative `Location` (`/files/ID`), which the client resolves
    /// against the URL it posted to. Lets the receiver sit behind a [`crate::proxy::Proxy`]
    /// without the upload URLs leaking the receiver's own address past the proxy.
    pub fn relative_location(mut self) -> Self {
        self.options.relative_location = true;
        self
    }

    /// Binds `127.0.0.1:0` (unless given a listener) and serves on the current tokio runtime
    /// until the receiver drops.
    pub async fn start(self) -> Receiver {
        let dir = tempfile::Builder::new()
            .prefix("tus-receiver-")
            .tempdir()
            .expect("create receiver temp dir");
        let listener = match self.listener {
            Some(l) => {
                l.set_nonblocking(true).expect("nonblocking listener");
                TcpListener::from_std(l).expect("tokio listener")
            }
            None => TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0"),
        };
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            base: self.base.unwrap_or_else(|| format!("http://{addr}")),
            dir: dir.path().to_owned(),
            options: self.options.clone(),
            unavailable: AtomicBool::new(false),
            refused_handshakes: AtomicU64::new(0),
            patch_hook: Mutex::new(None),
            state: Mutex::new(State {
                token: self.options.token,
                ..State::default()
            }),
        });
        let acceptor = self.tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        Receiver {
            shared,
            addr,
            task,
            _dir: dir,
        }
    }
}

/// A running tus server; see the module docs. Dropping it stops the server and deletes the
/// stored uploads.
pub struct Receiver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Pairing's check of the token, as the receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCheck {
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// 401 (refused) or 405 (a creation URL answers no `HEAD`: the token was taken).
    pub status: u16,
    /// The client's address as the server's socket saw it.
    pub peer: Option<SocketAddr>,
}

/// One request as it arrived, for assertions on the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `POST`, `PATCH`, ...
    pub method: String,
    /// The request path, e.g. `/files/3f2a...`.
    pub path: String,
    /// Every header in arrival order; names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body bytes received (for a cut-short PATCH: those that arrived).
    pub body_len: u64,
    /// The status answered; `None` while in flight or when the connection was dropped.
    pub status: Option<u16>,
    /// The client's address as the server's socket saw it.
    pub peer: Option<SocketAddr>,
    /// The injected fault that hit this request, if any (its `Debug` form).
    pub fault: Option<String>,
    /// When the request's head arrived.
    pub at: SystemTime,
}

impl RecordedRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An upload as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadInfo {
    /// The upload's ID, the last segment of its URL.
    pub id: String,
    /// Its absolute URL (the `Location` answered to the creation).
    pub url: String,
    /// `Upload-Length`.
    pub length: u64,
    /// Bytes stored so far.
    pub offset: u64,
    /// `Upload-Metadata`, decoded (values as lossy UTF-8; a key without value maps to "").
    pub metadata: BTreeMap<String, String>,
    /// Every byte arrived.
    pub complete: bool,
    /// Ended by a DELETE.
    pub terminated: bool,
}

impl UploadInfo {
    /// The `storage_path` metadata value, if any.
    pub fn storage_path(&self) -> Option<&str> {
        self.metadata.get("storage_path").map(String::as_str)
    }
}

/// What an injected fault does. Build one through [`Fault`]'s constructors.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Store the first `bytes` of the PATCH body, then reset the TCP connection (RST).
    ResetPatchAfter(u64),
    /// After `bytes` of the PATCH body, stop reading for `stall`, then carry on.
    StallPatchAfter {
        /// Bytes read before the stall.
        bytes: u64,
        /// How long nothing is read.
        stall: Duration,
    },
    /// Answer `status` (with `Retry-After: secs` when set) instead of handling the request.
    Status {
        /// The status code, e.g. 503.
        status: u16,
        /// `Retry-After` in seconds.
        retry_after: Option<u64>,
    },
    /// Answer 500, 502, 503, 500, ... in turn.
    ServerErrors,
    /// Answer 404 as if the upload URL were unknown (HEAD and PATCH on upload URLs).
    UploadNotFound,
    /// Answer a PATCH with 409 as if its `Upload-Offset` did not match.
    PatchConflict,
    /// Answer a HEAD with this `Upload-Offset` instead of the real one.
    HeadOffset(u64),
    /// Read the whole request body (storing nothing), then answer `status` with these extra
    /// headers and this body instead of handling the request.
    Answer {
        /// The status code, e.g. 403.
        status: u16,
        /// Extra response headers (name, value), e.g. `("retry-after", "7")`.
        headers: Vec<(String, String)>,
        /// The response body, sent as is (may be empty).
        body: String,
    },
    /// Never answer: the request hangs (its body unread) until the client gives up.
    NeverAnswer,
    /// Handle a PATCH normally (its bytes are stored) but answer an `Upload-Offset` one byte
    /// past the real offset, as a broken server would.
    PatchOffsetAhead,
    /// Handle the request normally: takes its turn so a later fault hits a later request.
    Pass,
}

/// A fault to [`Receiver::inject`]: what happens, to which requests, how many times.
///
/// Faults apply in injection order; a request takes the first armed fault that matches it.
#[derive(Debug, Clone)]
pub struct Fault {
    kind: FaultKind,
    times: usize,
    methods: Vec<String>,
    /// Whether `methods` came from [`Fault::on`] rather than the kind's default.
    custom_methods: bool,
    /// Only requests about a file whose `storage_path` contains this match.
    path_contains: Option<String>,
}

impl Fault {
    fn new(kind: FaultKind, methods: &[&str]) -> Self {
        Fault {
            kind,
            times: 1,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            custom_methods: false,
            path_contains: None,
        }
    }

    /// Reset the connection after the next PATCH delivered `bytes` (those bytes are kept).
    pub fn reset_after(bytes: u64) -> Self {
        Self::new(FaultKind::ResetPatchAfter(bytes), &["PATCH"])
    }

    /// Stop reading the next PATCH for `stall` after `bytes` of its body.
    pub fn stall_after(bytes: u64, stall: Duration) -> Self {
        Self::new(FaultKind::StallPatchAfter { bytes, stall }, &["PATCH"])
    }

    /// Answer `status` to the next request (any method but OPTIONS unless [`Fault::on`]).
    pub fn status(status: u16) -> Self {
        Self::new(
            FaultKind::Status {
                status,
                retry_after: None,
            },
            &["POST", "HEAD", "PATCH", "DELETE"],
        )
    }

    /// Answer `status` (429 or 503) with `Retry-After: secs`.
    pub fn retry_after(status: u16, secs: u64) -> Self {
        Self::new(
            FaultKind::Status {
                status,
                retry_after: Some(secs),
            },
            &["POST", "HEAD", "PATCH", "DELETE"],
        )
    }

    /// A burst of `n` server errors cycling 500, 502, 503 (any method but OPTIONS).
    pub fn server_errors(n: usize) -> Self {
        Self::new(
            FaultKind::ServerErrors,
            &["POST", "HEAD", "PATCH", "DELETE"],
        )
        .times(n)
    }

    /// 401 to the next request, whatever its token.
    pub fn unauthorized() -> Self {
        Self::status(401)
    }

    /// 402 (subscription inactive) to the next request.
    pub fn payment_required() -> Self {
        Self::status(402)
    }

    /// 404 to the next HEAD or PATCH on an upload URL.
    pub fn upload_not_found() -> Self {
        Self::new(FaultKind::UploadNotFound, &["HEAD", "PATCH"])
    }

    /// 409 to the next PATCH, whatever its offset.
    pub fn patch_conflict() -> Self {
        Self::new(FaultKind::PatchConflict, &["PATCH"])
    }

    /// The next HEAD reports `offset` instead of the real offset.
    pub fn head_offset(offset: u64) -> Self {
        Self::new(FaultKind::HeadOffset(offset), &["HEAD"])
    }

    /// Answer `status` with extra `headers` and `body` to the next request (any method but
    /// OPTIONS unless [`Fault::on`]), after reading its body; e.g. a 403 whose body says the
    /// subscription is inactive, or a 201 without `Location`.
    pub fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        Self::new(
            FaultKind::Answer {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                    .collect(),
                body: body.to_owned(),
            },
            &["POST", "HEAD", "PATCH", "DELETE"],
        )
    }

    /// Never answer the next request (any method but OPTIONS unless [`Fault::on`]): no status,
    /// no body read, the connection left open; a client's stall timeout has to end it.
    pub fn never_answer() -> Self {
        Self::new(FaultKind::NeverAnswer, &["POST", "HEAD", "PATCH", "DELETE"])
    }

    /// The next PATCH is stored as usual but acknowledged with an `Upload-Offset` one byte
    /// past what the server holds.
    pub fn patch_offset_ahead() -> Self {
        Self::new(FaultKind::PatchOffsetAhead, &["PATCH"])
    }

    /// The next request (any method but OPTIONS unless [`Fault::on`]) is handled normally;
    /// it only uses up a turn, so a fault injected after it hits the request after.
    pub fn pass() -> Self {
        Self::new(FaultKind::Pass, &["POST", "HEAD", "PATCH", "DELETE"])
    }

    /// Apply to the next `n` matching requests instead of one.
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    /// Only requests with this method match (call again to add methods).
    pub fn on(mut self, method: &str) -> Self {
        if !self.custom_methods {
            self.methods.clear();
            self.custom_methods = true;
        }
        self.methods.push(method.to_ascii_uppercase());
        self
    }

    /// Only requests about files whose `storage_path` contains `part` match (the creation's
    /// metadata, or the upload's for requests on an upload URL).
    pub fn for_paths_containing(mut self, part: &str) -> Self {
        self.path_contains = Some(part.to_owned());
        self
    }

    /// What this fault does.
    pub fn kind(&self) -> &FaultKind {
        &self.kind
    }

    fn matches(&self, method: &str, upload_url: bool, storage_path: Option<&str>) -> bool {
        if self.kind == FaultKind::UploadNotFound && !upload_url {
            return false;
        }
        if let Some(part) = &self.path_contains {
            if !storage_path.is_some_and(|p| p.contains(part.as_str())) {
                return false;
            }
        }
        self.methods.iter().any(|m| m == method)
    }
}

impl Receiver {
    /// A receiver with every extension on, no auth, no size limit, no expiry.
    pub async fn start() -> Receiver {
        Self::builder().start().await
    }

    /// Starts configuring a receiver.
    pub fn builder() -> ReceiverBuilder {
        ReceiverBuilder {
            options: Options {
                token: None,
                termination: true,
                checksum: true,
                max_size: None,
                expires_in: None,
                relative_location: false,
                receipts: true,
            },
            listener: None,
            tls: None,
            base: None,
        }
    }

    /// The creation endpoint, e.g. `http://127.0.0.1:41234/files/` (for `cloud.endpoint`).
    pub fn url(&self) -> String {
        format!("{}{BASE_PATH}", self.shared.base)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TLS handshakes that failed so far (with [`ReceiverBuilder::tls`]): e.g. a client
    /// certificate the server config refused.
    pub fn refused_handshakes(&self) -> u64 {
        self.shared.refused_handshakes.load(Ordering::SeqCst)
    }

    /// Pairing's checks of the token so far (`HEAD` of the creation URL), in arrival order.
    /// Not in [`Receiver::requests`].
    pub fn token_checks(&self) -> Vec<TokenCheck> {
        self.shared.lock().token_checks.clone()
    }

    /// Every request of the upload protocol so far, in arrival order (pairing's checks of
    /// the token are in [`Receiver::token_checks`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Requests so far with this method.
    pub fn requests_with_method(&self, method: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method))
            .collect()
    }

    /// Successful creations (POST answered 201) so far.
    pub fn creations(&self) -> usize {
        self.shared.lock().creations
    }

    /// Every upload ever created, in creation order.
    pub fn uploads(&self) -> Vec<UploadInfo> {
        let state = self.shared.lock();
        state
            .order
            .iter()
            .map(|id| state.uploads[id].info(&self.shared.base))
            .collect()
    }

    /// The completed (not terminated) uploads, in creation order.
    pub fn completed_uploads(&self) -> Vec<UploadInfo> {
        self.uploads()
            .into_iter()
            .filter(|u| u.complete && !u.terminated)
            .collect()
    }

    /// The bytes of the latest completed upload whose `storage_path` metadata is
    /// `storage_path`. Reads the whole file: for large files prefer [`Receiver::file_matches`].
    pub fn completed(&self, storage_path: &str) -> Option<Vec<u8>> {
        let info = self.latest_completed(storage_path)?;
        fs::read(self.data_path(&info.id)).ok()
    }

    /// Whether the latest completed upload for `storage_path` is byte-identical with the file
    /// at `local` (compared in blocks, never loading either whole).
    pub fn file_matches(&self, storage_path: &str, local: &Path) -> bool {
        let Some(info) = self.latest_completed(storage_path) else {
            return false;
        };
        files_equal(&self.data_path(&info.id), local).unwrap_or(false)
    }

    /// Where the data of upload `id` is stored.
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.shared.dir.join(format!("{id}.bin"))
    }

    /// Waits until at least `n` uploads are complete and returns them; panics after `timeout`
    /// with what the server saw, which is usually what a failing test needs to know.
    pub async fn wait_for_completed(&self, n: usize, timeout: Duration) -> Vec<UploadInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.completed_uploads();
            if done.len() >= n {
                return done;
            }
            if Instant::now() >= deadline {
                panic!(
                    "receiver: {} of {n} uploads complete after {timeout:?}\nuploads: {:#?}\nrequests: {}",
                    done.len(),
                    self.uploads(),
                    self.request_summary()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One line per request (`METHOD path -> status [fault]`), for failure messages.
    pub fn request_summary(&self) -> String {
        let mut out = String::new();
        for r in self.requests() {
            out.push_str(&format!(
                "\n  {} {} ({} body bytes) -> {}{}",
                r.method,
                r.path,
                r.body_len,
                r.status.map_or("dropped".into(), |s| s.to_string()),
                r.fault.map_or(String::new(), |f| format!(" [fault {f}]")),
            ));
        }
        out
    }

    /// Calls `hook` with the path of every PATCH as its head arrives, before the request is
    /// handled (and before any fault applies), e.g. to rewrite a file under the client or to
    /// look at its state mid-upload. Replaces an earlier hook. The hook runs on the server's
    /// task, not under the receiver's lock, so it may call the receiver's own methods.
    pub fn on_patch(&self, hook: impl Fn(&str) + Send + 'static) {
        *self
            .shared
            .patch_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
    }

    /// Arms a fault; see [`Fault`].
    pub fn inject(&self, fault: Fault) {
        if fault.times > 0 {
            self.shared.lock().faults.push(fault);
        }
    }

    /// Disarms every fault not yet used.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// How many fault applications are still armed (sum of the remaining `times`).
    pub fn pending_faults(&self) -> usize {
        self.shared.lock().faults.iter().map(|f| f.times).sum()
    }

    /// While true, every new connection is reset right after it is accepted, as if the
    /// server were down. Connections already open are not touched.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Changes the required bearer token (`None`: no auth), e.g. to revoke the paired token.
    pub fn set_token(&self, token: Option<&str>) {
        self.shared.lock().token = token.map(str::to_owned);
    }

    /// Forgets every unfinished upload, as a server restarted without its partial data would:
    /// their URLs answer 404 from here on. Returns what was forgotten.
    pub fn forget_unfinished(&self) -> Vec<UploadInfo> {
        let mut state = self.shared.lock();
        let gone: Vec<String> = state
            .uploads
            .values()
            .filter(|u| u.offset < u.length && !u.terminated)
            .map(|u| u.id.clone())
            .collect();
        let mut out = Vec::new();
        for id in gone {
            if let Some(mut u) = state.uploads.remove(&id) {
                out.push(u.info(&self.shared.base));
                // A PATCH still streaming into it stops writing.
                u.patch_gen += 1;
            }
            state.order.retain(|o| *o != id);
            let _ = fs::remove_file(self.data_path(&id));
            let _ = fs::remove_file(self.shared.dir.join(format!("{id}.json")));
        }
        out
    }

    /// Makes upload `id` expired now: HEAD and PATCH answer 410 from here on.
    pub fn expire(&self, id: &str) {
        if let Some(u) = self.shared.lock().uploads.get_mut(id) {
            u.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
        }
    }

    fn latest_completed(&self, storage_path: &str) -> Option<UploadInfo> {
        self.completed_uploads()
            .into_iter()
            .rev()
            .find(|u| u.storage_path() == Some(storage_path))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Test server: no graceful drain needed, in-flight requests may simply die.
        self.task.abort();
    }
}

/// Compares two files block by block.
pub fn files_equal(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

struct Shared {
    base: String,
    dir: PathBuf,
    options: Options,
    unavailable: AtomicBool,
    /// TLS handshakes that failed (a client certificate refused, a client that gave up).
    refused_handshakes: AtomicU64,
    state: Mutex<State>,
    /// [`Receiver::on_patch`]'s hook; its own lock so the hook may lock `state`.
    patch_hook: Mutex<Option<PatchHook>>,
}

type PatchHook = Box<dyn Fn(&str) + Send>;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the receiver's state from the failure report.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_info(&self, upload: &Upload) {
        let info = upload.info(&self.base);
        let path = self.dir.join(format!("{}.json", upload.id));
        let _ = fs::write(path, serde_json::to_vec_pretty(&info).unwrap_or_default());
    }
}

#[derive(Default)]
struct State {
    token: Option<String>,
    uploads: BTreeMap<String, Upload>,
    order: Vec<String>,
    requests: Vec<RecordedRequest>,
    token_checks: Vec<TokenCheck>,
    faults: Vec<Fault>,
    creations: usize,
    server_error_turn: usize,
}

impl State {
    /// Takes one application of the first armed fault matching this request.
    fn take_fault(
        &mut self,
        method: &str,
        upload_url: bool,
        storage_path: Option<&str>,
    ) -> Option<FaultKind> {
        let i = self
            .faults
            .iter()
            .position(|f| f.matches(method, upload_url, storage_path))?;
        let kind = self.faults[i].kind.clone();
        self.faults[i].times -= 1;
        if self.faults[i].times == 0 {
            self.faults.remove(i);
        }
        Some(kind)
    }
}

struct Upload {
    id: String,
    length: u64,
    offset: u64,
    metadata_raw: Option<String>,
    metadata: BTreeMap<String, String>,
    expires_at: Option<SystemTime>,
    terminated: bool,
    /// Bumped by each PATCH; a PATCH whose generation is no longer current stops writing.
    patch_gen: u64,
}

impl Upload {
    fn info(&self, base: &str) -> UploadInfo {
        UploadInfo {
            id: self.id.clone(),
            url: format!("{base}{BASE_PATH}{}", self.id),
            length: self.length,
            offset: self.offset,
            metadata: self.metadata.clone(),
            complete: self.offset == self.length,
            terminated: self.terminated,
        }
    }

    fn expired(&self) -> bool {
        self.expires_at.is_some_and(|t| SystemTime::now() >= t)
    }
}

/// Per-connection control: lets a handler tear down its own TCP connection.
struct Conn {
    abort: Notify,
    fd: RawFd,
    peer: Option<SocketAddr>,
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if shared.unavailable.load(Ordering::SeqCst) {
            reset_on_close(stream.as_raw_fd());
            drop(stream);
            continue;
        }
        let conn = Arc::new(Conn {
            abort: Notify::new(),
            fd: stream.as_raw_fd(),
            peer: Some(peer),
        });
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, conn, shared).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve_connection(stream, conn, shared).await,
                    Err(_) => {
                        shared.refused_handshakes.fetch_add(1, Ordering::SeqCst);
                    }
                },
            }
        });
    }
}

/// Serves HTTP/1 on one accepted connection (plain or TLS) until it ends or a fault aborts it.
async fn serve_connection<IO>(io: IO, conn: Arc<Conn>, shared: Arc<Shared>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let conn = conn.clone();
        service_fn(move |req| handle(shared.clone(), conn.clone(), req))
    };
    let serve = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    let mut serve = std::pin::pin!(serve);
    tokio::select! {
        _ = &mut serve => {}
        _ = conn.abort.notified() => {
            // The stream is still open here (owned by `serve`), so the fd is valid;
            // dropping `serve` below then closes it with an RST.
            reset_on_close(conn.fd);
        }
    }
}

/// SO_LINGER 0: closing the socket sends RST instead of FIN, i.e. a real "connection reset".
fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a valid linger.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

type Resp = Response<Full<Bytes>>;

fn respond(status: u16) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    r.headers_mut()
        .insert("tus-resumable", HeaderValue::from_static("1.0.0"));
    r
}

fn with_header(mut r: Resp, name: &'static str, value: impl ToString) -> Resp {
    r.headers_mut().insert(
        name,
        HeaderValue::from_str(&value.to_string()).expect("valid header value"),
    );
    r
}

fn text(status: u16, msg: &str) -> Resp {
    let mut r = respond(status);
    *r.body_mut() = Full::new(Bytes::from(format!("{msg}\n")));
    with_header(r, "content-type", "text/plain")
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let upload_id = path
        .strip_prefix(BASE_PATH)
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_owned);
    // Pairing's check of the token (a HEAD of the creation URL itself, no upload): kept apart
    // from the upload's requests and never given a fault, so that tests counting or faulting
    // an upload's requests see the upload alone. `token_checks` lists them.
    if method == "HEAD" && upload_id.is_none() && path.starts_with(BASE_PATH.trim_end_matches('/'))
    {
        let auth = header(&req, "authorization").map(str::to_owned);
        let expected = shared.lock().token.clone();
        let refused = expected.is_some_and(|t| auth.as_deref() != Some(&format!("Bearer {t}")));
        let status = if refused { 401 } else { 405 };
        shared.lock().token_checks.push(TokenCheck {
            authorization: auth,
            status,
            peer: conn.peer,
        });
        let r = if refused {
            text(401, "missing or wrong bearer token")
        } else {
            text(405, "method not allowed here")
        };
        return Ok(with_header(r, "tus-resumable", "1.0.0"));
    }
    if method == "PATCH" {
        if let Some(hook) = shared
            .patch_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            hook(&path);
        }
    }
    let (index, fault) = {
        let mut state = shared.lock();
        let storage_path = match &upload_id {
            Some(id) => state
                .uploads
                .get(id)
                .and_then(|u| u.metadata.get("storage_path").cloned()),
            None => header(&req, "upload-metadata")
                .and_then(parse_metadata)
                .and_then(|m| m.get("storage_path").cloned()),
        };
        let fault = state.take_fault(&method, upload_id.is_some(), storage_path.as_deref());
        state.requests.push(RecordedRequest {
            method: method.clone(),
            path: path.clone(),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body_len: 0,
            status: None,
            peer: conn.peer,
            fault: fault.as_ref().map(|f| format!("{f:?}")),
            at: SystemTime::now(),
        });
        (state.requests.len() - 1, fault)
    };
    let resp = route(&shared, &conn, req, index, upload_id, fault).await;
    shared.lock().requests[index].status = Some(resp.status().as_u16());
    Ok(resp)
}

async fn route(
    shared: &Shared,
    conn: &Conn,
    req: Request<Incoming>,
    index: usize,
    upload_id: Option<String>,
    fault: Option<FaultKind>,
) -> Resp {
    let method = req.method().as_str().to_owned();
    let is_creation = req.uri().path() == BASE_PATH || req.uri().path() == "/files";
    if upload_id.is_none() && !is_creation {
        return text(404, "no such endpoint");
    }
    match &fault {
        Some(FaultKind::Status {
            status,
            retry_after,
        }) => {
            let r = text(*status, "injected fault");
            return match retry_after {
                Some(s) => with_header(r, "retry-after", s),
                None => r,
            };
        }
        Some(FaultKind::ServerErrors) => {
            let mut state = shared.lock();
            let status = [500, 502, 503][state.server_error_turn % 3];
            state.server_error_turn += 1;
            return text(status, "injected server error");
        }
        Some(FaultKind::UploadNotFound) => return text(404, "injected: upload not found"),
        Some(FaultKind::Answer {
            status,
            headers,
            body,
        }) => {
            let _ = req.into_body().collect().await;
            let mut r = respond(*status);
            for (k, v) in headers {
                r.headers_mut().insert(
                    hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    HeaderValue::from_str(v).expect("valid header value"),
                );
            }
            *r.body_mut() = Full::new(Bytes::from(body.clone()));
            return r;
        }
        Some(FaultKind::NeverAnswer) => return std::future::pending().await,
        _ => {}
    }
    if method == "OPTIONS" {
        return options(shared);
    }
    if header(&req, "tus-resumable") != Some("1.0.0") {
        return with_header(
            text(412, "Tus-Resumable: 1.0.0 required"),
            "tus-version",
            "1.0.0",
        );
    }
    let expected = shared.lock().token.clone();
    if let Some(token) = expected {
        let want = format!("Bearer {token}");
        if header(&req, "authorization") != Some(want.as_str()) {
            return text(401, "missing or wrong bearer token");
        }
    }
    match (method.as_str(), upload_id) {
        ("POST", None) => create(shared, &req),
        ("HEAD", Some(id)) => {
            let want = header(&req, "want-repr-digest").is_some_and(|w| w.contains("sha-256"));
            head(shared, &id, fault, want)
        }
        ("PATCH", Some(id)) => patch(shared, conn, req, index, &id, fault).await,
        ("DELETE", Some(id)) => terminate(shared, &id),
        _ => text(405, "method not allowed here"),
    }
}

fn options(shared: &Shared) -> Resp {
    let o = &shared.options;
    let mut ext = vec!["creation"];
    if o.termination {
        ext.push("termination");
    }
    if o.checksum {
        ext.push("checksum");
    }
    if o.expires_in.is_some() {
        ext.push("expiration");
    }
    let mut r = with_header(respond(204), "tus-version", "1.0.0");
    r = with_header(r, "tus-extension", ext.join(","));
    if let Some(max) = o.max_size {
        r = with_header(r, "tus-max-size", max);
    }
    if o.checksum {
        r = with_header(r, "tus-checksum-algorithm", "sha1");
    }
    r
}

/// Parses `key b64,key2 b64,key3` into decoded values.
fn parse_metadata(raw: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in raw.split(',') {
        let mut parts = pair.trim().splitn(2, ' ');
        let key = parts.next().filter(|k| !k.is_empty())?;
        let value = match parts.next() {
            Some(v) => String::from_utf8_lossy(&B64.decode(v.trim()).ok()?).into_owned(),
            None => String::new(),
        };
        if out.insert(key.to_owned(), value).is_some() {
            return None;
        }
    }
    Some(out)
}

fn expires_header(r: Resp, at: Option<SystemTime>) -> Resp {
    match at {
        Some(t) => with_header(r, "upload-expires", httpdate::fmt_http_date(t)),
        None => r,
    }
}

fn create(shared: &Shared, req: &Request<Incoming>) -> Resp {
    let Some(length) = header(req, "upload-length").and_then(|v| v.parse::<u64>().ok()) else {
        return text(
            400,
            "Upload-Length missing or invalid (deferred length unsupported)",
        );
    };
    if shared.options.max_size.is_some_and(|max| length > max) {
        return text(413, "Upload-Length exceeds Tus-Max-Size");
    }
    let metadata_raw = header(req, "upload-metadata").map(str::to_owned);
    let metadata = match &metadata_raw {
        Some(raw) => match parse_metadata(raw) {
            Some(m) => m,
            None => return text(400, "malformed Upload-Metadata"),
        },
        None => BTreeMap::new(),
    };
    let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    if let Err(e) = File::create(shared.dir.join(format!("{id}.bin"))) {
        return text(500, &format!("cannot create data file: {e}"));
    }
    let upload = Upload {
        id: id.clone(),
        length,
        offset: 0,
        metadata_raw,
        metadata,
        expires_at: shared.options.expires_in.map(|d| SystemTime::now() + d),
        terminated: false,
        patch_gen: 0,
    };
    shared.write_info(&upload);
    let expires = upload.expires_at;
    let mut state = shared.lock();
    state.uploads.insert(id.clone(), upload);
    state.order.push(id.clone());
    state.creations += 1;
    let location = if shared.options.relative_location {
        format!("{BASE_PATH}{id}")
    } else {
        format!("{}{BASE_PATH}{id}", shared.base)
    };
    let r = with_header(respond(201), "location", location);
    expires_header(r, expires)
}

fn head(shared: &Shared, id: &str, fault: Option<FaultKind>, want_digest: bool) -> Resp {
    let state = shared.lock();
    let Some(u) = state.uploads.get(id).filter(|u| !u.terminated) else {
        return text(404, "unknown upload");
    };
    if u.expired() {
        return text(410, "upload expired");
    }
    let offset = match fault {
        Some(FaultKind::HeadOffset(o)) => o,
        _ => u.offset,
    };
    let mut r = with_header(respond(200), "upload-offset", offset);
    r = with_header(r, "upload-length", u.length);
    r = with_header(r, "cache-control", "no-store");
    if let Some(m) = &u.metadata_raw {
        r = with_header(r, "upload-metadata", m);
    }
    if want_digest && shared.options.receipts && u.offset == u.length {
        // From the stored bytes, read now: what the store holds, not what arrived.
        if let Ok(d) = sha256_file(&shared.dir.join(format!("{id}.bin"))) {
            r = with_header(r, "repr-digest", format!("sha-256=:{}:", B64.encode(d)));
        }
    }
    expires_header(r, u.expires_at)
}

/// The SHA-256 of a file's bytes, read in blocks (an upload that was never written has no
/// file: the digest of nothing).
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut h = sha2::Sha256::new();
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(h.finalize().into()),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        sha2::Digest::update(&mut h, &buf[..n]);
    }
}

fn terminate(shared: &Shared, id: &str) -> Resp {
    if !shared.options.termination {
        return text(405, "termination extension not offered");
    }
    let mut state = shared.lock();
    let Some(u) = state.uploads.get_mut(id).filter(|u| !u.terminated) else {
        return text(404, "unknown upload");
    };
    u.terminated = true;
    u.patch_gen += 1;
    let _ = fs::remove_file(shared.dir.join(format!("{id}.bin")));
    shared.write_info(u);
    respond(204)
}

/// Parses `Upload-Checksum: sha1 <base64>` into the expected digest; `Err` says why not.
fn parse_checksum(value: &str) -> Result<Vec<u8>, &'static str> {
    let (algo, b64) = value.split_once(' ').ok_or("malformed Upload-Checksum")?;
    if !algo.eq_ignore_ascii_case("sha1") {
        return Err("unsupported checksum algorithm");
    }
    B64.decode(b64.trim())
        .map_err(|_| "Upload-Checksum is not base64")
}

async fn patch(
    shared: &Shared,
    conn: &Conn,
    req: Request<Incoming>,
    index: usize,
    id: &str,
    fault: Option<FaultKind>,
) -> Resp {
    if header(&req, "content-type") != Some("application/offset+octet-stream") {
        return text(415, "Content-Type must be application/offset+octet-stream");
    }
    let Some(offset) = header(&req, "upload-offset").and_then(|v| v.parse::<u64>().ok()) else {
        return text(400, "Upload-Offset missing or invalid");
    };
    let checksum = match header(&req, "upload-checksum") {
        Some(v) if shared.options.checksum => match parse_checksum(v) {
            Ok(c) => Some(c),
            Err(why) => return text(400, why),
        },
        _ => None,
    };
    let content_length = header(&req, "content-length").and_then(|v| v.parse::<u64>().ok());
    let (gen, length, expires) = {
        let mut state = shared.lock();
        let Some(u) = state.uploads.get_mut(id).filter(|u| !u.terminated) else {
            return text(404, "unknown upload");
        };
        if u.expired() {
            return text(410, "upload expired");
        }
        if fault == Some(FaultKind::PatchConflict) || offset != u.offset {
            return with_header(
                text(409, "Upload-Offset mismatch"),
                "upload-offset",
                u.offset,
            );
        }
        if content_length.is_some_and(|n| offset + n > u.length) {
            return text(413, "body goes past Upload-Length");
        }
        u.patch_gen += 1;
        (u.patch_gen, u.length, u.expires_at)
    };
    let file = match OpenOptions::new()
        .write(true)
        .open(shared.dir.join(format!("{id}.bin")))
    {
        Ok(f) => f,
        Err(e) => return text(500, &format!("cannot open data file: {e}")),
    };

    let mut body = req.into_body();
    let mut received: u64 = 0;
    let mut hasher = Sha1::new();
    let mut stalled = false;
    let mut interrupted = false;
    let mut too_long = false;
    loop {
        if let Some(FaultKind::StallPatchAfter { bytes, stall }) = &fault {
            if !stalled && received >= *bytes {
                stalled = true;
                tokio::time::sleep(*stall).await;
            }
        }
        let mut chunk = match body.frame().await {
            None => break,
            Some(Err(_)) => {
                interrupted = true;
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        // Split chunks at fault thresholds so "after K bytes" is exact.
        let mut reset_now = false;
        match &fault {
            Some(FaultKind::ResetPatchAfter(k)) if received + chunk.len() as u64 >= *k => {
                chunk.truncate((k - received) as usize);
                reset_now = true;
            }
            Some(FaultKind::StallPatchAfter { bytes, .. })
                if !stalled && received + chunk.len() as u64 > *bytes =>
            {
                let rest = chunk.split_off((bytes - received) as usize);
                if !store(
                    shared,
                    &file,
                    id,
                    gen,
                    offset + received,
                    &chunk,
                    checksum.is_none(),
                ) {
                    return text(409, "superseded by a newer PATCH");
                }
                if checksum.is_some() {
                    hasher.update(&chunk);
                }
                received += chunk.len() as u64;
                shared.lock().requests[index].body_len = received;
                stalled = true;
                tokio::time::sleep(match &fault {
                    Some(FaultKind::StallPatchAfter { stall, .. }) => *stall,
                    _ => Duration::ZERO,
                })
                .await;
                chunk = rest;
            }
            _ => {}
        }
        if offset + received + chunk.len() as u64 > length {
            chunk.truncate((length - offset - received) as usize);
            too_long = true;
        }
        if !store(
            shared,
            &file,
            id,
            gen,
            offset + received,
            &chunk,
            checksum.is_none(),
        ) {
            // A newer PATCH took over this upload; our bytes no longer count.
            return text(409, "superseded by a newer PATCH");
        }
        // Hashing only what a checksum will be compared with: SHA-1 in a debug build is the
        // slowest step of a multi-GiB upload (tests/it/large.rs).
        if checksum.is_some() {
            hasher.update(&chunk);
        }
        received += chunk.len() as u64;
        shared.lock().requests[index].body_len = received;
        if reset_now {
            conn.abort.notify_one();
            // The connection task drops this future with the connection.
            std::future::pending::<()>().await;
        }
        if too_long {
            break;
        }
    }

    let mut state = shared.lock();
    let Some(u) = state.uploads.get_mut(id) else {
        return text(404, "unknown upload");
    };
    if u.patch_gen != gen || u.terminated {
        return text(409, "superseded");
    }
    if let Some(expected) = checksum {
        // Only now do checksummed bytes count: verified whole, or not at all.
        if interrupted || hasher.finalize().as_slice() != expected.as_slice() {
            let _ = file.set_len(offset);
            return if interrupted {
                text(400, "body interrupted")
            } else {
                text(CHECKSUM_MISMATCH, "checksum mismatch")
            };
        }
        u.offset = offset + received;
    }
    shared.write_info(u);
    if too_long {
        return text(413, "body goes past Upload-Length");
    }
    let acked = match fault {
        Some(FaultKind::PatchOffsetAhead) => u.offset + 1,
        _ => u.offset,
    };
    let r = with_header(respond(204), "upload-offset", acked);
    expires_header(r, expires)
}

/// Writes `data` at `at` if the PATCH generation `gen` is still current; with `advance`, moves
/// the upload's offset along at once so progress is visible (and kept) mid-request.
fn store(
    shared: &Shared,
    file: &File,
    id: &str,
    gen: u64,
    at: u64,
    data: &[u8],
    advance: bool,
) -> bool {
    let mut state = shared.lock();
    let Some(u) = state.uploads.get_mut(id) else {
        return false;
    };
    if u.patch_gen != gen || u.terminated {
        return false;
    }
    if !append_sparse(file, data, at) {
        return false;
    }
    if advance {
        u.offset = at + data.len() as u64;
    }
    true
}

/// Writes `data` at `at`, leaving a hole instead where it is all zeros past the file's end, so
/// a sparse file on the card stays sparse here: the tests of files over 4 GiB
/// (`tests/it/large.rs`) then cost neither the receiver's disk nor its write time. Zeros inside
/// the file are written: they may replace other bytes.
fn append_sparse(file: &File, data: &[u8], at: u64) -> bool {
    let end = at + data.len() as u64;
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return false;
    };
    if at >= len && data.iter().all(|&b| b == 0) {
        return end <= len || file.set_len(end).is_ok();
    }
    file.write_all_at(data, at).is_ok()
}

#[cfg(test)]
mod tests;
