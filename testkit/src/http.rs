//! A minimal HTTP/1.1 client over any byte stream (TCP to the receiver, the daemon's Unix
//! socket). One connection per request keeps it simple and makes each test request independent
//! of the others, like `curl` would.

use std::io;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// A whole HTTP response, body collected.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code, e.g. 204.
    pub status: u16,
    /// Headers in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Builds a request for [`send`] from an absolute `uri`; for Unix sockets pass
/// `http://localhost/v1/...`. Like curl, the request line carries only the path and query
/// (origin form) and the authority goes into `Host`.
pub fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let parsed: hyper::Uri = uri.parse().expect("valid URI");
    let target = parsed.path_and_query().map_or("/", |pq| pq.as_str());
    let mut builder = Request::builder().method(method).uri(target);
    if let Some(authority) = parsed.authority() {
        builder = builder.header("host", authority.as_str());
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(body.into())).expect("valid request")
}

/// Sends one request over `stream` and collects the response.
pub async fn send<S>(stream: S, req: Request<Full<Bytes>>) -> io::Result<RawResponse>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        // The connection ends with the request; its error (if any) surfaces via send_request.
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(io::Error::other)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes()
        .to_vec();
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}
