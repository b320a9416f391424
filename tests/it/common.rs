//! The scaffolding every end-to-end test shares: a camera, a tus receiver and the daemon.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::camera::FakeCamera;
use testkit::daemon::Daemon;
use testkit::tus::{Fault, Receiver};

/// The binary under test: cargo's build, or `CAMBACKUP_TEST_BIN` (an ARM build run behind
/// `CAMBACKUP_TEST_RUNNER`, see testkit's `daemon` module).
pub fn bin() -> PathBuf {
    testkit::daemon::binary(Path::new(env!("CARGO_BIN_EXE_cambackup")))
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
        let (code, body) = pair_as(&self.daemon, "user-42", TOKEN).await;
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

// ----- an upload interrupted mid-way (conditions and consent tests) -----

/// The big file's size: 12 chunks.
pub const BIG: u64 = 12 * MIB;

const MIB: u64 = 1 << 20;

/// How long the interruption helpers wait for an upload to reach a point.
const T: Duration = Duration::from_secs(30);

/// A receiver that holds each PATCH for 0.3 s, so a 12-chunk upload lasts several seconds on
/// any machine and can be interrupted in the middle. Checksums are on (the default), so a
/// chunk cut short never counts.
pub async fn slow_receiver() -> Receiver {
    let rx = Receiver::builder().token(TOKEN).start().await;
    rx.inject(Fault::stall_after(64 * 1024, Duration::from_millis(300)).times(10_000));
    rx
}

/// Bytes the server holds of the latest upload.
pub fn server_offset(rx: &Receiver) -> u64 {
    rx.uploads().last().map_or(0, |u| u.offset)
}

/// Starts the daemon on `cam` with a big video on the card and a slow receiver, pairs,
/// consents, and returns once the server holds at least 2 MiB of it.
pub async fn uploading_a_big_video(cam: FakeCamera) -> (Rig, String) {
    let rel = cam.photo("VID_0100.MP4", BIG);
    let rig = Rig::start_with(cam, slow_receiver().await).await;
    rig.go().await;
    eventually(T, "2 MiB on the server", || async {
        server_offset(&rig.rx) >= 2 * MIB
    })
    .await;
    assert_eq!(rig.status().await["state"], "uploading");
    (rig, rel)
}

/// Where an interrupted upload stopped: the requests the server had seen and the bytes it
/// holds once everything settled.
pub struct Stopped {
    pub requests: usize,
    pub offset: u64,
}

/// The upload stops within 2 s of `since`: the status no longer shows it, and from 2 s on the
/// server sees no new PATCH and no new byte (checked for 2 s more).
pub async fn assert_stops_within_2s(rig: &Rig, since: Instant) -> Stopped {
    let limit = Duration::from_secs(2);
    loop {
        let s = rig.status().await;
        if s["state"] != "uploading" && s["current"].is_null() {
            break;
        }
        assert!(
            since.elapsed() < limit,
            "still uploading {:?} after the event: {s:#}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep_until((since + limit).into()).await;
    let (patches, offset) = (
        rig.rx.requests_with_method("PATCH").len(),
        server_offset(&rig.rx),
    );
    let requests = rig.rx.requests().len();
    tokio::time::sleep(limit).await;
    assert_eq!(
        rig.rx.requests_with_method("PATCH").len(),
        patches,
        "a PATCH more than 2 s after the stop:{}",
        rig.rx.request_summary()
    );
    assert_eq!(
        server_offset(&rig.rx),
        offset,
        "bytes arrived 2 s after the stop"
    );
    assert!(offset < BIG, "it finished before it could be stopped");
    Stopped { requests, offset }
}

/// The upload finishes from where the server stopped: no second creation, a HEAD before the
/// first PATCH, and that PATCH at the server's offset.
pub async fn assert_resumes(rig: &Rig, rel: &str, stopped: &Stopped) {
    rig.expect_uploaded(&[rel], T).await;
    assert_eq!(rig.rx.creations(), 1, "{}", rig.rx.request_summary());
    let later = &rig.rx.requests()[stopped.requests..];
    let first = later
        .iter()
        .position(|r| r.method == "PATCH")
        .expect("a PATCH after the stop");
    assert!(
        later[..first].iter().any(|r| r.method == "HEAD"),
        "resumed without asking the server's offset:{}",
        rig.rx.request_summary()
    );
    assert_eq!(
        later[first].header("upload-offset"),
        Some(stopped.offset.to_string().as_str()),
        "resumed at the server's offset"
    );
    assert!(stopped.offset > 0);
}

/// The daemon's wall clock, as a test sets it: a file of seconds added to the real clock,
/// named to the daemon by `CAMBACKUP_TEST_CLOCK_FILE` (src/clock.rs).
pub struct TestClock {
    pub file: PathBuf,
}

impl TestClock {
    /// A clock file in `dir`, at the real time.
    pub fn new(dir: &Path) -> TestClock {
        let clock = TestClock {
            file: dir.join("test-clock-offset"),
        };
        clock.set_offset(0);
        clock
    }

    /// The daemon's clock reads the real time plus `secs`.
    pub fn set_offset(&self, secs: i64) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, secs.to_string()).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    /// The daemon's clock reads `unix` now (and runs on from there).
    pub fn set_to(&self, unix: i64) {
        self.set_offset(unix - real_now());
    }

    /// The environment that hands this clock to the daemon.
    pub fn env(&self) -> (&'static str, String) {
        (
            "CAMBACKUP_TEST_CLOCK_FILE",
            self.file.to_string_lossy().into_owned(),
        )
    }
}

/// The real wall clock in unix seconds.
pub fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Rig {
    /// Like `start`, with the daemon's wall clock under the test's control (and its local time
    /// zone UTC).
    pub async fn start_with_clock(cam: FakeCamera, rx: Receiver, clock: &TestClock) -> Rig {
        let config = cam.write_config(&rx.url());
        let (k, v) = clock.env();
        let daemon =
            Daemon::start_with_env(&bin(), &config, &[(k, v.as_str()), ("TZ", "UTC")]).await;
        Rig { cam, rx, daemon }
    }
}

/// `PUT /v1/account` as `user_id` with `token`: the status and the answer.
pub async fn pair_as(daemon: &Daemon, user_id: &str, token: &str) -> (u16, Value) {
    daemon
        .api(
            "PUT",
            "/v1/account",
            Some(json!({"user_id": user_id, "token": token})),
        )
        .await
}

/// Pairs a daemon started without a [`Rig`] with [`TOKEN`] and switches consent on; the
/// pairing's answer.
pub async fn pair_and_consent(daemon: &Daemon) -> Value {
    let (code, paired) = pair_as(daemon, "user-42", TOKEN).await;
    assert_eq!(code, 200, "{paired}");
    let (code, body) = daemon
        .api("PATCH", "/v1/settings", Some(json!({"auto_upload": true})))
        .await;
    assert_eq!(code, 200, "{body}");
    paired
}
