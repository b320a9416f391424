//! Runs the real `cambackup daemon` binary and talks to it over its control socket
//! (INTERFACE.md section 5), the way the companion app and the CLI do.
//!
//! The daemon's stdout and stderr go to a log file ([`Daemon::log`]); when a test panics while
//! a `Daemon` is alive, the log's tail is printed on drop, which is usually the fastest way to
//! see why.
//!
//! The same tests run an ARM build under qemu-user (docs/deploying.md, "Testing on the target"):
//! `CAMBACKUP_TEST_BIN` names the binary to run instead of the one cargo built, and
//! `CAMBACKUP_TEST_RUNNER` a command put in front of it, e.g. `qemu-arm -L
//! /usr/arm-linux-gnueabihf`. A prefix rather than binfmt_misc: it needs no root and no kernel
//! registration, so it works the same on a developer's machine and in CI. Every way a test runs
//! the binary goes through [`binary`] and [`command`].

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::http::{request, send, RawResponse};
use crate::wait::POLL_INTERVAL;

/// How long [`Daemon::start`] waits for `GET /v1/health` to answer 200.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of the log printed when a test panics with the daemon alive.
const LOG_TAIL_LINES: usize = 300;

/// Environment variable: the binary under test, instead of the one cargo built.
pub const BIN_ENV: &str = "CAMBACKUP_TEST_BIN";

/// Environment variable: a command (split on whitespace) put in front of the binary under test.
pub const RUNNER_ENV: &str = "CAMBACKUP_TEST_RUNNER";

/// The binary under test: `CAMBACKUP_TEST_BIN` if set, else `built` (tests pass
/// `env!("CARGO_BIN_EXE_cambackup")`).
pub fn binary(built: &Path) -> PathBuf {
    match std::env::var_os(BIN_ENV) {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => built.to_owned(),
    }
}

/// Environment variable: how many times slower than a native build the daemon under test
/// runs (an integer); by default 4 behind `CAMBACKUP_TEST_RUNNER` (an emulator), else 1.
pub const SLOWDOWN_ENV: &str = "CAMBACKUP_TEST_SLOWDOWN";

/// How many times slower the daemon under test runs than a native build ([`SLOWDOWN_ENV`]).
pub fn slowdown() -> u32 {
    match std::env::var(SLOWDOWN_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        Some(n) if n >= 1 => n,
        _ if !runner().is_empty() => 4,
        _ => 1,
    }
}

/// `d` scaled by [`slowdown`]: for waits on work the daemon does (many uploads, many
/// database writes), never for a limit a test asserts the daemon keeps.
pub fn scaled(d: Duration) -> Duration {
    d * slowdown()
}

fn runner() -> Vec<String> {
    std::env::var(RUNNER_ENV)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A command that runs `bin` the way the tests must: behind `CAMBACKUP_TEST_RUNNER` if set.
/// Add the arguments; the CLI tests use it as is.
pub fn command(bin: &Path) -> std::process::Command {
    let mut runner = runner().into_iter();
    match runner.next() {
        Some(emulator) => {
            let mut cmd = std::process::Command::new(emulator);
            cmd.args(runner).arg(bin);
            cmd
        }
        None => std::process::Command::new(bin),
    }
}

/// Signals a test may send to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: graceful shutdown.
    Term,
    /// SIGKILL: a crash or power cut, as far as the daemon can tell.
    Kill,
    /// SIGINT.
    Int,
    /// SIGHUP.
    Hup,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
        }
    }
}

/// A running `cambackup daemon --config PATH`. Dropping it kills the process.
pub struct Daemon {
    bin: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    env: Vec<(String, String)>,
    /// A command line the daemon runs under (e.g. entering a network namespace); empty: none.
    runner: Vec<String>,
    child: Option<Child>,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon and waits until it is healthy; panics (printing the log) otherwise.
    /// Tests pass `Path::new(env!("CARGO_BIN_EXE_cambackup"))` as `bin`.
    pub async fn start(bin: &Path, config: &Path) -> Daemon {
        Self::start_with_env(bin, config, &[]).await
    }

    /// [`Daemon::start`] with extra environment variables.
    pub async fn start_with_env(bin: &Path, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut daemon = Self::spawn(bin, config, env);
        if let Err(e) = daemon.wait_healthy(START_TIMEOUT).await {
            // Drop prints the log while unwinding.
            panic!("cambackup daemon did not start: {e}");
        }
        daemon
    }

    /// [`Daemon::start`] under `runner`: the daemon's command line is appended to it, and the
    /// runner must `exec` it (so signals reach the daemon). [`crate::netns::Lab::runner`] is one.
    pub async fn start_under(bin: &Path, config: &Path, runner: &[String]) -> Daemon {
        let mut daemon = Self::spawn_under(bin, config, &[], runner);
        if let Err(e) = daemon.wait_healthy(START_TIMEOUT).await {
            panic!("cambackup daemon did not start: {e}");
        }
        daemon
    }

    /// Starts the process without waiting for it to be healthy (for tests of failing starts).
    pub fn spawn(bin: &Path, config: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::spawn_under(bin, config, env, &[])
    }

    fn spawn_under(bin: &Path, config: &Path, env: &[(&str, &str)], runner: &[String]) -> Daemon {
        let log_dir = tempfile::Builder::new()
            .prefix("cambackup-daemon-")
            .tempdir()
            .expect("create log dir");
        let socket = socket_from_config(config).unwrap_or_else(|| {
            panic!(
                "no [control] socket in {}; the testkit needs it to reach the daemon",
                config.display()
            )
        });
        let mut daemon = Daemon {
            bin: bin.to_owned(),
            config: config.to_owned(),
            socket,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            runner: runner.to_vec(),
            child: None,
            log_path: log_dir.path().join("daemon.log"),
            _log_dir: log_dir,
        };
        daemon.spawn_child();
        daemon
    }

    fn spawn_child(&mut self) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open daemon log");
        let _ = writeln!(
            log,
            "--- testkit: starting {} daemon --config {}",
            self.bin.display(),
            self.config.display()
        );
        let stdout = log.try_clone().expect("clone log handle");
        // The emulator (CAMBACKUP_TEST_RUNNER, e.g. qemu-user for an ARM build) wraps the
        // binary; a test's own runner (a network namespace) wraps both.
        let inner = command(&self.bin);
        let mut cmd = match self.runner.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(inner.get_program()).args(inner.get_args());
                c
            }
            None => Command::from(inner),
        };
        cmd.arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .env("CAMBACKUP_LOG", "debug")
            .env_remove("CAMBACKUP_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Polls `GET /v1/health` until it answers 200; `Err` if the process exits first or the
    /// timeout passes.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("it exited ({status}) before answering /v1/health"));
                }
            }
            if let Ok((200, _)) = self.try_api("GET", "/v1/health", None).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "GET /v1/health on {} did not answer 200 within {timeout:?}",
                    self.socket.display()
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The control socket path (from the config's `[control] socket`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The config file the daemon runs with.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The process ID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Everything the daemon wrote so far (all runs, with a marker line per start).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Where the log is written.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Calls the control API with an optional JSON body; returns the status and the JSON answer
    /// (`Null` for an empty body, a `String` for a non-JSON one). Panics if the socket cannot
    /// be reached, naming it.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_api(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.socket.display()))
    }

    /// [`Daemon::api`] that returns connection errors instead of panicking.
    pub async fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> io::Result<(u16, Value)> {
        let (headers, bytes): (&[(&str, &str)], Vec<u8>) = match &body {
            Some(v) => (
                &[("content-type", "application/json")],
                serde_json::to_vec(v).expect("serialize body"),
            ),
            None => (&[], Vec::new()),
        };
        let resp = self.raw(method, path, headers, bytes).await?;
        let json = if resp.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&resp.body).unwrap_or_else(|_| Value::String(resp.text()))
        };
        Ok((resp.status, json))
    }

    /// Sends any request (malformed JSON, odd headers, huge bodies) and returns the raw answer.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> io::Result<RawResponse> {
        let stream = UnixStream::connect(&self.socket).await?;
        let uri = format!("http://localhost{path}");
        send(stream, request(method, &uri, headers, body)).await
    }

    /// `GET /v1/status`, asserting 200.
    pub async fn status(&self) -> Value {
        let (code, body) = self.api("GET", "/v1/status", None).await;
        assert_eq!(code, 200, "GET /v1/status: {body}");
        body
    }

    /// Waits until `GET /v1/status` reports `state`; returns that status. Panics after
    /// `timeout` with the last status seen.
    pub async fn wait_for_state(&self, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await;
            if status["state"] == state {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("daemon not in state {state:?} after {timeout:?}; last status: {status:#}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Follows `GET /v1/events` (Server-Sent Events).
    pub async fn events(&self) -> io::Result<Events> {
        let stream = UnixStream::connect(&self.socket).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = request(
            "GET",
            "http://localhost/v1/events",
            &[("accept", "text/event-stream")],
            Bytes::new(),
        );
        let resp = sender.send_request(req).await.map_err(io::Error::other)?;
        if resp.status() != 200 {
            return Err(io::Error::other(format!(
                "GET /v1/events answered {}",
                resp.status()
            )));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut body = resp.into_body();
        tokio::spawn(async move {
            // Keeps `sender` alive so the connection stays open as long as events flow.
            let _sender = sender;
            let mut parser = SseParser::default();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    for event in parser.push(&data) {
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Events { rx })
    }

    /// Sends `signal` to the process (no-op if it is not running).
    pub fn kill(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child's PID; it has not been reaped (id() is
            // Some), so the PID cannot belong to another process.
            unsafe {
                libc::kill(pid as libc::pid_t, signal.raw());
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        tokio::time::timeout(timeout, child.wait()).await.ok()?.ok()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s; returns how it exited.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        self.kill(Signal::Term);
        if let Some(status) = self.wait_exit(Duration::from_secs(10)).await {
            return Some(status);
        }
        self.kill(Signal::Kill);
        self.wait_exit(Duration::from_secs(5)).await
    }

    /// [`Daemon::restart`] that reports a failed start instead of panicking (a soak restarts
    /// the daemon under conditions it may refuse to start in, e.g. a full state disk).
    pub async fn try_restart(&mut self, timeout: Duration) -> Result<(), String> {
        if self.pid().is_some() {
            self.stop().await;
        }
        self.spawn_child();
        self.wait_healthy(timeout).await
    }

    /// Whether the process has exited (reaping it if so); `false` while it runs.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// The peak resident set size so far (`VmHWM` from `/proc/PID/status`), in KiB; `None`
    /// once the process is gone.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Sets (or replaces) an environment variable for the next start: a daemon restarted
    /// under another `TZ` is a camera whose time zone was changed.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Stops the daemon if it runs (SIGTERM), starts it again with the same config and waits
    /// until it is healthy.
    pub async fn restart(&mut self) {
        if self.pid().is_some() {
            self.stop().await;
        }
        self.spawn_child();
        if let Err(e) = self.wait_healthy(START_TIMEOUT).await {
            panic!("cambackup daemon did not restart: {e}");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "--- cambackup daemon log ({}, last {} lines) ---\n{}\n--- end of daemon log ---",
                self.log_path.display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The `event:` field (`"message"` when absent).
    pub event: String,
    /// The `data:` field parsed as JSON (a `String` if it is not JSON).
    pub data: Value,
}

/// The event stream from [`Daemon::events`].
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event, or `None` if none came within `timeout` or the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Skips events until one called `event` satisfies `pred`; panics after `timeout`.
    pub async fn wait_for(
        &mut self,
        event: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(e) if e.event == event && pred(&e.data) => return e.data,
                Some(_) => {}
                None => panic!("no matching {event:?} event within {timeout:?}"),
            }
        }
    }
}

/// Incremental `text/event-stream` parser (only `event:` and `data:` matter here).
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    let data = self.data.join("\n");
                    out.push(Event {
                        event: self.event.take().unwrap_or_else(|| "message".into()),
                        data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                    });
                }
                self.event = None;
                self.data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = Some(v.trim_start().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                self.data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
            }
        }
        out
    }
}

/// Finds `socket = "..."` in the `[control]` section. A line scan rather than a TOML parser
/// keeps the testkit light; configs here come from [`crate::camera::FakeCamera`].
fn socket_from_config(config: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(config).ok()?;
    let mut in_control = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_control = line == "[control]";
        } else if in_control {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == "socket" {
                    let v = v.trim().trim_matches('"');
                    return Some(PathBuf::from(v.replace("\\\\", "\\").replace("\\\"", "\"")));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::FakeCamera;

    #[test]
    fn finds_the_socket_in_a_generated_config() {
        let cam = FakeCamera::new();
        let config = cam.write_config("http://127.0.0.1:1/files/");
        assert_eq!(socket_from_config(&config), Some(cam.socket_path()));
    }

    #[test]
    fn parses_server_sent_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: progress\ndata: {\"bytes_sent\"").is_empty());
        let events = p.push(b": 5}\n\n: comment\ndata: hi\n\n");
        assert_eq!(
            events,
            vec![
                Event {
                    event: "progress".into(),
                    data: serde_json::json!({"bytes_sent": 5})
                },
                Event {
                    event: "message".into(),
                    data: Value::String("hi".into())
                },
            ]
        );
    }

    /// Without the real daemon (written in parallel), `sh` stands in to check spawn, log
    /// capture, the early-exit report and signals.
    #[tokio::test]
    async fn reports_an_early_exit_and_keeps_the_log() {
        let cam = FakeCamera::new();
        let config = cam.write_config("http://127.0.0.1:1/files/");
        let script = cam.root().join("fake-daemon");
        fs::write(
            &script,
            "#!/bin/sh\necho \"args: $*\" >&2\necho \"log=$CAMBACKUP_LOG\" >&2\nexit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let mut d = Daemon::spawn(&script, &config, &[]);
        let err = d.wait_healthy(Duration::from_secs(5)).await.unwrap_err();
        assert!(err.contains("exited"), "{err}");
        assert!(d
            .log()
            .contains(&format!("args: daemon --config {}", config.display())));
        assert!(d.log().contains("log=debug"));
    }

    #[tokio::test]
    async fn signals_and_wait_exit() {
        let cam = FakeCamera::new();
        let config = cam.write_config("http://127.0.0.1:1/files/");
        let script = cam.root().join("sleeper");
        fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let mut d = Daemon::spawn(&script, &config, &[]);
        assert!(d.wait_exit(Duration::from_millis(100)).await.is_none());
        d.kill(Signal::Kill);
        let status = d.wait_exit(Duration::from_secs(5)).await.unwrap();
        assert!(!status.success());
        assert!(d.try_api("GET", "/v1/health", None).await.is_err());
    }

    /// A control API stand-in served in-process on the config's socket, so `api`, `raw`,
    /// `wait_healthy` and `restart` are exercised before the real daemon exists.
    #[tokio::test]
    async fn talks_http_over_the_unix_socket() {
        use hyper::service::service_fn;
        let cam = FakeCamera::new();
        let config = cam.write_config("http://127.0.0.1:1/files/");
        let listener = tokio::net::UnixListener::bind(cam.socket_path()).unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let answer = serde_json::json!({
                        "method": parts.method.as_str(),
                        "uri": parts.uri.to_string(),
                        "host": parts.headers.get("host").map(|h| h.to_str().unwrap()),
                        "body": String::from_utf8_lossy(&body),
                    });
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from(answer.to_string())),
                    ))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        let script = cam.root().join("sleeper");
        fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

        let mut d = Daemon::start(&script, &config).await;
        let (code, body) = d
            .api(
                "PATCH",
                "/v1/settings",
                Some(serde_json::json!({"auto_upload": true})),
            )
            .await;
        assert_eq!(code, 200);
        assert_eq!(body["method"], "PATCH");
        // Origin form on the request line, like curl --unix-socket.
        assert_eq!(body["uri"], "/v1/settings");
        assert_eq!(body["host"], "localhost");
        assert_eq!(body["body"], r#"{"auto_upload":true}"#);
        let raw = d
            .raw("POST", "/v1/uploads", &[], "{not json")
            .await
            .unwrap();
        assert!(raw.text().contains("{not json"));
        let first = d.pid();
        d.restart().await;
        assert_ne!(d.pid(), first);
        assert_eq!(d.log().matches("--- testkit: starting").count(), 2);
    }
}
