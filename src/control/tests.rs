//! The control API over a real Unix socket: an [`App`] over a temp state dir and card, served by
//! [`server::serve_with`], called with the CLI's own client (or raw bytes where a client would
//! refuse to misbehave).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::{server, ControlError, Limits};
use crate::app::App;
use crate::cli::Client;

struct Harness {
    dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    app: Arc<App>,
    client: Client,
    server: JoinHandle<Result<(), ControlError>>,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(Limits::default()).await
    }

    async fn start_with(limits: Limits) -> Harness {
        Harness::start_allowing(limits, &[]).await
    }

    /// With `control.allowed_uids` set to `uids`.
    async fn start_allowing(limits: Limits, uids: &[u32]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("card");
        std::fs::create_dir_all(root.join("DCIM/100MEDIA")).unwrap();
        // The socket's directory does not exist yet: bind creates it.
        let socket = dir.path().join("run/control.sock");
        let text = format!(
            r#"
[device]
type = "Test Cam"
serial = "SN-TEST-1"
[media]
root = "{root}"
[cloud]
endpoint = "http://127.0.0.1:9/files/"
[cloud.regions]
eu = "http://127.0.0.1:9/eu/"
[control]
socket = "{socket}"
allowed_uids = {uids:?}
[state]
dir = "{state}"
"#,
            root = root.display(),
            socket = socket.display(),
            state = dir.path().join("state").display(),
        );
        let config = crate::config::parse(&text, Path::new("test.toml")).unwrap();
        let store = crate::store::Store::open(&config.state.dir).unwrap();
        let tus = crate::upload::tus::Client::new(&config.cloud).unwrap();
        let listener = server::bind(&config.control).unwrap();
        let app = Arc::new(App::new(config, store, tus).unwrap());
        let server = tokio::spawn(server::serve_with(listener, app.clone(), limits));
        Harness {
            root,
            client: Client::new(&socket),
            socket,
            app,
            server,
            dir,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let a = self.client.call(method, path, body.as_ref()).await.unwrap();
        let v = serde_json::from_slice(&a.body)
            .unwrap_or_else(|_| panic!("{path}: not JSON: {:?}", a.body));
        (a.status, v)
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        v
    }

    fn media(&self, rel: &str, bytes: &[u8]) {
        std::fs::write(self.root.join(rel), bytes).unwrap();
    }

    /// Raw bytes in, the raw answer out (until the server closes or 2 s pass).
    async fn raw(&self, request: &[u8]) -> String {
        let mut s = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn stop(self) {
        self.app.shutdown().cancel();
        tokio::time::timeout(Duration::from_secs(3), self.server)
            .await
            .expect("server stops promptly")
            .unwrap()
            .unwrap();
        assert!(!self.socket.exists(), "socket removed on shutdown");
    }
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {v}"))
}

#[tokio::test]
async fn every_endpoint_happy_path() {
    let h = Harness::start().await;
    let meta = std::fs::metadata(&h.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(
        std::fs::metadata(h.socket.parent().unwrap())
            .unwrap()
            .mode()
            & 0o777,
        0o750
    );

    let s = h.get("/v1/status").await;
    assert_eq!(s["state"], "unpaired");
    assert!(s["queue"]["pending"].is_u64() && s["blocked_by"].is_array());

    assert_eq!(h.get("/v1/health").await, json!({"ok": true}));

    let settings = h.get("/v1/settings").await;
    assert_eq!(settings["auto_upload"], false);
    let (st, v) = h
        .call(
            Method::PATCH,
            "/v1/settings",
            Some(json!({"auto_upload": true, "network": "unmetered"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["auto_upload"].clone(), v["network"].clone()),
        (json!(true), json!("unmetered"))
    );
    assert_eq!(h.get("/v1/settings").await, v);

    assert_eq!(h.get("/v1/account").await["paired"], false);
    let (st, v) = h
        .call(
            Method::PUT,
            "/v1/account",
            Some(json!({"user_id": "u-1", "token": "tok-SECRET-123", "region": "eu"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["paired"], true);
    assert_eq!(v["endpoint"], "http://127.0.0.1:9/eu/");
    let acct = h.get("/v1/account").await;
    assert!(
        !acct.to_string().contains("SECRET"),
        "GET /v1/account never shows the token"
    );

    let (st, v) = h.call(Method::POST, "/v1/pause", None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"paused": true})));
    assert_eq!(h.get("/v1/status").await["state"], "paused");
    let (st, _) = h.call(Method::POST, "/v1/resume", None).await;
    assert_eq!(st, StatusCode::OK);

    let (st, v) = h
        .call(Method::PUT, "/v1/recording", Some(json!({"active": true})))
        .await;
    assert_eq!((st, v), (StatusCode::OK, json!({"active": true})));

    h.media("DCIM/100MEDIA/A.JPG", b"jpeg bytes");
    h.media("DCIM/100MEDIA/B.MP4", b"mp4 bytes");
    let abs = h.root.join("DCIM/100MEDIA/B.MP4").display().to_string();
    let (st, v) = h
        .call(
            Method::POST,
            "/v1/uploads",
            Some(json!({"paths": ["DCIM/100MEDIA/A.JPG", abs]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let accepted = v["accepted"].as_array().unwrap();
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[0]["path"], "DCIM/100MEDIA/A.JPG");
    assert_eq!(accepted[1]["path"], "DCIM/100MEDIA/B.MP4");
    assert_eq!(accepted[0]["outcome"], "queued");
    let a = accepted[0]["id"].as_i64().unwrap();
    let b = accepted[1]["id"].as_i64().unwrap();

    let q = h.get("/v1/queue").await;
    assert_eq!(q["items"].as_array().unwrap().len(), 2);
    let item = &q["items"][0];
    for k in [
        "id",
        "storage_path",
        "kind",
        "size",
        "state",
        "bytes_sent",
        "attempts",
        "last_error",
    ] {
        assert!(item.get(k).is_some(), "queue item lacks {k}: {item}");
    }
    let page = h.get("/v1/queue?state=pending&limit=1").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let next = page["next_after"].as_i64().unwrap();
    let rest = h
        .get(&format!("/v1/queue?state=pending&limit=1&after={next}"))
        .await;
    assert_ne!(rest["items"][0]["id"], page["items"][0]["id"]);

    let (st, v) = h
        .call(Method::DELETE, &format!("/v1/queue/{a}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "cancelled");
    // Cancelling twice is a conflict, not a server error.
    let (st, v) = h
        .call(Method::DELETE, &format!("/v1/queue/{a}"), None)
        .await;
    assert_eq!((st, error_code(&v)), (StatusCode::CONFLICT, "wrong_state"));

    h.app.store().mark_failed(b, "413 from the server").unwrap();
    let (st, v) = h
        .call(Method::POST, &format!("/v1/queue/{b}/retry"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "pending");
    let (st, v) = h.call(Method::POST, "/v1/queue/999/retry", None).await;
    assert_eq!(
        (st, error_code(&v)),
        (StatusCode::NOT_FOUND, "no_such_item")
    );

    assert!(h.get("/v1/history").await["entries"].is_array());
    assert!(h.get("/v1/history?limit=5").await["entries"].is_array());

    let p = h.get("/v1/privacy").await;
    assert_eq!(
        p["fields_sent"],
        json!(["user_id", "device_type", "serial_number", "storage_path"])
    );
    assert_eq!(p["values"]["serial_number"], "SN-TEST-1");
    assert_eq!(p["history_days"], 60);

    let (st, v) = h.call(Method::DELETE, "/v1/account", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["terminated"].is_u64() && v["not_terminated"].is_u64());
    assert_eq!(h.get("/v1/account").await["paired"], false);
    let tree = grep_tree(h.dir.path(), b"tok-SECRET-123");
    assert!(tree.is_empty(), "token bytes left in {tree:?}");

    h.stop().await;
}

/// Files under `dir` that contain `needle`.
fn grep_tree(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            hits.extend(grep_tree(&p, needle));
        } else if ft.is_file() {
            let data = std::fs::read(&p).unwrap_or_default();
            if data.windows(needle.len()).any(|w| w == needle) {
                hits.push(p);
            }
        }
    }
    hits
}

/// Reads an SSE body block by block.
struct SseReader {
    body: hyper::body::Incoming,
    text: String,
}

impl SseReader {
    async fn next_block(&mut self) -> String {
        use http_body_util::BodyExt;
        loop {
            if let Some(end) = self.text.find("\n\n") {
                return self.text.drain(..end + 2).collect();
            }
            let f = tokio::time::timeout(Duration::from_secs(3), self.body.frame())
                .await
                .expect("an event in time")
                .unwrap()
                .unwrap();
            if let Some(d) = f.data_ref() {
                self.text.push_str(&String::from_utf8_lossy(d));
            }
        }
    }
}

#[tokio::test]
async fn events_stream_state_then_changes() {
    let h = Harness::start().await;
    let resp = h
        .client
        .send(Method::GET, "/v1/events", None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut reader = SseReader {
        body: resp.into_body(),
        text: String::new(),
    };
    let first = reader.next_block().await;
    assert!(first.starts_with("event: state\ndata: {"), "{first}");
    assert!(first.contains("\"state\":\"unpaired\""), "{first}");

    h.app
        .pair(crate::credentials::Pairing {
            user_id: crate::credentials::UserId::parse("u").unwrap(),
            token: crate::secret::Secret::new("t"),
            region: None,
        })
        .await
        .unwrap();
    let (st, _) = h.call(Method::POST, "/v1/pause", None).await;
    assert_eq!(st, StatusCode::OK);
    let mut seen = String::new();
    while !seen.contains("\"state\":\"paused\"") {
        seen = reader.next_block().await;
    }
    assert!(seen.starts_with("event: state\n"), "{seen}");
    // An open event stream must not hold up shutdown.
    h.stop().await;
}

/// (method, path, content type, body, status, error code, text the message must contain)
type BadCase = (
    &'static str,
    &'static str,
    Option<&'static str>,
    String,
    u16,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn bad_input_is_refused_precisely_and_the_daemon_carries_on() {
    let h = Harness::start().await;
    h.media("DCIM/100MEDIA/A.JPG", b"jpeg");
    let (st, _) = h
        .call(
            Method::POST,
            "/v1/uploads",
            Some(json!({"paths": ["DCIM/100MEDIA/A.JPG"]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let queue_before = h.get("/v1/queue").await;

    std::os::unix::fs::symlink("/etc/passwd", h.root.join("DCIM/100MEDIA/EVIL.JPG")).unwrap();
    let big = "x".repeat(70 * 1024);
    let cases: Vec<BadCase> = vec![
        (
            "PATCH",
            "/v1/settings",
            Some("application/json"),
            "{\"auto_upload\": tru".into(),
            400,
            "bad_json",
            "not valid JSON",
        ),
        (
            "PATCH",
            "/v1/settings",
            Some("application/json"),
            "{\"auto_upload\": \"yes\"}".into(),
            400,
            "bad_value",
            "`auto_upload`",
        ),
        (
            "PATCH",
            "/v1/settings",
            Some("application/json"),
            "{\"network\": \"5g\"}".into(),
            400,
            "bad_value",
            "`network`",
        ),
        (
            "PATCH",
            "/v1/settings",
            Some("application/json"),
            "{\"auto_uplaod\": true}".into(),
            400,
            "unknown_field",
            "auto_uplaod",
        ),
        (
            "PATCH",
            "/v1/settings",
            Some("application/json"),
            "[]".into(),
            400,
            "bad_value",
            "JSON object",
        ),
        (
            "PATCH",
            "/v1/settings",
            Some("text/plain"),
            "{}".into(),
            415,
            "unsupported_media_type",
            "Content-Type",
        ),
        (
            "PATCH",
            "/v1/settings",
            None,
            "{}".into(),
            415,
            "unsupported_media_type",
            "Content-Type",
        ),
        (
            "PATCH",
            "/v1/settings",
            Some("application/json"),
            format!("{{\"x\": \"{big}\"}}"),
            413,
            "body_too_large",
            "64 KiB",
        ),
        (
            "POST",
            "/v1/pause",
            Some("application/json"),
            big.clone(),
            413,
            "body_too_large",
            "64 KiB",
        ),
        (
            "PUT",
            "/v1/account",
            Some("application/json"),
            "{\"user_id\": \"u\"}".into(),
            400,
            "missing_field",
            "token",
        ),
        (
            "PUT",
            "/v1/account",
            Some("application/json"),
            "{\"user_id\": \"u\", \"token\": \"t\", \"extra\": 1}".into(),
            400,
            "unknown_field",
            "extra",
        ),
        (
            "PUT",
            "/v1/account",
            Some("application/json"),
            "{\"user_id\": \"u\", \"token\": \"t\", \"region\": \"mars\"}".into(),
            400,
            "unknown_region",
            "mars",
        ),
        (
            "PUT",
            "/v1/recording",
            Some("application/json"),
            "{\"active\": 1}".into(),
            400,
            "bad_value",
            "`active`",
        ),
        (
            "POST",
            "/v1/uploads",
            Some("application/json"),
            "{\"paths\": []}".into(),
            400,
            "bad_paths",
            "empty",
        ),
        (
            "POST",
            "/v1/uploads",
            Some("application/json"),
            "{\"paths\": [\"../etc/passwd\"]}".into(),
            400,
            "bad_path",
            "../etc/passwd",
        ),
        (
            "POST",
            "/v1/uploads",
            Some("application/json"),
            "{\"paths\": [\"DCIM/../../x.JPG\"]}".into(),
            400,
            "bad_path",
            "DCIM/../../x.JPG",
        ),
        (
            "POST",
            "/v1/uploads",
            Some("application/json"),
            "{\"paths\": [\"/etc/passwd\"]}".into(),
            400,
            "bad_path",
            "/etc/passwd",
        ),
        (
            "POST",
            "/v1/uploads",
            Some("application/json"),
            "{\"paths\": [\"DCIM/100MEDIA/EVIL.JPG\"]}".into(),
            400,
            "bad_path",
            "DCIM/100MEDIA/EVIL.JPG",
        ),
        (
            "POST",
            "/v1/uploads",
            Some("application/json"),
            "{\"paths\": [\"DCIM/100MEDIA/NONE.JPG\"]}".into(),
            400,
            "bad_path",
            "NONE.JPG",
        ),
        (
            "POST",
            "/v1/uploads",
            Some("application/json"),
            "{\"paths\": [\"DCIM\"]}".into(),
            400,
            "bad_path",
            "DCIM",
        ),
        (
            "POST",
            "/v1/uploads",
            Some("application/json"),
            "{\"paths\": \"A.JPG\"}".into(),
            400,
            "bad_value",
            "`paths`",
        ),
        (
            "GET",
            "/v1/queue?state=lost",
            None,
            String::new(),
            400,
            "bad_parameter",
            "`state`",
        ),
        (
            "GET",
            "/v1/queue?limit=0",
            None,
            String::new(),
            400,
            "bad_parameter",
            "`limit`",
        ),
        (
            "GET",
            "/v1/queue?limit=1001",
            None,
            String::new(),
            400,
            "bad_parameter",
            "`limit`",
        ),
        (
            "GET",
            "/v1/queue?after=-1",
            None,
            String::new(),
            400,
            "bad_parameter",
            "`after`",
        ),
        (
            "GET",
            "/v1/queue?colour=red",
            None,
            String::new(),
            400,
            "unknown_parameter",
            "colour",
        ),
        (
            "GET",
            "/v1/history?limit=x",
            None,
            String::new(),
            400,
            "bad_parameter",
            "`limit`",
        ),
        (
            "POST",
            "/v1/queue/abc/retry",
            None,
            String::new(),
            400,
            "bad_id",
            "abc",
        ),
        (
            "DELETE",
            "/v1/queue/-3",
            None,
            String::new(),
            400,
            "bad_id",
            "-3",
        ),
        (
            "DELETE",
            "/v1/queue/99999999999999999999",
            None,
            String::new(),
            400,
            "bad_id",
            "9999",
        ),
        (
            "GET",
            "/v1/nope",
            None,
            String::new(),
            404,
            "not_found",
            "/v1/nope",
        ),
        ("GET", "/", None, String::new(), 404, "not_found", "/"),
        (
            "GET",
            "/v1/queue/1",
            None,
            String::new(),
            405,
            "method_not_allowed",
            "DELETE",
        ),
        (
            "DELETE",
            "/v1/status",
            None,
            String::new(),
            405,
            "method_not_allowed",
            "GET",
        ),
        (
            "POST",
            "/v1/settings",
            None,
            String::new(),
            405,
            "method_not_allowed",
            "PATCH",
        ),
    ];
    for (method, path, ctype, body, status, code, says) in cases {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        if let Some(c) = ctype {
            req.push_str(&format!("Content-Type: {c}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        let answer = h.raw(req.as_bytes()).await;
        let (head, json_body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let what = format!("{method} {path} {ctype:?}");
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: want {status}, got {head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{what}: {head}"
        );
        let v: Value =
            serde_json::from_str(json_body).unwrap_or_else(|_| panic!("{what}: {json_body}"));
        assert_eq!(error_code(&v), code, "{what}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(says),
            "{what}: `{message}` should say `{says}`"
        );
        // Alive, and the queue untouched.
        assert_eq!(h.get("/v1/queue").await, queue_before, "after {what}");
    }
    h.stop().await;
}

#[tokio::test]
async fn a_chunked_body_over_the_cap_gets_413() {
    let h = Harness::start().await;
    let chunk = "x".repeat(8 * 1024);
    let mut req = String::from(
        "PATCH /v1/settings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..10 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let answer = h.raw(req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    h.get("/v1/status").await;
    h.stop().await;
}

#[tokio::test]
async fn over_the_connection_limit_gets_503_then_recovers() {
    let h = Harness::start_with(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::UnixStream::connect(&h.socket).await.unwrap());
        // Let the server accept it and take a slot.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = h.raw(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.get("/v1/status").await;
    h.stop().await;
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let h = Harness::start_with(Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    // Half a header, then silence: closed after the header timeout.
    let mut s = tokio::net::UnixStream::connect(&h.socket).await.unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let t = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    assert!(t.is_ok(), "a slow header must not hold the connection");

    // A kept-alive connection that goes quiet is closed too.
    let mut s = tokio::net::UnixStream::connect(&h.socket).await.unwrap();
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let t = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    assert!(t.is_ok(), "an idle keep-alive connection must be closed");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200 "));
    h.stop().await;
}

/// Runs `f` on a fresh thread whose own credentials are nobody's (65534). The raw syscalls
/// change only that thread (glibc's wrappers would change the whole test process), and the
/// thread ends with `f`. Needs root.
fn as_nobody<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on this thread's credentials.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
        }
        f()
    })
}

/// Whether the test may connect as another uid (it runs as root); says so when it may not.
fn can_become_nobody() -> bool {
    let root = super::peercred::effective_uid() == 0;
    if !root {
        eprintln!("skipped: needs root to connect as another uid");
    }
    root
}

/// Opens the file-system fence on purpose: the credential check must hold on its own.
fn open_the_socket_to_everyone(h: &Harness) {
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        h.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&h.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// One request over a fresh connection, as nobody; the raw answer.
async fn request_as_nobody(socket: &Path) -> String {
    let socket = socket.to_path_buf();
    let thread = as_nobody(move || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_peer_that_is_not_allowed_gets_403() {
    // The credential decision itself is covered by the pure tests in `peercred`.
    if !can_become_nobody() {
        return;
    }
    let h = Harness::start().await;
    open_the_socket_to_everyone(&h);
    let answer = request_as_nobody(&h.socket).await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(answer.contains("\"code\":\"forbidden\""), "{answer}");
    assert!(answer.contains("uid 65534"), "{answer}");
    h.get("/v1/status").await;
    h.stop().await;
}

/// Issue 22 item 6: a local user who is not allowed opens more connections than the daemon
/// serves at once and keeps them open. Each is answered 403 and closed at once, and the app
/// is served meanwhile.
#[tokio::test]
async fn refused_peers_are_closed_at_once_and_never_lock_the_app_out() {
    if !can_become_nobody() {
        return;
    }
    let h = Harness::start().await;
    open_the_socket_to_everyone(&h);
    let socket = h.socket.clone();
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let (served_tx, served_rx) = tokio::sync::oneshot::channel::<()>();
    let stranger = as_nobody(move || {
        use std::io::Read;
        let held: Vec<_> = (0..Limits::default().max_connections + 8)
            .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
            .collect();
        opened_tx.send(()).unwrap();
        served_rx.blocking_recv().unwrap();
        // Each connection must be closed by the daemon by now: reading reaches the end.
        held.into_iter()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut out = Vec::new();
                s.read_to_end(&mut out)
                    .map(|_| String::from_utf8_lossy(&out).into_owned())
                    .map_err(|e| e.to_string())
            })
            .collect::<Vec<_>>()
    });
    opened_rx.await.unwrap();
    // Connected after all of the stranger's, so accepted after them.
    let (status, body) = h.call(Method::GET, "/v1/status", None).await;
    assert_eq!(status, StatusCode::OK, "the app was locked out: {body}");
    served_tx.send(()).unwrap();
    let answers = tokio::task::spawn_blocking(move || stranger.join().unwrap())
        .await
        .unwrap();
    for a in &answers {
        let a = a.as_ref().expect("a refused connection was kept open");
        // Answered 403, or (past the refusals answered at once) just closed.
        assert!(a.is_empty() || a.starts_with("HTTP/1.1 403 "), "{a}");
    }
    assert!(answers
        .iter()
        .any(|a| a.as_ref().unwrap().starts_with("HTTP/1.1 403 ")));
    h.stop().await;
}

/// Issue 22 item 6: one allowed user holding every connection it can does not lock another
/// allowed user out: each uid has its share.
#[tokio::test]
async fn one_peer_cannot_hold_every_connection() {
    if !can_become_nobody() {
        return;
    }
    let h = Harness::start_allowing(Limits::default(), &[65534]).await;
    open_the_socket_to_everyone(&h);
    // This process (the daemon's own user) opens as many connections as the daemon serves.
    let mut held = Vec::new();
    for _ in 0..Limits::default().max_connections {
        held.push(tokio::net::UnixStream::connect(&h.socket).await.unwrap());
    }
    let answer = request_as_nobody(&h.socket).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // Over its share, the greedy user was told to wait (at once); its share is still open.
    let reads = held.iter_mut().map(|s| async move {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    let answers = futures_util::future::join_all(reads).await;
    let busy = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503 ") && a.contains("too_many_connections"))
        .count();
    let limits = Limits::default();
    assert_eq!(
        busy,
        limits.max_connections - limits.max_connections_per_uid,
        "{answers:?}"
    );
    drop(held);
    h.stop().await;
}

#[tokio::test]
async fn bind_replaces_stale_sockets_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let control = crate::config::Control {
        socket: path.clone(),
        allowed_uids: vec![],
        allowed_gids: vec![],
    };

    // A socket file left by a crashed daemon: nobody listens, so it is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let first = server::bind(&control).unwrap();
    assert_eq!(first.path.as_path(), path);

    // A live one is refused, and left alone.
    match server::bind(&control) {
        Err(ControlError::InUse(p)) => assert_eq!(p, path),
        other => panic!("want InUse, got {other:?}"),
    }
    assert!(path.exists());
    let message = server::bind(&control).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");

    // Dropping the listener removes its socket.
    drop(first);
    assert!(!path.exists());

    // Something that is not a socket is never deleted.
    std::fs::write(&path, b"precious").unwrap();
    match server::bind(&control) {
        Err(ControlError::NotASocket(p)) => assert_eq!(p, path),
        other => panic!("want NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
    assert!(matches!(
        server::bind(&control),
        Err(ControlError::NotASocket(_))
    ));
}

#[tokio::test]
async fn a_replaced_socket_is_not_removed_by_the_old_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let control = crate::config::Control {
        socket: path.clone(),
        allowed_uids: vec![],
        allowed_gids: vec![],
    };
    let old = server::bind(&control).unwrap();
    // Someone else took the path over (e.g. removed it by hand and started another daemon).
    std::fs::remove_file(&path).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(old);
    assert!(
        path.exists(),
        "the newer socket must survive the old listener's drop"
    );
    drop(other);
}

/// Issue 22 item 10: every setting the API takes is set with `cambackup settings KEY VALUE`,
/// and the daemon then holds the new value. The settings are walked from the settings type,
/// each given a value other than its default where its type allows (a bool flipped, a number,
/// an empty list; a word is set to itself).
#[tokio::test]
async fn every_setting_is_settable_from_the_cli() {
    use crate::cli::{run_client, Cli};
    use clap::Parser;
    let h = Harness::start().await;
    let sock = h.socket.display().to_string();
    let names = crate::cli::setting_names();
    let before = serde_json::to_value(h.app.settings()).unwrap();
    assert_eq!(
        before.as_object().unwrap().len(),
        names.len(),
        "the API's settings and the CLI's differ"
    );
    for &name in names {
        let (arg, want) = match &before[name] {
            Value::Bool(b) => ((!b).to_string(), json!(!b)),
            Value::Number(_) => ("5".to_string(), json!(5)),
            Value::Array(_) => (String::new(), json!([])),
            Value::String(w) => (w.clone(), json!(w)),
            other => panic!("{name}: a setting of an unexpected type: {other}"),
        };
        let cli =
            Cli::try_parse_from(["cambackup", "--socket", &sock, "settings", name, &arg]).unwrap();
        assert_eq!(
            run_client(&cli).await,
            0,
            "cambackup settings {name} {arg:?}"
        );
        let now = serde_json::to_value(h.app.settings()).unwrap();
        assert_eq!(now[name], want, "{name} after `settings {name} {arg:?}`");
        let cli = Cli::try_parse_from(["cambackup", "--socket", &sock, "settings", name]).unwrap();
        assert_eq!(run_client(&cli).await, 0, "cambackup settings {name}");
    }
    h.stop().await;
}

/// The CLI, end to end against the served API (in-process, via `run_client`).
#[tokio::test]
async fn cli_commands_against_the_socket() {
    use crate::cli::{run_client, Cli};
    use clap::Parser;
    let h = Harness::start().await;
    let sock = h.socket.display().to_string();
    let run = |args: &[&str]| {
        let mut argv = vec!["cambackup", "--socket", &sock];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    };
    assert_eq!(run_client(&run(&["status"])).await, 0);
    assert_eq!(run_client(&run(&["status", "--json"])).await, 0);
    assert_eq!(
        run_client(&run(&["settings", "auto_upload", "on"])).await,
        0
    );
    assert!(h.app.settings().auto_upload);
    assert_eq!(run_client(&run(&["settings", "network", "5g"])).await, 2);
    assert_eq!(run_client(&run(&["settings", "colour"])).await, 2);
    assert_eq!(
        run_client(&run(&["settings", "data_types", "photo"])).await,
        0
    );
    assert_eq!(h.app.settings().data_types, vec![crate::media::Kind::Photo]);

    let token = h.dir.path().join("token");
    std::fs::write(&token, "tok-xyz\n").unwrap();
    let t = token.display().to_string();
    assert_eq!(
        run_client(&run(&["pair", "--user-id", "u1", "--token-file", &t])).await,
        0
    );
    assert_eq!(h.app.account().user_id.as_deref(), Some("u1"));
    assert_eq!(
        run_client(&run(&[
            "pair",
            "--user-id",
            "u1",
            "--token-file",
            &t,
            "--region",
            "mars"
        ]))
        .await,
        2,
        "a 400 from the daemon exits 2"
    );

    h.media("DCIM/100MEDIA/A.JPG", b"jpeg");
    assert_eq!(
        run_client(&run(&["upload", "DCIM/100MEDIA/A.JPG"])).await,
        0
    );
    assert_eq!(run_client(&run(&["upload", "../../etc/passwd"])).await, 2);
    assert_eq!(run_client(&run(&["queue"])).await, 0);
    assert_eq!(
        run_client(&run(&["queue", "--state", "pending", "--json"])).await,
        0
    );
    assert_eq!(run_client(&run(&["cancel", "1"])).await, 0);
    assert_eq!(
        run_client(&run(&["retry", "1"])).await,
        1,
        "409: not failed"
    );
    assert_eq!(run_client(&run(&["pause"])).await, 0);
    assert_eq!(run_client(&run(&["resume"])).await, 0);
    assert_eq!(run_client(&run(&["history"])).await, 0);
    assert_eq!(run_client(&run(&["privacy"])).await, 0);
    assert_eq!(run_client(&run(&["unpair"])).await, 0);
    assert!(!h.app.account().paired);

    let gone = h.dir.path().join("nobody.sock").display().to_string();
    let cli = Cli::try_parse_from(["cambackup", "status", "--socket", &gone]).unwrap();
    assert_eq!(run_client(&cli).await, 1, "no daemon: exit 1");
    h.stop().await;
}

/// docs/INTERFACE.md names the commands, states, blocks and attention codes the code has, and
/// docs/openapi.yaml lists the same attention codes: the page a reader of the repo opens first
/// cannot drift from the product.
#[test]
fn interface_doc_names_what_the_code_has() {
    use clap::CommandFactory;
    let doc = include_str!("../../docs/INTERFACE.md");
    // The backticked names after `label` up to the end of its paragraph.
    let names_after = |label: &str| -> Vec<String> {
        let at = doc
            .find(label)
            .unwrap_or_else(|| panic!("`{label}` not in INTERFACE.md"));
        let rest = &doc[at..];
        let para = &rest[..rest.find("\n\n").unwrap_or(rest.len())];
        let list = &para[para
            .find("):")
            .map(|i| i + 2)
            .or(para.find(':').map(|i| i + 1))
            .unwrap()..];
        let mut v: Vec<String> = list
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        names_after("States:"),
        sorted(
            crate::events::DaemonState::ALL
                .iter()
                .map(|s| s.as_str().to_string())
                .collect()
        )
    );
    assert_eq!(
        names_after("Blocks (`blocked_by`, `manual_blocked_by`):"),
        sorted(
            crate::gate::Block::ALL
                .iter()
                .map(|b| b.as_str().to_string())
                .collect()
        )
    );
    let codes = sorted(
        crate::app::ATTENTION_CODES
            .iter()
            .map(|c| c.to_string())
            .collect(),
    );
    assert_eq!(names_after("Attention (`attention`:"), codes);
    let spec: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(include_str!("../../docs/openapi.yaml")).unwrap();
    let in_spec: Vec<String> = spec["components"]["schemas"]["Attention"]["properties"]["code"]
        ["enum"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(sorted(in_spec), codes);
    // A file's reasons: the app's own, the walk's, and (in the spec) the blocks a pending
    // file may wait on.
    let file_codes: Vec<String> = crate::app::REASON_CODES
        .iter()
        .chain(crate::app::NOT_QUEUED_CODES.iter())
        .map(|c| c.to_string())
        .chain(
            crate::scan::LeftOut::ALL
                .iter()
                .map(|l| l.as_str().to_string()),
        )
        .collect();
    assert_eq!(names_after("File reasons ("), sorted(file_codes.clone()));
    let in_spec: Vec<String> = spec["components"]["schemas"]["FileReason"]["properties"]["code"]
        ["enum"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let blocks = crate::gate::Block::ALL
        .iter()
        .map(|b| b.as_str().to_string());
    assert_eq!(
        sorted(in_spec),
        sorted(file_codes.into_iter().chain(blocks).collect())
    );
    // Every command of the CLI has its row in the command table, and no row names another.
    let cli = crate::cli::Cli::command();
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        assert!(
            doc.contains(&format!("`cambackup {name}")),
            "`cambackup {name}` is not in INTERFACE.md section 1"
        );
    }
    for row in doc.lines().filter(|l| l.starts_with("| `cambackup ")) {
        for cmd in row.split("`cambackup ").skip(1) {
            let name: String = cmd
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            assert!(
                cli.find_subcommand(&name).is_some(),
                "INTERFACE.md names `cambackup {name}`, which does not exist"
            );
        }
    }
}

/// Every `attention` code is reachable and shows in `GET /v1/status` with a sentence, and
/// goes away when what caused it is gone (the end-to-end suite reaches `state_dir_full` and
/// `clock_not_set` for real; here the daemon's own methods are driven as its loops drive them).
#[tokio::test]
async fn every_attention_code_shows_in_status_and_goes_away() {
    use crate::app::AccountStatus;
    let h = Harness::start().await;
    let codes = |v: &Value| -> Vec<String> {
        v["attention"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                assert!(!a["message"].as_str().unwrap().is_empty(), "{a}");
                a["code"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let (_, s) = h.call(Method::GET, "/v1/status", None).await;
    assert!(codes(&s).is_empty(), "{s:#}");

    h.app
        .pair(crate::credentials::Pairing {
            user_id: crate::credentials::UserId::parse("u").unwrap(),
            token: crate::secret::Secret::new("t"),
            region: None,
        })
        .await
        .unwrap();
    h.app
        .set_account_status(AccountStatus::Unauthorized("401".into()));
    h.app.scanned(&crate::scan::Report {
        unreadable: 2,
        ..Default::default()
    });
    std::fs::write(h.root.join("DCIM/100MEDIA/A.JPG"), b"x").unwrap();
    h.app.upload(&["DCIM/100MEDIA/A.JPG".to_string()]).unwrap();
    let id = h.app.store().list(None, 1, 0).unwrap()[0].id;
    h.app.store().mark_failed(id, "413: too large").unwrap();
    let (_, s) = h.call(Method::GET, "/v1/status", None).await;
    let got = codes(&s);
    for want in ["unauthorized", "unreadable_files", "items_failed"] {
        assert!(got.iter().any(|c| c == want), "{want} missing: {s:#}");
    }
    // One of each: the messages say so in the singular.
    let message = |s: &Value, code: &str| {
        s["attention"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["code"] == code)
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(message(&s, "items_failed").starts_with("1 file could not be uploaded and waits "));
    assert!(message(&s, "unreadable_files").starts_with("2 entries on the card "));
    h.app.scanned(&crate::scan::Report {
        unreadable: 1,
        ..Default::default()
    });
    let (_, s) = h.call(Method::GET, "/v1/status", None).await;
    assert!(
        message(&s, "unreadable_files").starts_with("1 entry on the card could not be read "),
        "{s:#}"
    );

    // The card pulled: its absence is the one thing to say, not entries it could not read.
    h.app.set_media_available(false);
    let (_, s) = h.call(Method::GET, "/v1/status", None).await;
    let got = codes(&s);
    assert!(got.iter().any(|c| c == "media_unavailable"), "{s:#}");
    assert!(!got.iter().any(|c| c == "unreadable_files"), "{s:#}");

    h.app
        .set_account_status(AccountStatus::SubscriptionInactive("402".into()));
    let (_, s) = h.call(Method::GET, "/v1/status", None).await;
    assert!(
        codes(&s).iter().any(|c| c == "subscription_inactive"),
        "{s:#}"
    );

    // Gone when the cause is.
    h.app.set_account_status(AccountStatus::Ok);
    h.app.set_media_available(true);
    h.app.scanned(&crate::scan::Report::default());
    h.app.store().retry(id).unwrap();
    let (_, s) = h.call(Method::GET, "/v1/status", None).await;
    let left = codes(&s);
    for gone in [
        "unauthorized",
        "subscription_inactive",
        "media_unavailable",
        "unreadable_files",
        "items_failed",
    ] {
        assert!(!left.iter().any(|c| c == gone), "{gone} stayed: {s:#}");
    }

    // Freeing space: the card stayed low because files could not be verified, then it did not.
    let mut stuck = crate::app::PassReport {
        need_bytes: 10,
        kept_unverified: 3,
        ..Default::default()
    };
    stuck.kept.insert("no_checksum", 3);
    h.app.set_last_pass(stuck);
    let (_, s) = h.call(Method::GET, "/v1/status", None).await;
    assert!(
        codes(&s).iter().any(|c| c == "free_space_unverified"),
        "{s:#}"
    );
    assert!(s["attention"].to_string().contains("checksums"), "{s:#}");
    assert!(message(&s, "free_space_unverified").contains(" 3 backed-up files are kept "));
    // The other cause, for one file; neither message has a run of spaces in it (a string
    // continuation without its `\` keeps the next line's indentation).
    let one = crate::app::PassReport {
        need_bytes: 10,
        kept_unverified: 1,
        ..Default::default()
    };
    h.app.set_last_pass(one);
    let (_, s2) = h.call(Method::GET, "/v1/status", None).await;
    let m = message(&s2, "free_space_unverified");
    assert!(m.contains(" 1 backed-up file is kept "), "{m}");
    assert!(m.contains("before freeing space was set up"), "{m}");
    for m in [m, message(&s, "free_space_unverified")] {
        assert!(!m.contains("  "), "a run of spaces: {m}");
    }
    h.app.set_last_pass(crate::app::PassReport::default());
    let (_, s) = h.call(Method::GET, "/v1/status", None).await;
    assert!(codes(&s).is_empty(), "{s:#}");
}
