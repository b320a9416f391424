//! The tus 1.0.0 client (INTERFACE.md section 6): discovery, creation, offset, data, termination.
//!
//! Invariants:
//! - every request carries `Tus-Resumable: 1.0.0`, `Authorization: Bearer` and
//!   `User-Agent: cambackup/VERSION`, and nothing else that identifies the device (no cookie
//!   store, no referer, no redirects that could carry the token elsewhere);
//! - the token (and the file) go only to the origin (scheme, host, port) of a configured
//!   endpoint: an upload URL the server hands out elsewhere is refused ([`check_upload_url`]),
//!   and [`Client`] refuses any request to another origin before it connects;
//! - TLS is always verified: the system's roots plus `cloud.ca_file`; where the maker
//!   provisioned one, the device's certificate (`cloud.client_cert`) goes with every connection;
//! - in the daemon, every connection is bound to the interface the gate approved
//!   ([`Client::rebind`], [`super::bind`]); with none approved no connection is made at all;
//!   a connection whose interface goes silent fails within `stall_secs` (`TCP_USER_TIMEOUT`),
//!   not after the kernel's retransmission minutes;
//! - a PATCH body streams from the file in small blocks (`upload/source`): memory does not
//!   grow with the chunk size or the file size;
//! - any answer that does not follow the protocol (missing `Location`, missing or wrong
//!   `Upload-Offset`, a status we did not ask for) is an error that says so, never a success.
//!
//! This module knows HTTP and tus; what a status means for a queue item (retry, fail, ask the
//! user to pair again) is decided in [`super::transfer`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::Stream;
use futures_util::StreamExt as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode, Url};

use crate::conditions::Link;
use crate::config;
use crate::secret::Secret;
use crate::upload::bind::{self, Binding};
use crate::upload::metadata::UploadMetadata;
use crate::upload::retry;
use crate::upload::throttle::{self, Throttle};
use crate::upload::tls;

/// The protocol version we speak.
pub const TUS_VERSION: &str = "1.0.0";

/// `User-Agent` of every request: the product and its version, nothing about the device.
pub const USER_AGENT: &str = concat!("cambackup/", env!("CARGO_PKG_VERSION"));

/// How long discovery results are trusted before the endpoint is asked again (a server upgrade
/// may add extensions; asking once an hour costs nothing).
const CAPS_TTL: Duration = Duration::from_secs(3600);

/// How much of an error answer's body is read, and how much of it is kept for the message.
const ERROR_BODY_READ: usize = 4096;
const ERROR_BODY_KEEP: usize = 200;

/// The tus headers, named once.
pub mod header {
    #![allow(missing_docs)]
    pub const TUS_RESUMABLE: &str = "tus-resumable";
    pub const TUS_VERSION: &str = "tus-version";
    pub const TUS_EXTENSION: &str = "tus-extension";
    pub const TUS_MAX_SIZE: &str = "tus-max-size";
    pub const TUS_CHECKSUM_ALGORITHM: &str = "tus-checksum-algorithm";
    pub const UPLOAD_OFFSET: &str = "upload-offset";
    pub const UPLOAD_LENGTH: &str = "upload-length";
    pub const UPLOAD_METADATA: &str = "upload-metadata";
    pub const UPLOAD_EXPIRES: &str = "upload-expires";
    pub const UPLOAD_CHECKSUM: &str = "upload-checksum";
    pub const LOCATION: &str = "location";
    pub const RETRY_AFTER: &str = "retry-after";
    /// RFC 9530: asked for on the `HEAD` of a completed upload (`free_space_verify =
    /// "receipt"`), answered with `REPR_DIGEST`.
    pub const WANT_REPR_DIGEST: &str = "want-repr-digest";
    pub const REPR_DIGEST: &str = "repr-digest";
}

/// What `Want-Repr-Digest` asks for: SHA-256, the only algorithm asked (10: most preferred).
pub const WANT_SHA256: &str = "sha-256=10";

/// The server's receipt for a completed upload: its SHA-256 of the object it stored, from the
/// `Repr-Digest` of a `HEAD` that asked for it (RFC 9530).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// No `Repr-Digest`, or none with `sha-256`: the server gives no receipts.
    None,
    /// `sha-256=:BASE64:`, decoded.
    Sha256([u8; 32]),
    /// A `sha-256` member that is not 32 bytes of base64: no receipt, and the reason.
    Malformed(String),
}

/// Reads the `sha-256` member of `Repr-Digest` field values (an RFC 8941 dictionary, split
/// over any number of header lines): `sha-256=:BASE64:`, other algorithms ignored. A key given
/// twice counts by its last value, as RFC 8941 section 3.2 says ("all but the last instance
/// are ignored"), across header lines too (they are one field, joined in order).
pub fn parse_repr_digest<'a>(values: impl IntoIterator<Item = &'a str>) -> Receipt {
    let mut last = None;
    for value in values {
        for member in value.split(',') {
            let Some((key, v)) = member.split_once('=') else {
                continue;
            };
            if key.trim() == "sha-256" {
                last = Some(v);
            }
        }
    }
    let Some(v) = last else {
        return Receipt::None;
    };
    // A byte sequence: `:base64:`, parameters (`;x`) after it ignored.
    let v = v.trim().split(';').next().unwrap_or("");
    let Some(b64) = v.strip_prefix(':').and_then(|v| v.strip_suffix(':')) else {
        return Receipt::Malformed(format!("sha-256 is not a byte sequence: {v:?}"));
    };
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(d) => match <[u8; 32]>::try_from(d.as_slice()) {
            Ok(d) => Receipt::Sha256(d),
            Err(_) => Receipt::Malformed(format!("sha-256 has {} bytes, not 32", d.len())),
        },
        Err(e) => Receipt::Malformed(format!("sha-256 is not base64: {e}")),
    }
}

/// What the tus client can fail with. Each variant names the request and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TusError {
    /// The HTTP client could not be built (bad `ca_file`, no usable TLS roots).
    #[error("cannot set up the HTTPS client: {0}")]
    Setup(String),
    /// No interface is approved for uploads (offline, or only networks the user excludes): the
    /// client makes no connection rather than let the kernel pick one.
    #[error("no network interface is approved for uploads (status.uplink says why)")]
    NoUplink,
    /// The token cannot be put in a header (control characters): pairing gave a bad token.
    #[error("the account's token contains characters not allowed in an HTTP header")]
    BadToken,
    /// Connecting, TLS, sending or receiving failed.
    #[error("{method} {url}: network error: {}", chain(source))]
    Network {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// No byte accepted by the connection nor any answer for `secs` seconds.
    #[error("{method} {url}: no progress for {secs} s, request aborted (will resume)")]
    Stalled {
        method: &'static str,
        url: String,
        secs: u64,
    },
    /// The server answered with a status this request does not expect.
    #[error("{method} {url}: server answered {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        /// The start of the server's message (trimmed, truncated).
        message: String,
        /// From `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// A header the protocol requires in this answer is missing.
    #[error("{method} {url}: the server's answer lacks the `{header}` header")]
    MissingHeader {
        method: &'static str,
        url: String,
        header: &'static str,
    },
    /// A header is present but unusable.
    #[error("{method} {url}: bad `{header}` header {value:?}: {why}")]
    BadHeader {
        method: &'static str,
        url: String,
        header: &'static str,
        value: String,
        why: String,
    },
    /// The server acknowledged a different offset than the bytes we sent.
    #[error("PATCH {url}: the server acknowledged offset {got}, expected {expected}")]
    WrongOffset {
        url: String,
        expected: u64,
        got: u64,
    },
    /// `Upload-Expires` of the upload is in the past: it has to be created anew.
    #[error("upload {url} expired")]
    Expired { url: String },
    /// The endpoint does not offer tus 1.0.0.
    #[error("{endpoint} does not speak tus {TUS_VERSION} (it offers {offered})")]
    UnsupportedVersion { endpoint: String, offered: String },
    /// Something other than a tus server answered (a captive portal, a proxy's page): no
    /// `Tus-Resumable` in an answer that a tus server would have given it in (2xx, 3xx), or
    /// 511 Network Authentication Required. `why` says what came.
    #[error("{method} {url}: not the tus server answering: {why}")]
    NotTus {
        method: &'static str,
        url: String,
        why: String,
    },
    /// A request to a URL outside every configured endpoint's origin: refused before any
    /// connection, since it would carry the token there.
    #[error("{url}: not sent, {why}")]
    ForeignUrl { url: String, why: String },
}

/// Why the server cannot be reached through the uplink ([`TusError::reach`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The server's name does not resolve, or its host or network is unreachable.
    NoInternet,
    /// Something else answers for the server.
    CaptivePortal,
}

/// An answer that no tus server gives (see [`TusError::NotTus`]), or `None`. Tus servers put
/// `Tus-Resumable` in every answer (tus 1.0.0, "Tus-Resumable"); an answer to `OPTIONS` may
/// carry `Tus-Version` alone. 4xx and 5xx without it are left to the status handling: a
/// balancer's own 502/503 page lacks it too, and is no portal.
fn not_tus(method: &'static str, url: &str, resp: &Response) -> Option<TusError> {
    let h = resp.headers();
    if h.contains_key(header::TUS_RESUMABLE) || h.contains_key(header::TUS_VERSION) {
        return None;
    }
    let status = resp.status().as_u16();
    let kind = h
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| format!(", {}", t.split(';').next().unwrap_or(t).trim()))
        .unwrap_or_default();
    let why = match status {
        300..=399 => {
            let to = h
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| l.chars().take(120).collect::<String>())
                .unwrap_or_else(|| "nowhere said".into());
            format!("{status} redirecting to {to}")
        }
        511 => format!("511 Network Authentication Required{kind}"),
        200..=299 => format!("{status} without `Tus-Resumable`{kind}"),
        _ => return None,
    };
    Some(TusError::NotTus {
        method,
        url: url.into(),
        why,
    })
}

/// What a server said of a token at pairing ([`Client::check_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVerdict {
    /// It answered without refusing the token (`status`: what it answered).
    Accepted { status: u16 },
    /// It refused the token: 401 or 403, with the start of its message.
    Refused { status: u16, message: String },
}

/// The first answer `f` gives for an error of `e`'s chain. An `io::Error`'s own `source`
/// skips the error it wraps (hyper and rustls errors reach us so): it is looked into by hand.
fn find_in_chain<T>(
    e: &(dyn std::error::Error + 'static),
    f: &impl Fn(&(dyn std::error::Error + 'static)) -> Option<T>,
) -> Option<T> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(found) = f(e) {
            return Some(found);
        }
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if let Some(found) = wrapped.and_then(|inner| find_in_chain(inner, f)) {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// Whether an `io::Error` of one of `kinds` is somewhere in `e`'s chain.
fn io_kind_in(e: &(dyn std::error::Error + 'static), kinds: &[std::io::ErrorKind]) -> bool {
    find_in_chain(e, &|e| {
        e.downcast_ref::<std::io::Error>()
            .filter(|io| kinds.contains(&io.kind()))
            .map(|_| ())
    })
    .is_some()
}

/// Formats an error with its sources: reqwest's top-level message alone ("error sending
/// request") does not say what happened.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl TusError {
    /// The HTTP status, when the server answered with one we did not expect.
    pub fn status(&self) -> Option<u16> {
        match self {
            TusError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server refused this device's TLS certificate: the handshake ended with a fatal alert
    /// about the client's certificate (none sent where the tier requires one, signed by a CA it
    /// does not trust, revoked, expired). Names the alert. Only the server sends such an alert
    /// about our certificate: one we refuse about its certificate is another error.
    /// `DecryptError` is the server failing a signature of ours: a certificate whose issuer
    /// bears the maker's CA's name but not its key, or a key that is not the certificate's.
    pub fn certificate_refused(&self) -> Option<String> {
        use rustls::AlertDescription as A;
        let TusError::Network { source, .. } = self else {
            return None;
        };
        let alert_of = |e: &(dyn std::error::Error + 'static)| match e.downcast_ref() {
            Some(rustls::Error::AlertReceived(
                a @ (A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::CertificateRequired
                | A::DecryptError),
            )) => Some(format!("{a:?}")),
            _ => None,
        };
        find_in_chain(source, &alert_of)
    }

    /// No way to the server from here: the host or its network is unreachable (`EHOSTUNREACH`:
    /// no neighbour answers on the link, `ENETUNREACH`: no route). A path that is down, not a
    /// server instance that died: a new request at once meets the same.
    pub fn unreachable(&self) -> bool {
        use std::io::ErrorKind as K;
        let TusError::Network { source, .. } = self else {
            return false;
        };
        io_kind_in(source, &[K::HostUnreachable, K::NetworkUnreachable])
    }

    /// Whether this failure says the server cannot be reached through the uplink at all
    /// (Wi-Fi without internet, a captive portal), as opposed to a server that is down or
    /// busy: what the user can act on, shown as `no_internet` or `captive_portal`.
    pub fn reach(&self) -> Option<Reach> {
        use rustls::CertificateError as C;
        match self {
            TusError::NotTus { .. } => Some(Reach::CaptivePortal),
            TusError::Network { source, .. } => {
                if self.unreachable() || chain(source).contains("dns error") {
                    return Some(Reach::NoInternet);
                }
                // A certificate for another name: the network answers for the server (a
                // portal intercepting the connection). Not an unknown issuer or an expired
                // certificate: those are the server's (or the maker's CA's) to fix.
                find_in_chain(source, &|e| match e.downcast_ref() {
                    Some(rustls::Error::InvalidCertificate(
                        C::NotValidForName | C::NotValidForNameContext { .. },
                    )) => Some(Reach::CaptivePortal),
                    _ => None,
                })
            }
            _ => None,
        }
    }

    /// The connection broke under the request (a broken pipe, a reset, or closed before the
    /// answer): how a proxy's 413 to a body over its limit usually reaches a client still
    /// writing that body, and how a proxy that refuses without a word always does
    /// (`chunk::BodyLimit`). Not a refused connection: then no body went out.
    pub fn connection_broke(&self) -> bool {
        use std::io::ErrorKind as K;
        let TusError::Network { source, .. } = self else {
            return false;
        };
        // Not `UnexpectedEof`: the body's own source says that of a file cut short.
        io_kind_in(source, &[K::BrokenPipe, K::ConnectionReset])
            || find_in_chain(source, &|e| {
                e.downcast_ref::<hyper::Error>()
                    .filter(|h| h.is_incomplete_message())
                    .map(|_| ())
            })
            .is_some()
    }

    /// The upload URL is gone (404/410) or expired: the next step is a new creation.
    pub fn is_gone(&self) -> bool {
        matches!(self, TusError::Expired { .. }) || matches!(self.status(), Some(404 | 410))
    }

    /// Worth trying again later without anything changing on our side: network trouble, a
    /// stall, the server's load (408, 423 locked, 429, 460 checksum mismatch, 5xx) or a
    /// protocol slip that a fresh `HEAD` sorts out. Not: 401/402/403, 413, other 4xx, setup.
    pub fn is_transient(&self) -> bool {
        match self {
            TusError::Network { .. }
            | TusError::Stalled { .. }
            | TusError::NoUplink
            | TusError::NotTus { .. } => true,
            TusError::Status { status, .. } => {
                matches!(status, 408 | 409 | 423 | 429 | 460) || (500..600).contains(status)
            }
            // A server that answers nonsense may be mid-deploy; retrying under the capped
            // back-off costs one request per hour if it stays broken, and heals itself when
            // it is fixed, which a field camera nobody looks at needs.
            TusError::MissingHeader { .. }
            | TusError::BadHeader { .. }
            | TusError::WrongOffset { .. }
            | TusError::Expired { .. } => true,
            TusError::Setup(_)
            | TusError::BadToken
            | TusError::UnsupportedVersion { .. }
            | TusError::ForeignUrl { .. } => false,
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TusError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The server's message in a status answer (empty otherwise).
    pub fn server_message(&self) -> &str {
        match self {
            TusError::Status { message, .. } => message,
            _ => "",
        }
    }
}

/// What an endpoint offers, from its `OPTIONS` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `Tus-Version`, in the server's order of preference (empty: not said, 1.0.0 assumed).
    pub versions: Vec<String>,
    /// `Tus-Extension`, e.g. `creation`, `termination`, `checksum`, `expiration`.
    pub extensions: Vec<String>,
    /// `Tus-Max-Size`: the largest upload the server accepts.
    pub max_size: Option<u64>,
    /// `Tus-Checksum-Algorithm`, lower-cased.
    pub checksum_algorithms: Vec<String>,
}

impl Capabilities {
    /// Whether the server lists this extension.
    pub fn has(&self, extension: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e.eq_ignore_ascii_case(extension))
    }

    /// The server ends uploads on `DELETE`.
    pub fn termination(&self) -> bool {
        self.has("termination")
    }

    /// The server checks `Upload-Checksum: sha1 ...` on each PATCH.
    pub fn sha1_checksum(&self) -> bool {
        self.has("checksum") && self.checksum_algorithms.iter().any(|a| a == "sha1")
    }
}

/// A new upload on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The absolute upload URL (a relative `Location` resolved against the endpoint).
    pub url: String,
    /// `Upload-Expires`, as unix seconds.
    pub expires_at: Option<i64>,
    /// `Upload-Offset`, if the creation answer carried one (creation-with-upload servers).
    pub offset: Option<u64>,
}

/// An upload's state on the server, from `HEAD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadState {
    /// Bytes the server has.
    pub offset: u64,
    /// The declared length (absent for deferred-length uploads, which we never create).
    pub length: Option<u64>,
    /// `Upload-Expires`, as unix seconds.
    pub expires_at: Option<i64>,
}

/// A PATCH the server accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchAck {
    /// The server's new offset; equal to the sent offset plus the chunk's length.
    pub offset: u64,
    /// A refreshed `Upload-Expires`, as unix seconds.
    pub expires_at: Option<i64>,
}

/// The tus 1.0 client: one per daemon, sharing connections and the per-endpoint discovery cache.
/// Clones share the same binding: a [`Client::rebind`] applies to every holder's next request.
#[derive(Clone)]
pub struct Client {
    http: Arc<Mutex<Bound>>,
    /// For loopback URLs only: unbound, since those connections never leave the device.
    loopback: reqwest::Client,
    /// Every configured endpoint is loopback (then no interface binding is needed at all).
    all_loopback: bool,
    /// The origins of the configured endpoints: the only places the token is sent to.
    origins: Arc<Vec<url::Origin>>,
    /// What the HTTP client is built from, to build it again for another binding.
    cloud: Arc<config::Cloud>,
    /// No progress this long aborts a request.
    stall: Duration,
    caps: Arc<Mutex<CapsCache>>,
    /// The user's bandwidth cap, shared by every PATCH body.
    throttle: Arc<Throttle>,
    /// The longest PATCH body the path to the server was seen to accept (`chunk::BodyLimit`).
    body_limit: Arc<super::chunk::BodyLimit>,
}

/// The HTTP client and the binding it was built with. `http` is `None` when the binding is
/// [`Binding::Refused`].
struct Bound {
    http: Option<reqwest::Client>,
    binding: Binding,
}

/// Discovery results per endpoint, with when they were learnt.
type CapsCache = HashMap<String, (Instant, Arc<Capabilities>)>;

impl Client {
    /// Builds the client from `[cloud]`: rustls with the system's roots plus `ca_file`,
    /// `stall_secs` as the no-progress limit. Unbound: the kernel routes each connection. The
    /// daemon calls [`Client::rebind`] before any upload, and at once with `None`.
    pub fn new(cloud: &config::Cloud) -> Result<Client, TusError> {
        let http = build(cloud, &Binding::Unbound)?;
        let aes = tls::aes_gcm_is_fast();
        tracing::info!(
            aes_gcm_on_aes_instructions = aes,
            first = if aes { "AES-GCM" } else { "ChaCha20-Poly1305" },
            "TLS cipher suites ordered for this core"
        );
        let endpoints: Vec<Url> = std::iter::once(&cloud.endpoint)
            .chain(cloud.regions.values())
            .filter_map(|e| Url::parse(e).ok())
            .collect();
        let all_loopback = endpoints.iter().all(config::is_loopback);
        let origins = endpoints.iter().map(Url::origin).collect();
        Ok(Client {
            http: Arc::new(Mutex::new(Bound {
                http: Some(http.clone()),
                binding: Binding::Unbound,
            })),
            loopback: http,
            all_loopback,
            origins: Arc::new(origins),
            cloud: Arc::new(cloud.clone()),
            stall: Duration::from_secs(cloud.stall_secs.max(1)),
            caps: Arc::default(),
            throttle: Arc::default(),
            body_limit: Arc::default(),
        })
    }

    /// What the path to the server was seen to refuse as a PATCH body: every transfer's chunks
    /// stay under it.
    pub fn body_limit(&self) -> &super::chunk::BodyLimit {
        &self.body_limit
    }

    /// The user's cap on the upload rate in bytes per second (0: none); the bodies in flight
    /// follow it within [`throttle::STEP`].
    pub fn set_max_rate(&self, bytes_per_sec: u64) {
        self.throttle.set_rate(bytes_per_sec);
    }

    /// The pacing point every PATCH body goes through: the rate cap and the data plan.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Holds every new connection to `uplink` (the gate's choice), or makes none with `None`:
    /// by device where the kernel allows it, else by the interface's address (module
    /// [`super::bind`]). Connections already open keep their old binding: the caller stops the
    /// uploads in flight. Returns the binding now in force.
    pub fn rebind(&self, uplink: Option<&Link>) -> Binding {
        let binding = match uplink {
            None => Binding::Refused,
            Some(link) if self.all_loopback => Binding::Loopback(link.interface.clone()),
            Some(link) => {
                let device = bind::probe_device(&link.interface);
                if let Err(e) = &device {
                    tracing::debug!(interface = %link.interface, error = %e, "SO_BINDTODEVICE refused; trying the interface's address");
                }
                let addrs = if device.is_ok() {
                    Vec::new()
                } else {
                    bind::addresses(&link.interface).unwrap_or_default()
                };
                bind::choose(&link.interface, device.is_ok(), &addrs, &link.families)
            }
        };
        let http = match &binding {
            Binding::Refused | Binding::Loopback(_) => None,
            b => match build(&self.cloud, b) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the upload client; no uploads meanwhile");
                    None
                }
            },
        };
        let binding = match (&binding, &http) {
            (Binding::Loopback(_), _) | (_, Some(_)) => binding,
            (_, None) => Binding::Refused,
        };
        let mut bound = self.http.lock().unwrap_or_else(|p| p.into_inner());
        bound.http = http;
        bound.binding = binding.clone();
        binding
    }

    /// The binding in force.
    pub fn binding(&self) -> Binding {
        self.http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .binding
            .clone()
    }

    /// The HTTP client for `url`: the unbound one for a loopback URL, else the one of the
    /// binding in force; [`TusError::NoUplink`] when no interface is approved.
    fn http(&self, url: &str) -> Result<reqwest::Client, TusError> {
        if Url::parse(url).is_ok_and(|u| config::is_loopback(&u)) {
            return Ok(self.loopback.clone());
        }
        let bound = self.http.lock().unwrap_or_else(|p| p.into_inner());
        bound.http.clone().ok_or(TusError::NoUplink)
    }

    /// The no-progress limit (`cloud.stall_secs`).
    pub fn stall(&self) -> Duration {
        self.stall
    }

    /// A request with the headers every tus request carries, and nothing else. Refused before
    /// any connection when `url` is not at a configured endpoint's origin: an upload URL
    /// stored by an older release, or handed to the freeing or unpairing code, must not carry
    /// the token anywhere the maker did not configure.
    fn request(
        &self,
        method: Method,
        url: &str,
        token: &Secret,
    ) -> Result<reqwest::RequestBuilder, TusError> {
        let foreign = |why: String| TusError::ForeignUrl {
            url: url.into(),
            why,
        };
        let parsed = Url::parse(url).map_err(|e| foreign(format!("not a URL: {e}")))?;
        if !self.origins.contains(&parsed.origin()) {
            return Err(foreign(
                "it is not at the origin (scheme, host, port) of cloud.endpoint or a \
                 cloud.regions endpoint, the only places the account's token goes"
                    .into(),
            ));
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| TusError::BadToken)?;
        auth.set_sensitive(true);
        Ok(self
            .http(url)?
            .request(method, url)
            .header(header::TUS_RESUMABLE, TUS_VERSION)
            .header(reqwest::header::AUTHORIZATION, auth))
    }

    /// Sends a small request (no body to stream) with the stall limit as its whole deadline.
    async fn send_small(
        &self,
        method: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Response, TusError> {
        let resp = req
            .timeout(self.stall)
            .send()
            .await
            .map_err(|source| self.network_error(method, url, source))?;
        match not_tus(method, url, &resp) {
            Some(e) => Err(e),
            None => Ok(resp),
        }
    }

    /// A failed request as the caller must see it: a timeout anywhere in its chain (the
    /// request's deadline, or the kernel's `TCP_USER_TIMEOUT` ending a connection whose link
    /// went silent: `ETIMEDOUT`) is a stall, not a cut. A cut may be tried again at once
    /// (`prompt`); a stall may not: the path is silent, and a second request would wait out a
    /// second `stall_secs` before the upload stops (found under qemu, where the kernel's timer
    /// fired before the request's own).
    fn network_error(&self, method: &'static str, url: &str, source: reqwest::Error) -> TusError {
        if source.is_timeout() || io_kind_in(&source, &[std::io::ErrorKind::TimedOut]) {
            TusError::Stalled {
                method,
                url: url.into(),
                secs: self.stall.as_secs(),
            }
        } else {
            TusError::Network {
                method,
                url: url.into(),
                source,
            }
        }
    }

    /// Discovery: what `endpoint` offers. Cached per endpoint for an hour. A server that does
    /// not answer `OPTIONS` at all (404/405: some proxies) is assumed to offer core tus with
    /// creation and nothing optional.
    pub async fn options(
        &self,
        endpoint: &str,
        token: &Secret,
    ) -> Result<Arc<Capabilities>, TusError> {
        if let Some(c) = self.cached_caps(endpoint) {
            return Ok(c);
        }
        let req = self.request(Method::OPTIONS, endpoint, token)?;
        let resp = self.send_small("OPTIONS", endpoint, req).await?;
        let caps = match resp.status() {
            StatusCode::OK | StatusCode::NO_CONTENT => {
                parse_capabilities(resp.headers(), endpoint)?
            }
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                tracing::warn!(
                    endpoint,
                    status = resp.status().as_u16(),
                    "the tus endpoint does not answer OPTIONS; assuming core tus with creation \
                     only (no checksum, no termination)"
                );
                Capabilities {
                    extensions: vec!["creation".into()],
                    ..Default::default()
                }
            }
            _ => return Err(status_error("OPTIONS", endpoint, resp).await),
        };
        let caps = Arc::new(caps);
        self.caps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(endpoint.to_string(), (Instant::now(), caps.clone()));
        Ok(caps)
    }

    fn cached_caps(&self, endpoint: &str) -> Option<Arc<Capabilities>> {
        let cache = self.caps.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(endpoint)
            .filter(|(at, _)| at.elapsed() < CAPS_TTL)
            .map(|(_, c)| c.clone())
    }

    /// Capabilities of the endpoint an upload URL belongs to, if discovered: the cached
    /// endpoint the URL starts with.
    fn cached_caps_for_upload(&self, upload_url: &str) -> Option<Arc<Capabilities>> {
        let cache = self.caps.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .iter()
            .filter(|(ep, (at, _))| upload_url.starts_with(ep.as_str()) && at.elapsed() < CAPS_TTL)
            .max_by_key(|(ep, _)| ep.len())
            .map(|(_, (_, c))| c.clone())
    }

    /// Pairing's check of a token: one authenticated `HEAD` of the endpoint, within
    /// `deadline` (the app waits on the answer). A server, or the auth layer in front of it,
    /// that refuses the token answers 401 or 403; any other answer (a tus server answers a
    /// `HEAD` of its creation URL 404 or 405) means it did not refuse it. No metadata and no
    /// body: only what every request carries. Not cached, not retried.
    pub async fn check_token(
        &self,
        endpoint: &str,
        token: &Secret,
        deadline: Duration,
    ) -> Result<TokenVerdict, TusError> {
        let req = self
            .request(Method::HEAD, endpoint, token)?
            .timeout(deadline);
        let resp = req
            .send()
            .await
            .map_err(|source| self.network_error("HEAD", endpoint, source))?;
        if let Some(e) = not_tus("HEAD", endpoint, &resp) {
            return Err(e);
        }
        let status = resp.status().as_u16();
        if !matches!(status, 401 | 403) {
            return Ok(TokenVerdict::Accepted { status });
        }
        let e = status_error("HEAD", endpoint, resp).await;
        Ok(TokenVerdict::Refused {
            status,
            message: e.server_message().to_string(),
        })
    }

    /// Creation: a new upload of `length` bytes with exactly the four metadata fields. Returns
    /// its absolute URL; the caller stores it before sending any data.
    pub async fn create(
        &self,
        endpoint: &str,
        length: u64,
        metadata: &UploadMetadata,
        token: &Secret,
    ) -> Result<Created, TusError> {
        let req = self
            .request(Method::POST, endpoint, token)?
            .header(header::UPLOAD_LENGTH, length)
            .header(header::UPLOAD_METADATA, metadata.header_value())
            .header(CONTENT_LENGTH, 0);
        let resp = self.send_small("POST", endpoint, req).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error("POST", endpoint, resp).await);
        }
        let h = resp.headers();
        let location = header_str(h, header::LOCATION, "POST", endpoint)?.ok_or_else(|| {
            TusError::MissingHeader {
                method: "POST",
                url: endpoint.into(),
                header: header::LOCATION,
            }
        })?;
        let url = resolve_location(endpoint, location)?;
        Ok(Created {
            expires_at: expires(h, "POST", endpoint),
            offset: header_u64(h, header::UPLOAD_OFFSET, "POST", endpoint)?,
            url,
        })
    }

    /// The server's offset (and length, expiry) of an upload. 404/410 come back as a
    /// [`TusError::Status`] for which [`TusError::is_gone`] holds; an `Upload-Expires` in the
    /// past as [`TusError::Expired`].
    pub async fn head(&self, url: &str, token: &Secret) -> Result<UploadState, TusError> {
        Ok(self.head_asking(url, token, false).await?.0)
    }

    /// [`Client::head`] on a completed upload, asking for the server's receipt
    /// (`Want-Repr-Digest: sha-256=10`): its state and the receipt it gave, if any.
    pub async fn head_receipt(
        &self,
        url: &str,
        token: &Secret,
    ) -> Result<(UploadState, Receipt), TusError> {
        self.head_asking(url, token, true).await
    }

    async fn head_asking(
        &self,
        url: &str,
        token: &Secret,
        receipt: bool,
    ) -> Result<(UploadState, Receipt), TusError> {
        let mut req = self.request(Method::HEAD, url, token)?;
        if receipt {
            req = req.header(header::WANT_REPR_DIGEST, WANT_SHA256);
        }
        let resp = self.send_small("HEAD", url, req).await?;
        if !matches!(resp.status(), StatusCode::OK | StatusCode::NO_CONTENT) {
            return Err(status_error("HEAD", url, resp).await);
        }
        let h = resp.headers();
        let offset = header_u64(h, header::UPLOAD_OFFSET, "HEAD", url)?.ok_or_else(|| {
            TusError::MissingHeader {
                method: "HEAD",
                url: url.into(),
                header: header::UPLOAD_OFFSET,
            }
        })?;
        let expires_at = expires(h, "HEAD", url);
        if expires_at.is_some_and(|t| t <= crate::clock::now_unix()) {
            return Err(TusError::Expired { url: url.into() });
        }
        let state = UploadState {
            offset,
            length: header_u64(h, header::UPLOAD_LENGTH, "HEAD", url)?,
            expires_at,
        };
        let receipt = if receipt {
            parse_repr_digest(
                h.get_all(header::REPR_DIGEST)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            )
        } else {
            Receipt::None
        };
        Ok((state, receipt))
    }

    /// Sends `len` bytes read from `body` at `offset`. Returns once the server acknowledged
    /// them with `Upload-Offset == offset + len`.
    ///
    /// The body streams as it comes (blocks of `upload/source`); `sent` is called (about four times a second)
    /// with the bytes of this chunk the connection has taken so far, for a smooth progress
    /// display; those bytes are not acknowledged yet. No byte taken and no answer for the stall
    /// limit aborts the request with [`TusError::Stalled`]. Dropping the future aborts the
    /// request (the connection is closed), which is how a stop interrupts a chunk.
    ///
    /// Known limit: "taken by the connection" means handed to the kernel's send buffer, which
    /// on a slow link can hold some seconds of data; the stall limit has to exceed that.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch<S>(
        &self,
        url: &str,
        token: &Secret,
        offset: u64,
        body: S,
        len: u64,
        checksum_sha1: Option<&str>,
        sent: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<PatchAck, TusError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let meter = Arc::new(Meter::new());
        let m = meter.clone();
        let stream = throttle::paced(body, self.throttle.clone()).inspect(move |r| {
            if let Ok(b) = r {
                m.record(b.len() as u64);
            }
        });
        let mut req = self
            .request(Method::PATCH, url, token)?
            .header(header::UPLOAD_OFFSET, offset)
            .header(CONTENT_TYPE, "application/offset+octet-stream")
            // Explicit length: hyper then frames the stream by Content-Length, not chunked,
            // and fails the request if the file yields fewer bytes than promised.
            .header(CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(sum) = checksum_sha1 {
            req = req.header(header::UPLOAD_CHECKSUM, format!("sha1 {sum}"));
        }

        let send = req.send();
        tokio::pin!(send);
        let tick = (self.stall / 4).clamp(Duration::from_millis(50), Duration::from_millis(250));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = 0;
        let resp = loop {
            tokio::select! {
                r = &mut send => break r,
                _ = ticker.tick() => {
                    let now = meter.sent();
                    if now != reported {
                        reported = now;
                        sent(now);
                    }
                    if meter.idle() >= self.stall {
                        return Err(TusError::Stalled {
                            method: "PATCH",
                            url: url.into(),
                            secs: self.stall.as_secs(),
                        });
                    }
                }
            }
        };
        let resp = resp.map_err(|source| self.network_error("PATCH", url, source))?;
        if let Some(e) = not_tus("PATCH", url, &resp) {
            return Err(e);
        }
        if !matches!(resp.status(), StatusCode::NO_CONTENT | StatusCode::OK) {
            return Err(status_error("PATCH", url, resp).await);
        }
        let h = resp.headers();
        let got = header_u64(h, header::UPLOAD_OFFSET, "PATCH", url)?.ok_or_else(|| {
            TusError::MissingHeader {
                method: "PATCH",
                url: url.into(),
                header: header::UPLOAD_OFFSET,
            }
        })?;
        let expected = offset + len;
        if got != expected {
            return Err(TusError::WrongOffset {
                url: url.into(),
                expected,
                got,
            });
        }
        Ok(PatchAck {
            offset: got,
            expires_at: expires(h, "PATCH", url),
        })
    }

    /// Termination: ends an unfinished upload on the server. `Ok(false)` when the server does
    /// not offer termination; an upload already gone (404/410) counts as ended.
    ///
    /// The endpoint's discovery is used when cached; otherwise the upload URL itself is asked
    /// (`OPTIONS` is answered on any path by tusd and @tus/server).
    pub async fn terminate(&self, upload_url: &str, token: &Secret) -> Result<bool, TusError> {
        let caps = match self.cached_caps_for_upload(upload_url) {
            Some(c) => c,
            None => {
                let req = self.request(Method::OPTIONS, upload_url, token)?;
                let resp = self.send_small("OPTIONS", upload_url, req).await?;
                if !matches!(resp.status(), StatusCode::OK | StatusCode::NO_CONTENT) {
                    return Ok(false);
                }
                Arc::new(parse_capabilities(resp.headers(), upload_url)?)
            }
        };
        if !caps.termination() {
            return Ok(false);
        }
        let req = self.request(Method::DELETE, upload_url, token)?;
        let resp = self.send_small("DELETE", upload_url, req).await?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND | StatusCode::GONE => {
                Ok(true)
            }
            _ => Err(status_error("DELETE", upload_url, resp).await),
        }
    }
}

/// Bytes a PATCH body has handed to the connection, and when it last did.
struct Meter {
    start: Instant,
    sent: AtomicU64,
    /// Milliseconds after `start` of the last progress.
    last_ms: AtomicU64,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            start: Instant::now(),
            sent: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn record(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Turns an unexpected answer into [`TusError::Status`] with the start of the server's message.
/// The HTTP client for `cloud`, its connections held by `binding`.
fn build(cloud: &config::Cloud, binding: &Binding) -> Result<reqwest::Client, TusError> {
    let stall = Duration::from_secs(cloud.stall_secs.max(1));
    // Built by hand for the suites' order on cores without AES (module `upload::tls`); the
    // same roots, versions, identity and ALPN reqwest's own set-up had.
    let tls = tls::client_config(cloud, tls::aes_gcm_is_fast()).map_err(TusError::Setup)?;
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(USER_AGENT)
        // A redirect would send the token and the file to a host nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .connect_timeout(stall)
        // Finds a connection that died silently (Wi-Fi roaming) between requests.
        .tcp_keepalive(Duration::from_secs(30))
        // Unacknowledged data this long fails the connection: a bound connection whose
        // interface went away (or went silent) does not fail over to another route, its writes
        // just wait, for the kernel's retransmission limit (about 15 minutes) without this.
        .tcp_user_timeout(stall)
        .pool_idle_timeout(Duration::from_secs(60));
    match binding {
        Binding::Unbound | Binding::Refused | Binding::Loopback(_) => {}
        Binding::Device(interface) => b = b.interface(interface),
        Binding::Address { addr, .. } => {
            b = b
                .local_address(*addr)
                .dns_resolver(bind::resolver_for(*addr))
        }
    }
    b.build().map_err(|e| TusError::Setup(chain(&e)))
}

async fn status_error(method: &'static str, url: &str, mut resp: Response) -> TusError {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
    // Read a bounded prefix: an error page must not cost memory or time.
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_READ {
        match tokio::time::timeout(Duration::from_secs(2), resp.chunk()).await {
            Ok(Ok(Some(c))) => body.extend_from_slice(&c[..c.len().min(ERROR_BODY_READ)]),
            _ => break,
        }
    }
    TusError::Status {
        method,
        url: url.into(),
        status,
        message: summarize(&body),
        retry_after,
    }
}

/// The server's message as one short line.
fn summarize(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(ERROR_BODY_KEEP) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

fn header_str<'h>(
    h: &'h HeaderMap,
    name: &'static str,
    method: &'static str,
    url: &str,
) -> Result<Option<&'h str>, TusError> {
    match h.get(HeaderName::from_static(name)) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| TusError::BadHeader {
                method,
                url: url.into(),
                header: name,
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                why: "not visible ASCII".into(),
            }),
    }
}

pub(crate) fn header_u64(
    h: &HeaderMap,
    name: &'static str,
    method: &'static str,
    url: &str,
) -> Result<Option<u64>, TusError> {
    let Some(s) = header_str(h, name, method, url)? else {
        return Ok(None);
    };
    s.parse::<u64>().map(Some).map_err(|_| TusError::BadHeader {
        method,
        url: url.into(),
        header: name,
        value: s.into(),
        why: "not a non-negative integer".into(),
    })
}

/// `Upload-Expires` as unix seconds. A garbled date is logged and ignored: the upload then
/// lives until the server says 404/410, which we handle anyway.
pub(crate) fn expires(h: &HeaderMap, method: &'static str, url: &str) -> Option<i64> {
    let s = header_str(h, header::UPLOAD_EXPIRES, method, url).ok()??;
    match httpdate::parse_http_date(s) {
        Ok(t) => Some(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        ),
        Err(_) => {
            tracing::warn!(method, url, value = s, "ignoring unparsable Upload-Expires");
            None
        }
    }
}

pub(crate) fn parse_capabilities(h: &HeaderMap, endpoint: &str) -> Result<Capabilities, TusError> {
    let list = |name| -> Result<Vec<String>, TusError> {
        Ok(header_str(h, name, "OPTIONS", endpoint)?
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect())
    };
    let caps = Capabilities {
        versions: list(header::TUS_VERSION)?,
        extensions: list(header::TUS_EXTENSION)?,
        max_size: header_u64(h, header::TUS_MAX_SIZE, "OPTIONS", endpoint)?,
        checksum_algorithms: list(header::TUS_CHECKSUM_ALGORITHM)?,
    };
    if !caps.versions.is_empty() && !caps.versions.iter().any(|v| v == TUS_VERSION) {
        return Err(TusError::UnsupportedVersion {
            endpoint: endpoint.into(),
            offered: caps.versions.join(", "),
        });
    }
    Ok(caps)
}

/// Resolves a `Location` (absolute, or relative to the endpoint as tus allows) and holds it to
/// [`check_upload_url`]: the server must not steer the token and data anywhere else.
pub(crate) fn resolve_location(endpoint: &str, location: &str) -> Result<String, TusError> {
    let bad = |why: String| TusError::BadHeader {
        method: "POST",
        url: endpoint.into(),
        header: header::LOCATION,
        value: location.into(),
        why,
    };
    let base = Url::parse(endpoint).map_err(|e| bad(format!("endpoint is not a URL: {e}")))?;
    let url = base
        .join(location)
        .map_err(|e| bad(format!("not a URL: {e}")))?;
    config::check_endpoint(url.as_str()).map_err(bad)?;
    check_upload_url(&base, &url).map_err(bad)?;
    Ok(url.into())
}

/// Whether `url`, an upload URL the server at `endpoint` handed out, may receive the token and
/// the file: only at the endpoint's own origin (scheme, host and port). The maker lists the
/// hosts that get the token, as `cloud.endpoint` and `cloud.regions`; a server (or a proxy in
/// front of it) cannot add one. The specific reasons come first, for the message: plain http
/// from an https endpoint, and a loopback, link-local or private address (a service on the
/// camera or its LAN) when the endpoint is not one.
pub fn check_upload_url(endpoint: &Url, url: &Url) -> Result<(), String> {
    if endpoint.scheme() == "https" && url.scheme() != "https" {
        return Err(format!(
            "the endpoint is https, the upload URL `{}`; the token and the file go over https only",
            url.scheme()
        ));
    }
    if let Some(kind) = local_host(url).filter(|_| local_host(endpoint).is_none()) {
        return Err(format!(
            "the upload URL's host is {kind}, and the endpoint's is not; the token and the \
             file never go there"
        ));
    }
    if url.origin() != endpoint.origin() {
        return Err(format!(
            "the upload URL is not at the endpoint's origin {}; the token goes only there",
            endpoint.origin().ascii_serialization()
        ));
    }
    Ok(())
}

/// What kind of local address a URL's host is, if it is one: the device itself (loopback or
/// `localhost`), a link-local address, or a private, shared (CGNAT) or unspecified one.
fn local_host(url: &Url) -> Option<&'static str> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    fn v4(ip: Ipv4Addr) -> Option<&'static str> {
        let [a, b, ..] = ip.octets();
        if ip.is_loopback() {
            Some("a loopback address")
        } else if ip.is_link_local() {
            Some("a link-local address")
        } else if ip.is_private() || ip.is_unspecified() || (a == 100 && (64..128).contains(&b)) {
            Some("a private address")
        } else {
            None
        }
    }
    fn v6(ip: Ipv6Addr) -> Option<&'static str> {
        if let Some(m) = ip.to_ipv4_mapped() {
            return v4(m);
        }
        let first = ip.segments()[0];
        if ip.is_loopback() {
            Some("a loopback address")
        } else if first & 0xffc0 == 0xfe80 {
            Some("a link-local address")
        } else if first & 0xfe00 == 0xfc00 || ip.is_unspecified() {
            Some("a private address")
        } else {
            None
        }
    }
    match url.host()? {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            (d == "localhost" || d.ends_with(".localhost")).then_some("the device itself")
        }
        url::Host::Ipv4(ip) => v4(ip),
        url::Host::Ipv6(ip) => v6(ip),
    }
}

#[cfg(test)]
#[path = "tus_tests.rs"]
pub(crate) mod tests;
