//! The scaffolding every end-to-end test shares: a camera, a tus receiver and the daemon.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use testkit::camera::FakeCamera;
use testkit::daemon::Daemon;
use testkit::tus::Receiver;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cambackup"))
}

/// A camera, a receiver and a running daemon.
pub struct Rig {
    pub cam: FakeCamera,
    pub rx: Receiver,
    pub daemon: Daemon,
}

/// The token the receiver expects and the rig pairs with.
pub const TOKEN: &str = "test-token-7f3a";

impl Rig {
    /// Starts the receiver and the daemon on `cam` (already configured through `cam.with`).
    pub async fn start(cam: FakeCamera) -> Rig {
        let rx = Receiver::builder().token(TOKEN).start().await;
        Rig::start_with(cam, rx).await
    }

    /// Like `start`, with a receiver built by the test.
    pub async fn start_with(cam: FakeCamera, rx: Receiver) -> Rig {
        let config = cam.write_config(&rx.url());
        let daemon = Daemon::start(&bin(), &config).await;
        Rig { cam, rx, daemon }
    }

    /// Pairs with the receiver's token.
    pub async fn pair(&self) {
        let (code, body) = self
            .daemon
            .api(
                "PUT",
                "/v1/account",
                Some(json!({"user_id": "user-42", "token": TOKEN})),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }

    /// Switches consent on (or off).
    pub async fn consent(&self, on: bool) {
        let (code, body) = self
            .daemon
            .api("PATCH", "/v1/settings", Some(json!({"auto_upload": on})))
            .await;
        assert_eq!(code, 200, "{body}");
    }

    /// Pairs and switches consent on.
    pub async fn go(&self) {
        self.pair().await;
        self.consent(true).await;
    }

    /// `GET /v1/queue?state=...` items.
    pub async fn items(&self, state: Option<&str>) -> Vec<Value> {
        let path = match state {
            Some(s) => format!("/v1/queue?state={s}&limit=1000"),
            None => "/v1/queue?limit=1000".to_string(),
        };
        let (code, body) = self.daemon.api("GET", &path, None).await;
        assert_eq!(code, 200, "{body}");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Storage paths of the items in `state`, sorted.
    pub async fn paths(&self, state: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .items(Some(state))
            .await
            .iter()
            .map(|i| i["storage_path"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    /// Waits until `n` uploads completed on the receiver, then checks each is byte-identical
    /// with the card.
    pub async fn expect_uploaded(&self, rels: &[&str], timeout: Duration) {
        self.rx.wait_for_completed(rels.len(), timeout).await;
        for rel in rels {
            assert!(
                self.rx.file_matches(rel, &self.cam.media_path(rel)),
                "{rel} not byte-identical on the server\n{}",
                self.rx.request_summary()
            );
        }
    }

    /// Asks the daemon for its status.
    pub async fn status(&self) -> Value {
        let (code, body) = self.daemon.api("GET", "/v1/status", None).await;
        assert_eq!(code, 200, "{body}");
        body
    }
}

/// Polls `f` until it returns true (every 50 ms), panicking with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens the daemon's database read-only, the way a user with `sqlite3` would look.
pub fn db(state_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        state_dir.join("cambackup.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the daemon's database")
}
