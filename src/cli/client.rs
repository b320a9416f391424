//! A minimal HTTP/1.1 client of the control socket: one connection per call, like `curl
//! --unix-socket`. The CLI is a thin client of the same API the app uses.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon: the socket is missing or nobody listens on it.
    #[error("cannot reach the cambackup daemon at {socket}: {source} (is it running?)")]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The socket's file permissions keep this user out.
    #[error(
        "cannot connect to the cambackup daemon at {socket}: {source} (run as the daemon's user \
         or root, or as a member of the socket's group)"
    )]
    Denied {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// Anything else on the way: the connection broke, or the answer was not HTTP.
    #[error("talking to the cambackup daemon at {socket}: {what}")]
    Protocol { socket: PathBuf, what: String },
}

/// An answer: status and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// The control socket's client.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    /// Sends one request (with a JSON body if given) and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ClientError> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Answer { status, body })
    }

    /// Sends one request and returns the answer with its body unread (for event streams).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            let socket = self.socket.clone();
            match source.kind() {
                std::io::ErrorKind::PermissionDenied => ClientError::Denied { socket, source },
                _ => ClientError::Unreachable { socket, source },
            }
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        // The connection task ends when the answer is read or dropped.
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(
                hyper::header::USER_AGENT,
                concat!("cambackup-cli/", env!("CARGO_PKG_VERSION")),
            );
        let bytes = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| self.protocol(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.protocol(e.to_string()))
    }

    fn protocol(&self, what: String) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            what,
        }
    }
}

/// The `{"error": {"code", "message"}}` of an error answer, if it has that shape.
pub fn error_of(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    Some((
        e.get("code")?.as_str()?.to_string(),
        e.get("message")?.as_str()?.to_string(),
    ))
}
