//! The tus server of a trial, seen the same way whichever it is: testkit's receiver or the
//! reference @tus/server (`interop/server.mjs`), both behind the fault proxy.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use testkit::tus::Receiver;

/// The bearer token both servers expect.
pub const TOKEN: &str = "soak-token-5e1d";

/// One upload as the server holds it.
#[derive(Debug, Clone)]
pub struct StoredUpload {
    /// Upload ID.
    pub id: String,
    /// Decoded metadata.
    pub metadata: BTreeMap<String, String>,
    /// Upload-Length.
    pub length: u64,
    /// Bytes stored.
    pub offset: u64,
    /// Where the data is.
    pub data: PathBuf,
}

impl StoredUpload {
    /// All bytes arrived.
    pub fn complete(&self) -> bool {
        self.offset == self.length
    }

    /// Its `storage_path`.
    pub fn path(&self) -> Option<&str> {
        self.metadata.get("storage_path").map(String::as_str)
    }
}

/// `node interop/server.mjs STORE LOG`, restartable on the same store.
pub struct TusNode {
    child: Child,
    addr: SocketAddr,
    store: PathBuf,
    log: PathBuf,
    script: PathBuf,
    _dir: tempfile::TempDir,
}

impl TusNode {
    /// Whether node and the interop packages are installed.
    pub fn available(interop: &Path) -> bool {
        interop
            .join("node_modules/@tus/server/package.json")
            .is_file()
            && Command::new("node")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Starts the server on a fresh store.
    pub fn start(interop: &Path) -> Result<TusNode, String> {
        let dir = tempfile::Builder::new()
            .prefix("soak-tus-node-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let store = dir.path().join("store");
        let log = dir.path().join("requests.jsonl");
        let script = interop.join("server.mjs");
        let (child, addr) = spawn(&script, &store, &log)?;
        Ok(TusNode {
            child,
            addr,
            store,
            log,
            script,
            _dir: dir,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// kill -9 and start again on the same store (a new port).
    pub fn restart(&mut self) -> Result<SocketAddr, String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, addr) = spawn(&self.script, &self.store, &self.log)?;
        self.child = child;
        self.addr = addr;
        Ok(addr)
    }

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
            let Ok(info) = fs::read_to_string(&path)
                .map_err(|_| ())
                .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|_| ()))
            else {
                continue;
            };
            let Some(id) = info["id"].as_str() else {
                continue;
            };
            let data = self.store.join(id);
            out.push(StoredUpload {
                id: id.to_owned(),
                metadata: info["metadata"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                length: info["size"].as_u64().unwrap_or(u64::MAX),
                offset: fs::metadata(&data).map(|m| m.len()).unwrap_or(0),
                data,
            });
        }
        out
    }

    fn log(&self) -> Vec<Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for TusNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(script: &Path, store: &Path, log: &Path) -> Result<(Child, SocketAddr), String> {
    let mut child = Command::new("node")
        .arg(script)
        .arg(store)
        .arg(log)
        .env("TUS_TOKEN", TOKEN)
        .env("TUS_LOCATION", "relative")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run node: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "@tus/server did not print its address within 20 s".to_string())?;
    let v: Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("@tus/server's first line {line:?}: {e}"))?;
    let port = v["port"].as_u64().ok_or("no port in @tus/server's line")?;
    Ok((child, SocketAddr::from(([127, 0, 0, 1], port as u16))))
}

/// The trial's server.
pub enum Server {
    /// testkit's receiver.
    Receiver(Receiver),
    /// @tus/server.
    TusNode(TusNode),
}

impl Server {
    /// Its listening address (the proxy's upstream).
    pub fn addr(&self) -> SocketAddr {
        match self {
            Server::Receiver(rx) => rx.addr(),
            Server::TusNode(n) => n.addr(),
        }
    }

    /// Every upload it holds (not terminated), complete or not.
    pub fn uploads(&self) -> Vec<StoredUpload> {
        match self {
            Server::Receiver(rx) => rx
                .uploads()
                .into_iter()
                .filter(|u| !u.terminated)
                .map(|u| StoredUpload {
                    data: rx.data_path(&u.id),
                    id: u.id,
                    metadata: u.metadata,
                    length: u.length,
                    offset: u.offset,
                })
                .collect(),
            Server::TusNode(n) => n.uploads(),
        }
    }

    /// Every upload it ever created, terminated ones too (the receiver keeps them).
    pub fn every_upload(&self) -> Vec<StoredUpload> {
        match self {
            Server::Receiver(rx) => rx
                .uploads()
                .into_iter()
                .map(|u| StoredUpload {
                    data: rx.data_path(&u.id),
                    id: u.id,
                    metadata: u.metadata,
                    length: u.length,
                    offset: u.offset,
                })
                .collect(),
            Server::TusNode(n) => n.uploads(),
        }
    }

    /// Creations per storage path: every upload ever created (terminated too), plus those the
    /// receiver forgot (counted by the trial, passed in).
    pub fn creations(&self, forgotten: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
        let mut out = forgotten.clone();
        let paths: Vec<String> = match self {
            Server::Receiver(rx) => rx
                .uploads()
                .into_iter()
                .filter_map(|u| u.storage_path().map(str::to_owned))
                .collect(),
            Server::TusNode(n) => n
                .uploads()
                .into_iter()
                .filter_map(|u| u.path().map(str::to_owned))
                .collect(),
        };
        for p in paths {
            *out.entry(p).or_default() += 1;
        }
        out
    }

    /// Arrival times of the data-moving requests (POST, HEAD, PATCH).
    pub fn request_times(&self) -> Vec<SystemTime> {
        match self {
            Server::Receiver(rx) => rx
                .requests()
                .into_iter()
                .filter(|r| matches!(r.method.as_str(), "POST" | "HEAD" | "PATCH"))
                .map(|r| r.at)
                .collect(),
            Server::TusNode(n) => n
                .log()
                .into_iter()
                .filter(|e| matches!(e["method"].as_str(), Some("POST" | "HEAD" | "PATCH")))
                .filter_map(|e| e["t"].as_u64())
                .map(|t| UNIX_EPOCH + Duration::from_millis(t))
                .collect(),
        }
    }

    /// PATCH body bytes the server received (the receiver counts them exactly; for
    /// @tus/server, `None`: the proxy's count stands in).
    pub fn body_bytes(&self) -> Option<u64> {
        match self {
            Server::Receiver(rx) => Some(
                rx.requests_with_method("PATCH")
                    .iter()
                    .map(|r| r.body_len)
                    .sum(),
            ),
            Server::TusNode(_) => None,
        }
    }

    /// Per upload ID, how many times the server answered 404/410 on its URL because of a
    /// fault (injected, or forgotten by a restart).
    pub fn gone_answers(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        if let Server::Receiver(rx) = self {
            for r in rx.requests() {
                if matches!(r.status, Some(404 | 410)) {
                    if let Some(id) = r.path.strip_prefix("/files/") {
                        *out.entry(id.to_owned()).or_default() += 1;
                    }
                }
            }
        }
        out
    }
}
