//! The control API (INTERFACE.md section 5): HTTP/1.1 + JSON over a Unix socket, for the app, the
//! camera firmware and the CLI.
//!
//! Code map:
//! - [`server`] owns the socket: safe creation (stale files replaced, live daemons and
//!   non-sockets refused), mode 0660, the accept loop with its connection limits (overall and
//!   per uid) and timeouts, graceful shutdown, removal of the socket file. A refused peer is
//!   answered outside the connection slots (it never takes one) and closed once it hangs up,
//!   within 1 s; past 16 refusals held so, a refused peer is closed without an answer.
//! - [`peercred`] decides from a peer's SO_PEERCRED credentials whether it may talk to us.
//! - [`routes`] is the route table and one small handler per endpoint, each a thin call into
//!   [`crate::app::App`].
//! - `extract` is the edge: every request body, query and path parameter is parsed into a typed
//!   value there and refused with a precise 4xx; handlers never see raw input.
//! - `sse` turns the app's event broadcast into Server-Sent Events.
//!
//! Security posture: the socket file is 0660 (owner and group may connect), and every connection
//! is checked again by its kernel-reported credentials, so a permissive umask or directory mode
//! cannot let a stranger in. Nothing here logs request bodies: `PUT /v1/account` carries a token.
//! Bad input never yields a 5xx: 5xx means the daemon itself failed (e.g. the database).

pub(crate) mod extract;
pub mod peercred;
pub mod routes;
pub mod server;
mod sse;
pub mod views;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong setting up or running the control socket. Each variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process answers on the socket: most likely a second daemon.
    #[error(
        "another process (a running cambackup daemon?) is listening on the control socket {0}; \
         stop it first, or set a different control.socket"
    )]
    InUse(PathBuf),
    /// Something that is not a socket sits where the socket should be; we never delete it.
    #[error(
        "{0} exists and is not a Unix socket; refusing to replace it (remove it by hand, or set \
         a different control.socket)"
    )]
    NotASocket(PathBuf),
    /// Any I/O failure, with what we were doing and on which path.
    #[error("control socket {path}: cannot {what}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The server's limits, so one misbehaving client cannot exhaust the daemon. Tests shrink them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Connections one peer uid may hold at once, so that no single user (a runaway script,
    /// an app with a leak) can take every slot from the others; more are answered 503.
    pub max_connections_per_uid: usize,
    /// A client must send a request's whole header within this time; it also bounds how long an
    /// idle keep-alive connection is kept (hyper restarts it when it waits for the next request).
    pub header_read_timeout: Duration,
    /// A request body must arrive within this time.
    pub body_read_timeout: Duration,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: usize,
    /// How long shutdown waits for open connections (event streams end at once) to finish.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A camera has one app and one firmware; a few dozen covers several event
            // subscribers plus CLI calls with room to spare.
            max_connections: 32,
            // Half: whoever holds its share, the others still have as many.
            max_connections_per_uid: 16,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(5),
        }
    }
}
