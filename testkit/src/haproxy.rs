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
        // At 10 or above: the child's stdio is set up on 0-2 before `pre_exec` runs, and a
        // descriptor dup2-ed onto itself keeps FD_CLOEXEC. The copy is closed on exec.
        // SAFETY: fcntl on a descriptor this function owns.
        let fd = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        assert!(
            fd >= 10,
            "dup the listener: {}",
            std::io::Error::last_os_error()
        );
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(err.try_clone().expect("dup"))
            .stderr(err);
        // SAFETY: between fork and exec only dup2, async-signal-safe. Its copy on 3 has
        // FD_CLOEXEC cleared; `fd` itself closes on exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        // SAFETY: the copy made above, owned here (the child has its own on 3).
        unsafe { libc::close(fd) };
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => panic!("cannot start haproxy (apt install haproxy; .ci/run does): {e}"),
        };
        // The socket listens already (the kernel queues connections before haproxy runs):
        // ready when haproxy answers a request over it, whatever it answers.
        if let Err(e) = answers(addr) {
            let _ = child.kill();
            let st = child.wait().ok();
            panic!(
                "haproxy did not answer ({e}; exit: {st:?}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        drop(listener);
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

    /// Requests haproxy refused itself by a rule (`deny`: its answer; `reject`: the connection
    /// closed without one), from its log: termination state `PR--`.
    pub fn refused(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .any(|f| f.len() == 4 && f.starts_with("PR"))
            })
            .count()
    }
}

/// One `GET /` over a new connection, answered (any status line) within 10 s.
fn answers(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut head = [0u8; 7];
    s.read_exact(&mut head)?;
    if &head == b"HTTP/1." {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("not HTTP: {head:?}")))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
