//! The reference receiving tier (`cloud/lab`, issue 27) from a test: Swift with s3api, Redis,
//! several @tus/server instances behind haproxy, on loopback, in a state directory of the
//! test's own (`CLOUD_DIR`), so tests run side by side.
//!
//! [`Tier::up`] starts it (or says why it cannot: the tools `.ci/run` installs are missing);
//! dropping the [`Tier`] stops it. What a test does to it goes through the lab's own commands
//! (`kill`, `stop`, `start`, `get`, `ls`, `multiparts`, `lose`); what the instances served is
//! read from their request logs ([`Tier::requests`]), one JSON line per request.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

/// How the tier is started.
#[derive(Debug, Clone, Default)]
pub struct TierOptions {
    /// Bearer tokens it accepts (`CLOUD_TOKENS`).
    pub tokens: Vec<String>,
    /// tus instances behind haproxy (default 2).
    pub instances: Option<usize>,
    /// Extra environment for `lab up` (`CLOUD_LOCK=memory`, `CLOUD_TLS=1`, ...).
    pub env: Vec<(String, String)>,
}

/// A running tier; `lab down` when dropped (its logs kept when the test panicked).
pub struct Tier {
    dir: tempfile::TempDir,
    lab: PathBuf,
    endpoint: String,
}

/// One request an instance served, from its log (`cloud/server.mjs`).
#[derive(Debug, Clone, Deserialize)]
pub struct TierRequest {
    /// When it arrived, unix milliseconds.
    pub t: u64,
    /// The instance (`tus1`, ...).
    pub inst: String,
    pub method: String,
    pub url: String,
    pub status: u16,
    /// How long it took, ms.
    pub ms: u64,
    /// The `Upload-Offset` answered, if any.
    pub offset: Option<u64>,
    /// The client went away before the answer was written.
    pub aborted: bool,
}

impl TierRequest {
    /// When it arrived, unix milliseconds.
    pub fn start(&self) -> u64 {
        self.t
    }

    /// The upload ID its URL names (`/files/ID`), if any.
    pub fn upload_id(&self) -> Option<&str> {
        let id = self.url.split('?').next()?.strip_prefix("/files/")?;
        (!id.is_empty()).then_some(id)
    }
}

impl Tier {
    /// Starts a tier with `cloud/lab up` from the repository at `repo`, or says why not.
    pub fn up(repo: &Path, options: &TierOptions) -> Result<Tier, String> {
        let lab = repo.join("cloud/lab");
        if !repo.join("cloud/node_modules/@tus/s3-store").is_dir() {
            return Err(format!(
                "{}/cloud/node_modules lacks @tus/s3-store: run `npm ci --prefix cloud` (as .ci/run does)",
                repo.display()
            ));
        }
        for tool in [
            "haproxy",
            "redis-server",
            "swift-proxy-server",
            "memcached",
            "node",
        ] {
            if !on_path(tool) {
                return Err(format!("{tool} is not installed (.ci/run installs it)"));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("cloud-lab-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let mut cmd = Command::new(&lab);
        cmd.arg("up")
            .env("CLOUD_DIR", dir.path().join("lab"))
            .env("CLOUD_TOKENS", options.tokens.join(","))
            .env(
                "CLOUD_INSTANCES",
                options.instances.unwrap_or(2).to_string(),
            );
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("{}: {e}", lab.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tier = Tier {
            dir,
            lab,
            endpoint: stdout.lines().last().unwrap_or_default().trim().to_string(),
        };
        if !out.status.success() || !tier.endpoint.contains("/files/") {
            return Err(format!(
                "`cloud/lab up` failed ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(tier)
    }

    /// The tus endpoint (the balancer's creation URL).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The lab's state directory (logs under `log/`).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("lab")
    }

    /// Runs `cloud/lab ARGS` on this tier; its stdout, or panics with its stderr.
    pub fn lab(&self, args: &[&str]) -> String {
        let out = Command::new(&self.lab)
            .args(args)
            .env("CLOUD_DIR", self.dir())
            .output()
            .expect("run cloud/lab");
        assert!(
            out.status.success(),
            "cloud/lab {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILLs a service (`tus1`, `redis`, `object2`, ...): a crash.
    pub fn kill(&self, name: &str) {
        self.lab(&["kill", name]);
    }

    /// Stops a service (SIGTERM) and waits until it is gone.
    pub fn stop(&self, name: &str) {
        self.lab(&["stop", name]);
    }

    /// Starts a service again on its port and waits until it accepts connections.
    pub fn start(&self, name: &str) {
        self.lab(&["start", name]);
    }

    /// An object's bytes from the bucket, through S3; `None` when S3 has no such object.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let file = self.dir.path().join("get.tmp");
        let ok = Command::new(&self.lab)
            .args(["get", key, &file.to_string_lossy()])
            .env("CLOUD_DIR", self.dir())
            .output()
            .is_ok_and(|o| o.status.success());
        let bytes = ok.then(|| std::fs::read(&file).ok()).flatten();
        let _ = std::fs::remove_file(&file);
        bytes
    }

    /// The bucket's objects: (key, size).
    pub fn objects(&self) -> Vec<(String, u64)> {
        self.lab(&["ls"])
            .lines()
            .filter_map(|l| {
                let (k, s) = l.rsplit_once(' ')?;
                Some((k.to_string(), s.parse().ok()?))
            })
            .collect()
    }

    /// The multipart uploads in progress: (key, multipart upload ID).
    pub fn multiparts(&self) -> Vec<(String, String)> {
        self.lab(&["multiparts"])
            .lines()
            .filter_map(|l| {
                let (k, u) = l.split_once(' ')?;
                Some((k.to_string(), u.to_string()))
            })
            .collect()
    }

    /// Aborts tus upload `id`'s multipart upload, as a store that expires them does.
    pub fn lose(&self, id: &str) {
        self.lab(&["lose", id]);
    }

    /// Every request the tus instances logged so far (health checks left out), by arrival.
    pub fn requests(&self) -> Vec<TierRequest> {
        let mut all = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.dir().join("log")) else {
            return all;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("tus") && name.ends_with(".log")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            all.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<TierRequest>(l).ok())
                    .filter(|r| r.url != "/health"),
            );
        }
        all.sort_by_key(|r| r.start());
        all
    }

    /// The requests the balancer has at an instance now: (instance, method), from haproxy's
    /// `show sess all` (which numbers the methods: PATCH is "other").
    pub fn in_flight(&self) -> Vec<(String, &'static str)> {
        let text = self.haproxy("show sess all");
        let mut out = Vec::new();
        let mut server: Option<String> = None;
        for line in text.lines() {
            if line.starts_with("0x") {
                server = None;
            }
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("server=") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                server = name.starts_with("tus").then(|| name.to_string());
            }
            if let (Some(s), Some(m)) = (
                &server,
                l.split_whitespace().find_map(|w| w.strip_prefix("meth=")),
            ) {
                let method = match m {
                    "0" => "OPTIONS",
                    "2" => "HEAD",
                    "3" => "POST",
                    "5" => "DELETE",
                    "8" => "PATCH",
                    _ => "OTHER",
                };
                out.push((s.clone(), method));
            }
        }
        out
    }

    /// Waits until a `method` request is at an instance, and SIGKILLs that instance: the
    /// instance and the moment (unix ms) of the kill. `None` after `timeout`.
    pub async fn kill_during(&self, method: &str, timeout: Duration) -> Option<(String, u64)> {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if let Some((inst, _)) = self.in_flight().into_iter().find(|(_, m)| *m == method) {
                let at = now_ms();
                self.kill(&inst);
                return Some((inst, at));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// From `since` (unix ms) to the arrival of the first PATCH that arrived after it and was
    /// accepted (204): how long uploading stood still.
    pub fn recovery_after(&self, since: u64) -> Option<Duration> {
        self.requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.status == 204 && r.start() > since)
            .map(|r| Duration::from_millis(r.start() - since))
            .min()
    }

    fn haproxy(&self, command: &str) -> String {
        use std::io::{Read as _, Write as _};
        let sock = self.dir().join("run/haproxy.sock");
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(format!("{command}\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// The service holding a connection from the balancer now, from haproxy's stats socket
    /// (`scur`): with one upload in flight, the instance serving it.
    pub fn busy_instances(&self) -> Vec<String> {
        let csv = self.haproxy("show stat");
        let mut lines = csv.lines();
        let Some(header) = lines.next() else {
            return Vec::new();
        };
        let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| cols.iter().position(|c| *c == name);
        let (Some(px), Some(sv), Some(scur)) = (col("pxname"), col("svname"), col("scur")) else {
            return Vec::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > scur && f[px] == "tus" && f[sv].starts_with("tus"))
            .filter(|f| f[scur].parse::<u64>().unwrap_or(0) > 0)
            .map(|f| f[sv].to_string())
            .collect()
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        let keep = std::thread::panicking();
        let _ = Command::new(&self.lab)
            .arg("down")
            .env("CLOUD_DIR", self.dir())
            .env("CLOUD_KEEP", if keep { "1" } else { "0" })
            .output();
        if keep {
            let kept = self.dir.path().to_path_buf();
            // Kept for the post-mortem: the TempDir would delete it.
            let _ = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("a temp dir to drop instead"),
            )
            .keep();
            eprintln!("cloud tier logs kept in {}/lab/log", kept.display());
        }
    }
}

/// Now, unix milliseconds (the instances' log clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join(tool).is_file())
            || Path::new("/usr/sbin").join(tool).is_file()
    })
}

// ----- a fleet of real daemons uploading through the tier -----

/// One camera of a [`Fleet`]: its card, its daemon, and the files on its card.
pub struct Camera {
    pub cam: crate::camera::FakeCamera,
    pub daemon: crate::daemon::Daemon,
    /// Storage paths and sizes.
    pub files: Vec<(String, u64)>,
}

/// Cameras uploading to a [`Tier`] through a byte-counting [`crate::proxy::Proxy`] (which can
/// also cap the rate, so that uploads are under way when a fault comes).
pub struct Fleet {
    pub tier: Tier,
    pub proxy: crate::proxy::Proxy,
    pub cams: Vec<Camera>,
}

/// What a fleet's uploads came to, read back from the object store.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Files on the cards.
    pub files: usize,
    /// Bytes on the cards.
    pub bytes: u64,
    /// Files with no completed upload (the daemon's queue not `done`, or no object).
    pub lost: Vec<String>,
    /// Files whose object's SHA-256 differs from the card's.
    pub corrupt: Vec<String>,
    /// Files with more than one complete object in the bucket's listing.
    pub twice: Vec<String>,
    /// Creations beyond one per file (the daemon's count).
    pub extra_creations: u64,
}

impl Verdict {
    /// 0 lost, 0 corrupt, 0 sent twice complete.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.corrupt.is_empty() && self.twice.is_empty()
    }
}

/// The token every fleet camera pairs with.
pub const FLEET_TOKEN: &str = "fleet-cloud-token";

impl Fleet {
    /// Starts `sizes.len()` cameras (camera `i` gets the files of sizes `sizes[i]`), paired and
    /// consenting, behind a proxy capped at `rate` bytes/s per connection (`None`: no cap).
    /// Sizes should differ across the whole fleet: an object is matched to its file by size.
    pub async fn start(tier: Tier, bin: &Path, sizes: &[Vec<u64>], rate: Option<u64>) -> Fleet {
        let upstream: std::net::SocketAddr = {
            let u = url::Url::parse(tier.endpoint()).expect("the tier's endpoint is a URL");
            format!("127.0.0.1:{}", u.port().expect("a port"))
                .parse()
                .unwrap()
        };
        let proxy = crate::proxy::Proxy::start(upstream).await;
        proxy.set_rate(rate);
        let endpoint = proxy.url("/files/");
        let mut cams = Vec::new();
        for (i, sizes) in sizes.iter().enumerate() {
            let cam = crate::camera::FakeCamera::new();
            cam.with(
                "device",
                "serial",
                &crate::camera::toml_string(&format!("CLOUD{i:04}")),
            )
            .with("cloud", "chunk_size_mib", "8")
            .with("cloud", "stall_secs", "30")
            .with("cloud", "retry_max_secs", "5");
            let files: Vec<(String, u64)> = sizes
                .iter()
                .enumerate()
                .map(|(j, len)| (cam.photo(&format!("C{i:02}F{j:03}.JPG"), *len), *len))
                .collect();
            let config = cam.write_config(&endpoint);
            let daemon = crate::daemon::Daemon::start(bin, &config).await;
            for (method, path, body) in [
                (
                    "PUT",
                    "/v1/account",
                    serde_json::json!({"user_id": format!("user-{i}"), "token": FLEET_TOKEN}),
                ),
                (
                    "PATCH",
                    "/v1/settings",
                    serde_json::json!({"auto_upload": true}),
                ),
            ] {
                let (code, answer) = daemon.api(method, path, Some(body)).await;
                assert_eq!(code, 200, "{method} {path}: {answer}");
            }
            cams.push(Camera { cam, daemon, files });
        }
        Fleet { tier, proxy, cams }
    }

    /// Files done per camera's queue, summed.
    pub async fn done(&self) -> usize {
        let mut n = 0;
        for c in &self.cams {
            let (_, body) = c.daemon.api("GET", "/v1/status", None).await;
            n += body["queue"]["done"].as_u64().unwrap_or(0) as usize;
        }
        n
    }

    /// Waits until every file is done in its camera's queue.
    pub async fn wait_done(&self, timeout: Duration) -> Result<(), String> {
        let total: usize = self.cams.iter().map(|c| c.files.len()).sum();
        let end = std::time::Instant::now() + timeout;
        loop {
            let done = self.done().await;
            if done >= total {
                return Ok(());
            }
            if std::time::Instant::now() > end {
                return Err(format!("{done} of {total} files done after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads every object back from the store and compares it (SHA-256) with the card.
    pub fn verify(&self) -> Verdict {
        use sha2::{Digest as _, Sha256};
        let objects = self.tier.objects();
        let mut v = Verdict::default();
        for c in &self.cams {
            let db = done_items(&c.cam.state_dir());
            for (rel, size) in &c.files {
                v.files += 1;
                v.bytes += size;
                let complete = objects
                    .iter()
                    .filter(|(k, s)| s == size && !k.contains('.'))
                    .count();
                if complete > 1 {
                    v.twice.push(rel.clone());
                }
                let Some((done_url, creations)) = db.get(rel) else {
                    v.lost.push(rel.clone());
                    continue;
                };
                v.extra_creations += creations.saturating_sub(1);
                // Read by key, not found in the listing: with an object server down, Swift's
                // container listing lags behind the objects (its updates wait for the server).
                let id = done_url.rsplit('/').next().unwrap_or_default();
                let Some(object) = self.tier.get(id) else {
                    v.lost.push(rel.clone());
                    continue;
                };
                let card = std::fs::read(c.cam.media_path(rel)).expect("read the card's file");
                if Sha256::digest(&object) != Sha256::digest(&card) {
                    v.corrupt.push(rel.clone());
                }
            }
        }
        v
    }

    /// Bytes the cameras sent towards the tier (requests, headers included).
    pub fn bytes_up(&self) -> u64 {
        self.proxy.stats().bytes_up
    }
}

/// storage path -> (done_url, creations) of the done items in the daemon's database.
fn done_items(state_dir: &Path) -> std::collections::HashMap<String, (String, u64)> {
    let mut map = std::collections::HashMap::new();
    let Ok(db) = rusqlite::Connection::open_with_flags(
        state_dir.join("cambackup.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return map;
    };
    let Ok(mut q) = db.prepare(
        "SELECT storage_path, done_url, creations FROM items WHERE state = 'done' AND done_url IS NOT NULL",
    ) else {
        return map;
    };
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    if let Ok(rows) = rows {
        for (path, url, creations) in rows.flatten() {
            map.insert(path, (url, creations.max(0) as u64));
        }
    }
    map
}
