//! Issue 3, part 7: the real daemon against the reference tus server, @tus/server 2.x with
//! @tus/file-store (`interop/`, pinned by its lockfile), not against our own receiver. What a
//! cloud operator would check: every file arrives byte-identical, once, with exactly the four
//! metadata fields, and a daemon killed mid-upload resumes at the server's offset instead of
//! starting over.
//!
//! Needs Node (>= 20.19) and `npm ci --prefix interop`; without them these tests fail, on
//! purpose, saying so: CI installs both, and a silent skip would hide a broken interop.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::camera::FakeCamera;
use testkit::daemon::{Daemon, Signal};
use testkit::tus::files_equal;

use crate::common::{bin, eventually, TOKEN};

/// The user ID the daemon is paired with.
const USER_ID: &str = "user-42";

/// Whole-upload timeout. The big file takes a few seconds on loopback; this only bounds a hang.
const T: Duration = Duration::from_secs(90);

/// One MiB.
const MIB: u64 = 1 << 20;

/// The big file: over 200 MiB, and not a multiple of the chunk size, so the last PATCH is short.
const BIG: u64 = 200 * MIB + 12_345;

/// Where the reference server lives in the repo.
fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// How the reference server writes its `Location` header.
#[derive(Debug, Clone, Copy)]
enum Location {
    /// `http://127.0.0.1:PORT/files/ID`.
    Absolute,
    /// `/files/ID`, resolved by the client against the creation URL.
    Relative,
}

/// `node interop/server.mjs` on an ephemeral loopback port, killed on drop.
struct TusServer {
    child: Child,
    url: String,
    store: PathBuf,
    log: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

/// One upload as @tus/file-store keeps it: `ID.json` (info) and `ID` (the data).
#[derive(Debug, Clone)]
struct StoredUpload {
    id: String,
    size: u64,
    metadata: BTreeMap<String, String>,
    /// The data file's length: the server's offset (FileStore derives it from the file).
    on_disk: u64,
    data: PathBuf,
}

impl StoredUpload {
    fn complete(&self) -> bool {
        self.on_disk == self.size
    }
}

impl TusServer {
    /// Starts the server and waits for its `{"url": ...}` line.
    fn start(location: Location) -> TusServer {
        let dir = interop_dir();
        assert!(
            dir.join("node_modules/@tus/server/package.json").is_file()
                && dir
                    .join("node_modules/@tus/file-store/package.json")
                    .is_file(),
            "the interop tests need @tus/server and @tus/file-store in {}: \
             run `npm ci --prefix interop` first (Node >= 20.19)",
            dir.join("node_modules").display()
        );
        let tmp = tempfile::Builder::new()
            .prefix("tus-interop-")
            .tempdir()
            .expect("create server temp dir");
        let store = tmp.path().join("store");
        let log = tmp.path().join("requests.jsonl");
        let stderr = tmp.path().join("server.stderr");
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .arg(&store)
            .arg(&log)
            .env("TUS_TOKEN", TOKEN)
            .env(
                "TUS_LOCATION",
                match location {
                    Location::Absolute => "absolute",
                    Location::Relative => "relative",
                },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).expect("create server stderr file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `node` (needed for the interop tests, Node >= 20.19): {e}")
            });

        // Read the first line on a thread so a server that hangs cannot hang the test.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
        let url = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["url"].as_str().map(str::to_owned));
        let Some(url) = url else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "interop/server.mjs did not announce its URL (stdout: {line:?}); stderr:\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        TusServer {
            child,
            url,
            store,
            log,
            stderr,
            _dir: tmp,
        }
    }

    /// Every request so far, as logged by the server, in the order they finished.
    fn requests(&self) -> Vec<Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("the server logs JSON lines"))
            .collect()
    }

    /// Creations the server accepted.
    fn creations(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r["method"] == "POST" && r["status"] == 201)
            .count()
    }

    /// Every upload in the FileStore directory.
    fn uploads(&self) -> Vec<StoredUpload> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&self.store) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            // FileStore writes the info before the data file; skip one caught in between.
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Ok(info) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let id = info["id"].as_str().expect("info has an id").to_owned();
            let data = self.store.join(&id);
            let metadata = info["metadata"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(StoredUpload {
                id,
                size: info["size"].as_u64().expect("info has a size"),
                metadata,
                on_disk: fs::metadata(&data).map(|m| m.len()).unwrap_or(0),
                data,
            });
        }
        out
    }

    /// The uploads whose `storage_path` metadata is `rel`.
    fn uploads_of(&self, rel: &str) -> Vec<StoredUpload> {
        self.uploads()
            .into_iter()
            .filter(|u| u.metadata.get("storage_path").map(String::as_str) == Some(rel))
            .collect()
    }

    /// The request log in short, for failure messages.
    fn summary(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} offset={} -> {}{} (res offset={})",
                    r["method"].as_str().unwrap_or("?"),
                    r["url"].as_str().unwrap_or("?"),
                    r["req"]["upload-offset"].as_str().unwrap_or("-"),
                    r["status"],
                    if r["aborted"] == true { " aborted" } else { "" },
                    r["res"]["upload-offset"].as_str().unwrap_or("-"),
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for TusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- @tus/server requests ---\n{}\n--- @tus/server stderr ---\n{}\n---",
                self.summary(),
                fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
    }
}

/// Starts the daemon on `cam` against `server`, pairs it and switches consent on.
async fn start_daemon(cam: &FakeCamera, server: &TusServer) -> Daemon {
    let config = cam.write_config(&server.url);
    let daemon = Daemon::start(&bin(), &config).await;
    for (method, path, body) in [
        (
            "PUT",
            "/v1/account",
            json!({"user_id": USER_ID, "token": TOKEN}),
        ),
        ("PATCH", "/v1/settings", json!({"auto_upload": true})),
    ] {
        let (code, answer) = daemon.api(method, path, Some(body)).await;
        assert_eq!(code, 200, "{method} {path}: {answer}");
    }
    daemon
}

/// Waits until the server holds exactly `rels` complete and the daemon counts them all done.
async fn wait_all_uploaded(daemon: &Daemon, server: &TusServer, rels: &[&str]) {
    eventually(T, "every file complete on @tus/server", || async {
        rels.iter()
            .all(|rel| server.uploads_of(rel).iter().any(StoredUpload::complete))
    })
    .await;
    eventually(T, "the daemon to count every item done", || async {
        let (code, body) = daemon
            .api("GET", "/v1/queue?state=done&limit=1000", None)
            .await;
        code == 200 && body["items"].as_array().map_or(0, Vec::len) == rels.len()
    })
    .await;
}

/// What a cloud operator would check on the server after the daemon is done: one upload per
/// file, complete, byte-identical (compared streaming), with exactly the four metadata fields.
fn assert_stored(cam: &FakeCamera, server: &TusServer, rels: &[&str]) {
    let uploads = server.uploads();
    assert_eq!(
        uploads.len(),
        rels.len(),
        "one upload per file on the server: {uploads:#?}"
    );
    for rel in rels {
        let found = server.uploads_of(rel);
        assert_eq!(found.len(), 1, "{rel}: one upload, got {found:#?}");
        let u = &found[0];
        let local = cam.media_path(rel);
        let len = fs::metadata(&local).expect("media file").len();
        assert_eq!(u.size, len, "{rel}: Upload-Length");
        assert!(u.complete(), "{rel}: {} of {} bytes", u.on_disk, u.size);
        assert!(
            files_equal(&u.data, &local).expect("compare files"),
            "{rel}: upload {} is not byte-identical with the card",
            u.id
        );
        let want: BTreeMap<String, String> = [
            ("user_id", USER_ID),
            ("device_type", "SJ10 Pro"),
            ("serial_number", "TEST0001"),
            ("storage_path", rel),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(u.metadata, want, "{rel}: metadata as @tus/server stored it");
    }
}

/// Every request carried the token and our User-Agent, and nothing but the tus headers.
fn assert_requests_clean(server: &TusServer) {
    let reqs = server.requests();
    assert!(!reqs.is_empty());
    let user_agent = format!("cambackup/{}", env!("CARGO_PKG_VERSION"));
    for r in &reqs {
        assert_eq!(r["req"]["authorization"], "bearer-ok", "{r}");
        assert_eq!(r["req"]["user-agent"], user_agent.as_str(), "{r}");
        assert_eq!(r["req"]["tus-resumable"], "1.0.0", "{r}");
        if r["method"] == "PATCH" {
            assert_eq!(
                r["req"]["content-type"], "application/offset+octet-stream",
                "{r}"
            );
        }
        assert_eq!(r["other_headers"], json!([]), "unexpected headers: {r}");
        assert_ne!(r["status"], 401, "{r}");
    }
}

#[tokio::test]
async fn every_file_arrives_byte_identical_with_exactly_the_four_metadata_fields() {
    let cam = FakeCamera::new();
    cam.with("cloud", "chunk_size_mib", "16");
    let rels = [
        "DCIM/100MEDIA/EMPTY.JPG",
        "DCIM/100MEDIA/IMG_0001.JPG",
        "DCIM/100MEDIA/IMG_0002.DNG",
        "DCIM/101MEDIA/Ünïcødé, 照片 #1.heic",
        "DCIM/100MEDIA/VID_0003.MP4",
    ];
    let sizes = [0, 1, 16 * MIB, 250_001, BIG];
    for (rel, len) in rels.iter().zip(sizes) {
        cam.write_sample(rel, len);
    }
    let server = TusServer::start(Location::Absolute);
    let daemon = start_daemon(&cam, &server).await;

    wait_all_uploaded(&daemon, &server, &rels).await;
    assert_stored(&cam, &server, &rels);
    assert_eq!(server.creations(), rels.len(), "{}", server.summary());
    assert_requests_clean(&server);
    // Chunked as configured: no PATCH body over 16 MiB.
    for r in server.requests().iter().filter(|r| r["method"] == "PATCH") {
        let len: u64 = r["req"]["content-length"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("PATCH without Content-Length: {r}"));
        assert!(len <= 16 * MIB, "{r}");
    }
}

#[tokio::test]
async fn a_daemon_killed_mid_upload_resumes_at_the_servers_offset_without_a_second_creation() {
    let cam = FakeCamera::new();
    cam.with("cloud", "chunk_size_mib", "8");
    let photo = "DCIM/100MEDIA/IMG_0001.JPG";
    let video = "DCIM/100MEDIA/VID_0002.MP4";
    cam.write_sample(photo, 300_000);
    cam.write_sample(video, BIG);
    // Relative Location here, absolute in the other test: both must resolve.
    let server = TusServer::start(Location::Relative);
    let mut daemon = start_daemon(&cam, &server).await;

    // Kill while the server clearly holds part of the video, polling finely: on loopback
    // the whole file takes only seconds.
    let deadline = Instant::now() + T;
    let mut seen = 0;
    loop {
        seen = server.uploads_of(video).first().map_or(seen, |u| u.on_disk);
        if seen >= 24 * MIB {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the video never started uploading"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.kill(Signal::Kill);
    daemon
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("the daemon dies on SIGKILL");
    // The server finishes writing what arrived of the aborted PATCH; then its offset holds still.
    let mut at_kill = seen;
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = server.uploads_of(video)[0].on_disk;
        if now != at_kill {
            at_kill = now;
            still_since = Instant::now();
        }
    }
    assert!(
        at_kill > 0 && at_kill < BIG - 16 * MIB,
        "killed too late to prove a resume: the server had {at_kill} of {BIG} bytes"
    );
    let before_restart = server.requests().len();

    daemon.restart().await;
    wait_all_uploaded(&daemon, &server, &[photo, video]).await;
    assert_stored(&cam, &server, &[photo, video]);
    assert_eq!(
        server.creations(),
        2,
        "one creation per file, none after the restart:\n{}",
        server.summary()
    );
    assert_requests_clean(&server);

    // After the restart: a HEAD learns the server's offset, then PATCHes go on from there.
    let upload_url = format!("/files/{}", server.uploads_of(video)[0].id);
    let after: Vec<Value> = server.requests()[before_restart..]
        .iter()
        .filter(|r| r["url"] == upload_url.as_str())
        .cloned()
        .collect();
    let head = after
        .iter()
        .position(|r| r["method"] == "HEAD")
        .unwrap_or_else(|| panic!("no HEAD after the restart:\n{}", server.summary()));
    assert_eq!(after[head]["status"], 200, "{}", after[head]);
    assert_eq!(
        after[head]["res"]["upload-offset"],
        at_kill.to_string(),
        "the HEAD reports what the server had at the kill"
    );
    let patches: Vec<u64> = after
        .iter()
        .filter(|r| r["method"] == "PATCH")
        .map(|r| r["req"]["upload-offset"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        after[..head].iter().all(|r| r["method"] != "PATCH"),
        "a PATCH went out before the HEAD:\n{}",
        server.summary()
    );
    assert_eq!(
        patches.first(),
        Some(&at_kill),
        "the first PATCH after the restart starts at the server's offset:\n{}",
        server.summary()
    );
    assert!(
        patches.windows(2).all(|w| w[0] < w[1]),
        "PATCH offsets only go forward: {patches:?}"
    );
    // Only the remainder went again, not the whole file.
    let resent: u64 = after
        .iter()
        .filter(|r| r["method"] == "PATCH" && r["status"] == 204)
        .map(|r| {
            r["req"]["content-length"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(resent, BIG - at_kill, "{}", server.summary());
}

#[tokio::test]
async fn cancelling_an_upload_in_flight_terminates_it_on_the_server() {
    let cam = FakeCamera::new();
    cam.with("cloud", "chunk_size_mib", "8");
    let video = "DCIM/100MEDIA/VID_0001.MP4";
    cam.write_sample(video, BIG);
    let server = TusServer::start(Location::Absolute);
    let daemon = start_daemon(&cam, &server).await;

    eventually(T, "part of the video on the server", || async {
        server
            .uploads_of(video)
            .first()
            .is_some_and(|u| u.on_disk >= 8 * MIB)
    })
    .await;
    let (code, body) = daemon.api("GET", "/v1/queue?limit=10", None).await;
    assert_eq!(code, 200, "{body}");
    let id = body["items"][0]["id"].as_i64().expect("the video's item");
    let (code, body) = daemon.api("DELETE", &format!("/v1/queue/{id}"), None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["state"], "cancelled", "{body}");

    // @tus/file-store removes both the data and the info file on termination. The server
    // logs the DELETE once its answer is out, a moment after the files are gone.
    let gone = || async {
        fs::read_dir(&server.store).unwrap().next().is_none()
            && server.requests().iter().any(|r| r["method"] == "DELETE")
    };
    eventually(
        Duration::from_secs(10),
        "the upload gone from @tus/server",
        gone,
    )
    .await;
    let reqs = server.requests();
    let delete = reqs
        .iter()
        .find(|r| r["method"] == "DELETE")
        .unwrap_or_else(|| panic!("no DELETE:\n{}", server.summary()));
    assert_eq!(delete["status"], 204, "{delete}");
    // Nothing more for a cancelled item: no PATCH begun after the DELETE, no new creation.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reqs = server.requests();
    assert!(
        reqs.iter()
            .filter(|r| r["method"] == "PATCH")
            .all(|r| r["t"].as_u64() < delete["t"].as_u64()),
        "a PATCH after the DELETE:\n{}",
        server.summary()
    );
    assert_eq!(server.creations(), 1, "{}", server.summary());
    assert_requests_clean(&server);
}
