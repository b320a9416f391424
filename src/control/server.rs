//! The control socket: creation, the accept loop and shutdown.
//!
//! Use: [`bind`] before telling systemd READY=1 (so a socket problem is reported, by path, before
//! the daemon claims to be up), then [`serve`] until `app.shutdown()` is cancelled. The socket file
//! is removed when the [`Listener`] is dropped, if it is still ours.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::extract::ApiError;
use super::peercred::{Peer, Policy};
use super::{routes, ControlError, Limits};
use crate::app::App;
use crate::config;

/// Mode of the socket file: owner and group may connect (connecting needs write permission).
const SOCKET_MODE: u32 = 0o660;

/// Mode of the socket's directory when we have to create it: the group needs to traverse it to
/// reach the socket; others could not connect anyway (the socket is 0660), so they do not even
/// see it. An existing directory keeps its mode: the operator (or systemd's RuntimeDirectory=)
/// chose it.
const DIR_MODE: u32 = 0o750;

/// A bound control socket, not yet serving. Dropping it removes the socket file, if the file is
/// still the one we created (another daemon may have replaced it since).
#[derive(Debug)]
pub struct Listener {
    inner: Option<std::os::unix::net::UnixListener>,
    pub(super) path: PathBuf,
    /// (device, inode) of the socket file we created.
    identity: (u64, u64),
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Close first, so a client racing the removal sees "refused" rather than a hang.
        self.inner.take();
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.identity {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(socket = %self.path.display(), error = %e, "could not remove the control socket");
                }
            }
        }
    }
}

/// Creates the control socket at `control.socket`: its directory if missing (mode 0750), the
/// socket with mode 0660. A stale socket file (nothing answers on it) is replaced; a live one
/// (another daemon) or a path that is not a socket is refused with an error naming it.
///
/// Needs no async runtime; [`serve`] must then run inside one.
pub fn bind(control: &config::Control) -> Result<Listener, ControlError> {
    let path = control.socket.clone();
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ControlError::Io { what, path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io("create its directory", &path))?;
            // The daemon's umask (077) narrowed the mode above; the app's group needs x.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(io("set its directory's mode", &path))?;
        }
    }
    clear_stale(&path)?;
    // The socket appears with the umask's mode and is narrowed just after; in that instant a
    // stranger could connect, but the credential check refuses every request from them anyway.
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(io("bind", &path))?;
    let built = (|| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io("set its mode to 0660", &path))?;
        listener
            .set_nonblocking(true)
            .map_err(io("make it non-blocking", &path))?;
        let m = std::fs::symlink_metadata(&path).map_err(io("stat", &path))?;
        Ok((m.dev(), m.ino()))
    })();
    match built {
        Ok(identity) => Ok(Listener {
            inner: Some(listener),
            path,
            identity,
        }),
        Err(e) => {
            drop(listener);
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Removes a socket file nobody listens on; refuses a live socket or a non-socket.
fn clear_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Io {
                what: "inspect the existing file",
                path: path.into(),
                source,
            })
        }
    };
    // A symlink is refused too: we would not know what we replace.
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket(path.into()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ControlError::InUse(path.into())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing a stale control socket");
            std::fs::remove_file(path).map_err(|source| ControlError::Io {
                what: "remove the stale socket",
                path: path.into(),
                source,
            })
        }
        Err(source) => Err(ControlError::Io {
            what: "check whether another daemon listens on the existing socket",
            path: path.into(),
            source,
        }),
    }
}

/// Serves the API on `listener` until `app.shutdown()` is cancelled, then lets open requests
/// finish (event streams end at once) for up to [`Limits::drain_timeout`] and removes the socket.
pub async fn serve(listener: Listener, app: Arc<App>) -> Result<(), ControlError> {
    serve_with(listener, app, Limits::default()).await
}

/// [`serve`] with explicit limits (tests shrink them).
pub async fn serve_with(
    mut listener: Listener,
    app: Arc<App>,
    limits: Limits,
) -> Result<(), ControlError> {
    let std_listener = listener.inner.take().expect("a listener serves once");
    let accept =
        tokio::net::UnixListener::from_std(std_listener).map_err(|source| ControlError::Io {
            what: "register with the runtime",
            path: listener.path.clone(),
            source,
        })?;
    tracing::info!(socket = %listener.path.display(), "control API listening");

    let limits = Arc::new(limits);
    let shutdown = app.shutdown().clone();
    let policy = Policy::from_config(&app.config().control);
    let api = routes::router(app, limits.clone());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_uid = UidSlots::new(limits.max_connections_per_uid);
    // Refusals are answered outside the slots, so whoever is refused never takes a slot from
    // those who are not; their number is capped too, and past it a refused connection is
    // just closed.
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let tasks = TaskTracker::new();
    // When each refused uid was last logged at warn level: a peer that reconnects in a loop
    // gets one line a minute, not one per connection.
    let mut warned: std::collections::HashMap<u32, std::time::Instant> = Default::default();

    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            got = accept.accept() => match got {
                Ok((s, _)) => s,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let peer = match Peer::of(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a control peer's credentials; closing");
                continue;
            }
        };
        let turn_away = |stream: UnixStream, why: Refusal| {
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tasks.spawn(refuse(stream, why, permit));
            }
        };
        if !policy.allows(&peer) {
            log_refusal(&mut warned, &peer);
            turn_away(stream, Refusal::Forbidden(peer.uid));
            continue;
        }
        let Some(uid_slot) = per_uid.take(peer.uid) else {
            tracing::debug!(
                uid = peer.uid,
                "a control peer holds its share of connections"
            );
            turn_away(stream, Refusal::Busy);
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            turn_away(stream, Refusal::Busy);
            continue;
        };
        tasks.spawn(serve_connection(
            stream,
            api.clone(),
            limits.clone(),
            shutdown.clone(),
            (permit, uid_slot),
        ));
    }

    drop(accept);
    tasks.close();
    if tokio::time::timeout(limits.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("control connections still open at shutdown; closing them");
    }
    drop(listener);
    Ok(())
}

/// Logs a refused peer: at warn level once a minute per uid (`warned` remembers when), at
/// debug level otherwise, so a peer that reconnects in a loop does not flood the journal.
fn log_refusal(warned: &mut std::collections::HashMap<u32, std::time::Instant>, peer: &Peer) {
    let now = std::time::Instant::now();
    let last = warned.get(&peer.uid).copied();
    if last.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY) {
        if warned.len() >= 64 {
            warned.clear();
        }
        warned.insert(peer.uid, now);
        tracing::warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            "refusing control connections from a peer that is not allowed (logged once a minute per uid)"
        );
    } else {
        tracing::debug!(
            uid = peer.uid,
            pid = peer.pid,
            "refusing a control connection"
        );
    }
}

/// One connection, HTTP/1.1 with keep-alive, until the client leaves, a timeout, or shutdown.
async fn serve_connection(
    stream: UnixStream,
    service: axum::Router,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    _slots: (OwnedSemaphorePermit, UidSlot),
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        // Headers of a control request are small; this bounds a connection's read buffer.
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and clients that hang up mid-request end up here; not the daemon's problem.
        tracing::debug!(error = %e, "control connection ended with an error");
    }
}

/// How often a refused uid is logged at warn level.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Refusals being answered at once, beyond the connection slots.
const MAX_REFUSALS: usize = 16;

/// How long a refused connection is kept at most: to write the answer and read what the client
/// sent (closing on unread bytes would reset the connection before the client reads the answer).
const REFUSAL_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a connection is refused without being served.
enum Refusal {
    /// Over a connection limit: 503, try again.
    Busy,
    /// The peer (this uid) may not use the socket: 403.
    Forbidden(u32),
}

/// Answers a refused connection and closes it, within [`REFUSAL_TIME`]. The request itself is
/// never parsed: the answer does not depend on it.
async fn refuse(mut stream: UnixStream, why: Refusal, _permit: OwnedSemaphorePermit) {
    let (status, error, retry) = match why {
        Refusal::Busy => (
            "503 Service Unavailable",
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "the control socket is serving too many connections; try again shortly",
            ),
            "retry-after: 1\r\n",
        ),
        Refusal::Forbidden(uid) => ("403 Forbidden", routes::forbidden(uid), ""),
    };
    let body = error.body().to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{retry}connection: close\r\n\r\n{body}",
        body.len()
    );
    let answer_and_drain = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Whatever the client sent, up to EOF (it closes on `connection: close`) or the time.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, answer_and_drain).await;
}

/// The connections each peer uid holds, capped per uid.
#[derive(Clone)]
struct UidSlots {
    max: usize,
    held: Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>>,
}

impl UidSlots {
    fn new(max: usize) -> UidSlots {
        UidSlots {
            max,
            held: Arc::default(),
        }
    }

    /// One more connection for `uid`, or `None` when it holds its share.
    fn take(&self, uid: u32) -> Option<UidSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(uid).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            uid,
            slots: self.clone(),
        })
    }
}

/// One connection of a uid's share; given back when dropped.
struct UidSlot {
    uid: u32,
    slots: UidSlots,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}
