//! A real haproxy in front of a test server on loopback, with the test's own rules: what a
//! maker's tier puts between the camera and the tus server (a limit on request bodies, say).
//!
//! The listening socket is made here, on a port the kernel picks, and handed to haproxy as an
//! inherited descriptor (`bind fd@3`): no port is chosen and released, so tests run in
//! parallel without a race for it. haproxy logs each request (`option httplog`) to its stderr,
//! kept in a file the test reads ([`Haproxy::log`]).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// haproxy, killed on drop.
pub struct Haproxy {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts haproxy forwarding to `backend`, with `rules` (haproxy lines such as
    /// `http-request deny deny_status 413 if { req.hdr_val(content-length) gt 8388608 }`) in
    /// its frontend. Panics, saying so, when haproxy is not installed (`.ci/run` installs it).
    pub fn start(backend: SocketAddr, rules: &[&str]) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let mut cfg = String::from(
            "global\n  log stderr format raw local0\ndefaults\n  mode http\n  log global\n  \
             option httplog\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
             frontend f\n  bind fd@3\n",
        );
        for r in rules {
            cfg.push_str(&format!("  {r}\n"));
        }
        cfg.push_str(&format!(
            "  default_backend b\nbackend b\n  server s {backend}\n"
        ));
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).expect("write haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let err = std::fs::File::create(&log).expect("haproxy.log");
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(err.try_clone().expect("dup"))
            .stderr(err);
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl).
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    // dup2 onto itself keeps FD_CLOEXEC: clear it by hand.
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot start haproxy (apt install haproxy; .ci/run does): {e}"),
        };
        drop(listener);
        // Ready when it answers: its own 503 (backend down) or the backend's answer.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "haproxy exited ({st}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "haproxy did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// haproxy's log so far: one line per request (`option httplog`), with its status.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Requests haproxy answered `status` itself or passed on with that answer, from its log.
    pub fn answered(&self, status: u16) -> usize {
        // httplog: `... frontend backend/server Tq/Tw/Tc/Tr/Ta STATUS BYTES ...`.
        self.log()
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.windows(2)
                    .any(|w| w[0].split('/').count() == 5 && w[1].parse::<u16>() == Ok(status))
            })
            .count()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
