//! The maker's `media.delete_command`, run for one file: no shell, the path as its one argument.
//!
//! Invariants: nothing here waits on the command without a limit. Both pipes are drained while
//! it runs (a command that writes more than a pipe holds, 64 KiB on Linux, would otherwise
//! block and never exit), keeping only the first [`HEAD_BYTES`] of stderr for the log. The
//! command runs in a process group of its own, and that whole group is killed at the time
//! limit, when the pass is stopped (consent off, unpairing, pairing, shutdown), and as soon as
//! the command itself has exited: a background child it left holding a pipe ends with it
//! rather than keeping the freeing pass waiting on a read.

use std::io::{self, Read as _};
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How much of the command's stderr is kept for the log and the pass report.
pub const HEAD_BYTES: usize = 4096;

/// How long one wait for output or an exit lasts before the limits are looked at again.
const TICK: Duration = Duration::from_millis(20);

/// Why the command did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It could not be started or waited for.
    Run(String),
    /// It exited other than 0; the head of its stderr.
    Exit { status: String, stderr: String },
    /// It was still running at the limit, and was killed with its process group.
    TimedOut(Duration),
    /// The pass was stopped while it ran; it was killed with its process group.
    Stopped,
}

impl Failure {
    /// One line for the log and the pass report, naming the command.
    pub fn describe(&self, cmd: &Path) -> String {
        let cmd = cmd.display();
        match self {
            Failure::Run(e) => format!("cannot run {cmd}: {e}"),
            Failure::Exit { status, stderr } if stderr.is_empty() => {
                format!("{cmd} failed ({status})")
            }
            Failure::Exit { status, stderr } => format!("{cmd} failed ({status}): {stderr}"),
            Failure::TimedOut(limit) => {
                format!("{cmd} did not finish within {limit:?} and was killed")
            }
            Failure::Stopped => {
                format!("freeing space was stopped while {cmd} ran; it was killed")
            }
        }
    }
}

/// Runs `cmd path`, waiting at most `limit` and stopping early when `stop` is cancelled.
pub fn run(
    cmd: &Path,
    path: &Path,
    limit: Duration,
    stop: &CancellationToken,
) -> Result<(), Failure> {
    let mut child = Command::new(cmd)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: the group's id is the child's pid, and a kill reaches every process
        // the command started, whatever their pipes.
        .process_group(0)
        .spawn()
        .map_err(|e| Failure::Run(e.to_string()))?;
    let group = Group(child.id() as libc::pid_t);
    let mut out = Drain::new(child.stdout.take());
    let mut err = Drain::new(child.stderr.take());
    let deadline = Instant::now() + limit;
    let ended = loop {
        wait_readable(&[&out, &err], TICK);
        out.read_available(0);
        err.read_available(HEAD_BYTES);
        match group.leader_exited() {
            Ok(true) => break None,
            Ok(false) => {}
            Err(e) => break Some(Failure::Run(format!("waiting for it: {e}"))),
        }
        if stop.is_cancelled() {
            break Some(Failure::Stopped);
        }
        if Instant::now() >= deadline {
            break Some(Failure::TimedOut(limit));
        }
    };
    // What the command wrote before it exited is in the pipes: keep it, then end the group
    // (the leader is not reaped yet, so its id still names this group) and stop reading.
    out.read_available(0);
    err.read_available(HEAD_BYTES);
    group.kill();
    let status = reap(&mut child);
    if let Some(f) = ended {
        return Err(f);
    }
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(Failure::Exit {
            status: s.to_string(),
            stderr: err.text(),
        }),
        Err(e) => Err(Failure::Run(format!("waiting for it: {e}"))),
    }
}

/// Reaps the command (it has exited or was killed).
fn reap(child: &mut Child) -> io::Result<ExitStatus> {
    child.wait()
}

/// The command's process group (its id is the command's pid).
struct Group(libc::pid_t);

impl Group {
    /// Whether the command has exited, without reaping it: until it is reaped its pid, and so
    /// the group's id, cannot be given to another process.
    fn leader_exited(&self) -> io::Result<bool> {
        // SAFETY: a zeroed `siginfo_t` for the call to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is writable memory of the right type; the pid is our own child's.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.0 as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `waitid` returned 0, so `info` is filled in (`si_pid` 0: no change yet).
        Ok(unsafe { info.si_pid() } != 0)
    }

    /// SIGKILL to every process in the group (none left is fine).
    fn kill(&self) {
        // SAFETY: a plain system call on our child's group.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

/// One of the command's pipes, read without blocking; keeps a bounded head of what came.
struct Drain {
    pipe: Option<Box<dyn ReadFd>>,
    head: Vec<u8>,
    cut: bool,
}

/// A pipe's read end.
trait ReadFd: io::Read + std::os::fd::AsRawFd {}
impl<T: io::Read + std::os::fd::AsRawFd> ReadFd for T {}

impl Drain {
    fn new(pipe: Option<impl ReadFd + 'static>) -> Drain {
        if let Some(p) = &pipe {
            set_nonblocking(p.as_raw_fd());
        }
        Drain {
            pipe: pipe.map(|p| Box::new(p) as Box<dyn ReadFd>),
            head: Vec::new(),
            cut: false,
        }
    }

    fn fd(&self) -> Option<RawFd> {
        self.pipe.as_ref().map(|p| p.as_raw_fd())
    }

    /// Reads what is there now, keeping up to `keep` bytes in all; the rest is dropped.
    fn read_available(&mut self, keep: usize) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                // End of file: every writer closed it.
                Ok(0) => {
                    self.pipe = None;
                    return;
                }
                Ok(n) => {
                    let room = keep.saturating_sub(self.head.len());
                    self.head.extend_from_slice(&buf[..n.min(room)]);
                    self.cut |= n > room;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.pipe = None;
                    return;
                }
            }
        }
    }

    /// The head kept, as one trimmed line of text.
    fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.head);
        let s = s.trim();
        if self.cut {
            format!("{s} [...]")
        } else {
            s.to_string()
        }
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: plain fcntl calls on a descriptor the caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Waits until one of the open pipes has something to read (or its writers closed it), at most
/// `wait`; with both closed it just sleeps.
fn wait_readable(drains: &[&Drain], wait: Duration) {
    let mut fds: Vec<libc::pollfd> = drains
        .iter()
        .filter_map(|d| d.fd())
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of `fds.len()` entries for the call's duration.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            wait.as_millis() as libc::c_int,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell command as the maker's command would be: a script file run without a shell.
    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("delete.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn never() -> CancellationToken {
        CancellationToken::new()
    }

    #[test]
    fn a_command_that_writes_much_and_exits_0_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("A.JPG");
        std::fs::write(&file, b"x").unwrap();
        // 1 MiB to each pipe: sixteen times what a pipe holds.
        let cmd = script(
            dir.path(),
            "head -c 1048576 /dev/zero >&2\nhead -c 1048576 /dev/zero\nrm -- \"$1\"",
        );
        run(&cmd, &file, Duration::from_secs(20), &never()).unwrap();
        assert!(!file.exists());
    }

    #[test]
    fn a_failure_keeps_the_head_of_what_it_said() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = script(
            dir.path(),
            "echo 'the firmware refuses: file locked' >&2\nhead -c 100000 /dev/zero | tr '\\0' x >&2\nexit 3",
        );
        let f = run(&cmd, Path::new("/x"), Duration::from_secs(20), &never()).unwrap_err();
        let Failure::Exit { status, stderr } = &f else {
            panic!("{f:?}")
        };
        assert!(status.contains('3'), "{status}");
        assert!(
            stderr.starts_with("the firmware refuses: file locked"),
            "{stderr}"
        );
        assert!(stderr.len() <= HEAD_BYTES + 10 && stderr.ends_with("[...]"));
        assert!(f.describe(&cmd).contains("failed"), "{}", f.describe(&cmd));
    }

    #[test]
    fn a_background_child_holding_stderr_does_not_hold_the_pass() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let cmd = script(
            dir.path(),
            &format!(
                "sleep 600 &\necho $! > '{}'\necho refused >&2\nexit 1",
                pidfile.display()
            ),
        );
        // The limit is far: the answer comes when the command exits, not then.
        let f = run(&cmd, Path::new("/x"), Duration::from_secs(600), &never()).unwrap_err();
        assert!(
            matches!(&f, Failure::Exit { stderr, .. } if stderr == "refused"),
            "{f:?}"
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !alive(pid),
            "the background child was killed with its group"
        );
    }

    #[test]
    fn the_limit_and_a_stop_kill_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let cmd = script(
            dir.path(),
            &format!("sleep 600 &\necho $! > '{}'\nwait", pidfile.display()),
        );
        let limit = Duration::from_secs(1);
        let f = run(&cmd, Path::new("/x"), limit, &never()).unwrap_err();
        assert_eq!(f, Failure::TimedOut(limit));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!alive(pid), "the child was killed with the command");

        std::fs::remove_file(&pidfile).unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let pf = pidfile.clone();
        let t = std::thread::spawn(move || {
            // Stopped once the command is surely running.
            while !pf.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
            s.cancel();
        });
        let f = run(&cmd, Path::new("/x"), Duration::from_secs(600), &stop).unwrap_err();
        t.join().unwrap();
        assert_eq!(f, Failure::Stopped);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!alive(pid));
    }

    /// Whether `pid` still names a live process once a SIGKILL had time to land (a zombie,
    /// killed and not yet reaped by its new parent, counts as dead).
    fn alive(pid: i32) -> bool {
        let live = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => false,
            Ok(s) => !s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
        };
        let end = Instant::now() + Duration::from_secs(5);
        while live() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        live()
    }
}
