//! What tells the conditions loop that the device changed, so that it reads the device when
//! something happened instead of asking every few seconds (issue 29: a daemon that sleeps).
//!
//! Three sources, each a file descriptor on the runtime's own epoll (no thread of its own):
//! - **rtnetlink** (`NETLINK_ROUTE`, the groups of links, IPv4/IPv6 addresses and IPv4/IPv6
//!   routes): the kernel says when an interface goes up or down, an address comes or goes, or
//!   a route is added, removed or replaced. This is how production sees the network (`/proc`
//!   and `/sys` send no inotify event for the kernel's own changes), and the namespace tests
//!   too: the socket lives in the daemon's network namespace.
//! - **kobject uevents** (`NETLINK_KOBJECT_UEVENT`, the kernel's group): a `power_supply`
//!   device changed (charger plugged or unplugged, battery status or capacity: drivers call
//!   `power_supply_changed`, which sends `change`), or a `thermal` zone crossed a trip point.
//!   What a camera's kernel sends on plug and unplug.
//! - **inotify** on the directories of the files the readers read, where the file system
//!   tells: the firmware's flag files (`conditions.recording_flag`, `conditions.metered_flag`,
//!   on tmpfs), the DHCP lease directories, and `conditions.sysfs`/`conditions.proc` when they
//!   are plain directories (the tests' fake trees, or an agent's tree). When they are the real
//!   sysfs/procfs ([`kernel_fs`]) they are not watched: the kernel's changes to them come by
//!   netlink only.
//!
//! - **the clock**: a `CLOCK_REALTIME` timerfd armed with `TFD_TIMER_CANCEL_ON_SET`, which the
//!   kernel cancels when the wall clock is set (NTP's first step, `date -s`), and inotify on
//!   `/etc/localtime` (the firmware changing the zone): the schedule's window and the data
//!   plan's day are computed from the clock, so the loop's timer for them is computed anew.
//!   (Tests move the daemon's clock with a file, `clock::TEST_CLOCK_FILE_ENV`: watched too.)
//!
//! What nothing tells, and the conditions loop times instead (daemon.rs): on a real kernel the
//! temperature between trip points and the load average, and time itself (the schedule's
//! windows, the idle time after media writes, the data plan's day).
//!
//! Invariants: a notice only says "read again": the readers stay the one truth, so a notice
//! too many costs a read, and one too few is caught by the loop's slow timer; a source that
//! cannot be opened is logged once and left out; the daemon's own reads never cause a notice
//! (no `IN_OPEN`/`IN_ACCESS`/`IN_CLOSE_NOWRITE` in the mask).

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::config;

/// How long after the first notice the loop waits for the rest of a burst (a link that goes
/// down removes its addresses and routes; a test rewrites several files) before it reads:
/// one read for the burst, well inside the 1 s and 2 s promises.
pub const SETTLE: Duration = Duration::from_millis(50);

/// `<linux/netlink.h>` and `<linux/rtnetlink.h>`: kernel ABI, the same on every architecture
/// (named here because the libc crate does not have all of them for every target libc).
const NETLINK_ROUTE: libc::c_int = 0;
const NETLINK_KOBJECT_UEVENT: libc::c_int = 15;
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLMSG_OVERRUN: u16 = 4;
const IFLA_WIRELESS: u16 = 11;
/// The kernel's own uevent group (udev re-sends on group 2).
const UEVENT_KERNEL_GROUP: u32 = 1;
/// `SYSFS_MAGIC` and `PROC_SUPER_MAGIC` from `<linux/magic.h>`.
const SYSFS_MAGIC: u64 = 0x6265_6572;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;

/// What a watched directory's changes mean: entries created, removed or renamed, and files
/// written and closed. Not `IN_MODIFY`: a file is read after its writer closed it, not half
/// written.
const WATCH_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_CLOSE_WRITE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// What a watched file's changes mean (the zone file, the test clock): written, replaced.
const FILE_MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// The time zone file the C library reads (`clock::local`).
const LOCALTIME: &str = "/etc/localtime";

/// The notifiers of one daemon. Made inside the runtime (the descriptors join its epoll).
pub struct Changes {
    route: Option<AsyncFd<OwnedFd>>,
    uevent: Option<AsyncFd<OwnedFd>>,
    clock: Option<AsyncFd<OwnedFd>>,
    files: Option<Files>,
}

/// The inotify side: the descriptor, what to watch, and which names matter in each watched
/// directory.
struct Files {
    fd: AsyncFd<OwnedFd>,
    targets: Vec<Target>,
    /// Watch descriptor → the names that matter there (`None`: any).
    wanted: HashMap<i32, Vec<Option<OsString>>>,
}

/// One inotify watch to set: the path, the name that matters in it (`None`: any), the mask.
type Watch = (PathBuf, Option<OsString>, u32);

/// A path whose changes the readers care about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A directory of the readers' tree, and, `depth` levels down, its subdirectories (a
    /// power supply's or an interface's attributes): any change in them.
    Tree { dir: PathBuf, depth: u8 },
    /// One file (a flag file): changes of its name in its directory.
    File(PathBuf),
    /// A directory whose files all matter (the DHCP leases).
    Dir(PathBuf),
    /// A file whose content matters (the zone file, the test clock): the file itself, and its
    /// name in its directory (it may be replaced); a symlink's target too.
    Content(PathBuf),
}

impl Changes {
    /// Opens the netlink sockets and inotify for `cfg`'s paths. Never fails: a source that
    /// cannot be had is logged and left out (the loop's slow timer still reads).
    pub fn open(cfg: &config::Conditions) -> Changes {
        let groups = RTMGRP_LINK
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_ROUTE;
        let route = open_netlink(NETLINK_ROUTE, libc::SOCK_RAW, groups)
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot listen to the kernel's route and link changes \
                    (rtnetlink); the network is read at the slow poll only")
            })
            .ok();
        let uevent = open_netlink(
            NETLINK_KOBJECT_UEVENT,
            libc::SOCK_DGRAM,
            UEVENT_KERNEL_GROUP,
        )
        .and_then(|fd| {
            attach_uevent_filter(fd.get_ref())?;
            Ok(fd)
        })
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot listen to the kernel's device events \
                    (uevents); power changes are read at the slow poll only")
        })
        .ok();
        let clock = open_clock()
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot be told when the wall clock is set \
                    (timerfd); the schedule follows it at the next read")
            })
            .ok();
        let files = Files::open(targets(cfg))
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot watch the flag files (inotify); they are \
                    read at the slow poll only")
            })
            .ok();
        Changes {
            route,
            uevent,
            clock,
            files,
        }
    }

    /// Sets the inotify watches for what exists now: call after each read, as power supplies,
    /// interfaces and flag directories come and go.
    pub fn rewatch(&mut self) {
        if let Some(f) = &mut self.files {
            f.rewatch();
        }
    }

    /// Resolves when a source said something the readers care about, after [`SETTLE`] for the
    /// rest of its burst. Cancel-safe: dropped, it loses nothing the next call needs (at
    /// worst one read more).
    pub async fn changed(&mut self) {
        loop {
            let relevant = tokio::select! {
                g = readable(self.route.as_ref()) => drain(g, route_relevant),
                g = readable(self.uevent.as_ref()) => drain(g, uevent_relevant),
                g = readable(self.clock.as_ref()) => {
                    drain(g, |_| false);
                    // Cancelled (the clock was set): armed again. A timer that ran out instead
                    // (a 32-bit time_t in 2038) would only spin: given up.
                    if self.clock.as_ref().is_some_and(|c| arm_clock(c.get_ref()).is_err()) {
                        self.clock = None;
                    }
                    true
                }
                g = readable(self.files.as_ref().map(|f| &f.fd)) => match &self.files {
                    Some(f) => drain(g, |b| f.relevant(b)),
                    None => false,
                },
            };
            if relevant {
                break;
            }
        }
        tokio::time::sleep(SETTLE).await;
        // What came meanwhile is part of this burst: the read that follows sees it.
        use futures_util::FutureExt as _;
        for fd in [self.route.as_ref(), self.uevent.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Some(g) = fd.readable().now_or_never() {
                drain(g, |_| true);
            }
        }
        if let Some(f) = &self.files {
            if let Some(g) = f.fd.readable().now_or_never() {
                drain(g, |_| true);
            }
        }
    }
}

/// Ready to read, or never when the source is absent.
pub(crate) async fn readable(
    fd: Option<&AsyncFd<OwnedFd>>,
) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

/// Reads every waiting message; whether one of them is `relevant`. A lost message (the
/// socket's buffer overran: `ENOBUFS`) or an error counts as relevant: read again.
pub(crate) fn drain(
    guard: io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>>,
    relevant: impl Fn(&[u8]) -> bool,
) -> bool {
    let mut guard = match guard {
        Ok(g) => g,
        Err(_) => return true,
    };
    let fd = guard.get_inner().as_raw_fd();
    // Large enough for one uevent (the kernel caps them at 8 KiB) and for inotify's events;
    // a longer rtnetlink datagram is cut, and its first message is all that is looked at.
    let mut buf = [0u8; 8192];
    let mut any = false;
    loop {
        // SAFETY: reads at most `buf.len()` bytes into `buf` from a non-blocking descriptor.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            any |= relevant(&buf[..n as usize]);
            continue;
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n < 0 && err.raw_os_error() == Some(libc::ENOBUFS) {
            any = true;
            continue;
        }
        if n < 0 && err.kind() != io::ErrorKind::WouldBlock {
            any = true;
        }
        guard.clear_ready();
        return any;
    }
}

/// A netlink socket bound to the multicast `groups` of `protocol`, non-blocking, on the
/// runtime's epoll.
fn open_netlink(
    protocol: libc::c_int,
    kind: libc::c_int,
    groups: u32,
) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: socket(2) has no memory preconditions; a valid descriptor is owned from here.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel assigns one).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: `addr` is a sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    register(fd)
}

/// `fd` on the runtime's epoll, for reading.
pub(crate) fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    register_for(fd, tokio::io::Interest::READABLE)
}

/// `fd` on the runtime's epoll, for `interest`.
pub(crate) fn register_for(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open for as long as it lives, and always the same descriptor.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// A `CLOCK_REALTIME` timerfd that becomes readable when the wall clock is set.
fn open_clock() -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: timerfd_create has no memory preconditions; a valid descriptor is owned.
    let raw = unsafe {
        libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    arm_clock(&fd)?;
    register(fd)
}

/// Arms the timerfd at the end of time, to be cancelled when the clock is set.
fn arm_clock(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: an all-zero itimerspec is valid (no interval).
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    spec.it_value.tv_sec = libc::time_t::MAX;
    // SAFETY: a valid timerfd and an itimerspec we own; the old value is not asked for.
    let rc = unsafe {
        libc::timerfd_settime(
            fd.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET,
            &spec,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an rtnetlink datagram says something about links, addresses or routes. Wireless
/// events (`RTM_NEWLINK` carrying `IFLA_WIRELESS`: scan results, association steps) are not:
/// the link's state changes come as their own messages, and a Wi-Fi's background scans would
/// otherwise read the device every few seconds.
pub fn route_relevant(buf: &[u8]) -> bool {
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < 16 || len > rest.len() {
            // Cut (the buffer was too small) or garbled: read again to be sure.
            return true;
        }
        let msg = &rest[..len];
        match kind {
            RTM_NEWLINK if !carries_attribute(&msg[16..], 16, IFLA_WIRELESS) => return true,
            RTM_DELLINK | RTM_NEWADDR | RTM_DELADDR | RTM_NEWROUTE | RTM_DELROUTE
            | NLMSG_OVERRUN => return true,
            _ => {}
        }
        rest = &rest[align4(len).min(rest.len())..];
    }
    false
}

/// Whether the attributes after a `header`-byte family header in `payload` include `wanted`.
fn carries_attribute(payload: &[u8], header: usize, wanted: u16) -> bool {
    let Some(mut rest) = payload.get(header..) else {
        return false;
    };
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 {
            return false;
        }
        if kind == wanted {
            return true;
        }
        rest = &rest[align4(len).min(rest.len())..];
    }
    false
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// How far into a uevent [`uevent_filter`] looks for its patterns: the first line,
/// `ACTION@DEVPATH`, holds the device's path, which names its class directory
/// (`.../power_supply/ac`, `/devices/virtual/thermal/thermal_zone0`); paths are far shorter.
const UEVENT_SCAN: u32 = 320;

/// A classic BPF socket filter that keeps only the uevents whose first [`UEVENT_SCAN`] bytes
/// hold `_sup` (`power_supply`) or `herm` (`thermal`), in the kernel: the others (a loop
/// device, a FUSE mount, a USB stick) then never wake the daemon. A false match costs only a
/// read; [`uevent_relevant`] still decides. cBPF cannot loop, so the scan is unrolled, and its
/// jumps reach at most 255 instructions ahead: an `accept` follows every 64 offsets. A load past
/// the message's end ends the program with 0: dropped.
fn uevent_filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JA: u16 = 0x05;
    const RET_K: u16 = 0x06;
    const PATTERNS: [u32; 2] = [u32::from_be_bytes(*b"_sup"), u32::from_be_bytes(*b"herm")];
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = Vec::new();
    let mut offset = 0;
    while offset < UEVENT_SCAN {
        let block = (UEVENT_SCAN - offset).min(64);
        let accept = prog.len() + block as usize * 3 + 1;
        for k in offset..offset + block {
            prog.push(op(LD_W_ABS, 0, 0, k));
            for p in PATTERNS {
                let jt = (accept - prog.len() - 1) as u8;
                prog.push(op(JEQ_K, jt, 0, p));
            }
        }
        prog.push(op(JA, 0, 0, 1));
        prog.push(op(RET_K, 0, 0, u32::MAX));
        offset += block;
    }
    prog.push(op(RET_K, 0, 0, 0));
    prog
}

/// Attaches [`uevent_filter`] to `fd`.
fn attach_uevent_filter(fd: &OwnedFd) -> io::Result<()> {
    let mut filter = uevent_filter();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a kernel uevent (`ACTION@DEVPATH` then `KEY=VALUE` fields, NUL-separated) is about
/// a power supply or a thermal zone.
pub fn uevent_relevant(buf: &[u8]) -> bool {
    buf.split(|&b| b == 0)
        .any(|f| f == b"SUBSYSTEM=power_supply" || f == b"SUBSYSTEM=thermal")
}

/// Whether `path` is on the kernel's sysfs or procfs, whose files change without inotify
/// events (their changes come by netlink, or not at all).
pub fn kernel_fs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is valid; statfs writes it and reads the NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    // The field's type differs between C libraries and architectures; the magic numbers fit
    // in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u64 & 0xffff_ffff;
    magic == SYSFS_MAGIC || magic == PROC_SUPER_MAGIC
}

/// What to watch for `cfg`'s paths.
fn targets(cfg: &config::Conditions) -> Vec<Target> {
    let mut t = Vec::new();
    if !kernel_fs(&cfg.sysfs) {
        for class in ["class/power_supply", "class/net", "class/thermal"] {
            t.push(Target::Tree {
                dir: cfg.sysfs.join(class),
                depth: 1,
            });
        }
    }
    if !kernel_fs(&cfg.proc) {
        t.push(Target::Tree {
            dir: cfg.proc.clone(),
            depth: 0,
        });
        t.push(Target::Tree {
            dir: cfg.proc.join("net"),
            depth: 0,
        });
    }
    t.push(Target::File(cfg.recording_flag.clone()));
    if let Some(f) = &cfg.metered_flag {
        t.push(Target::File(f.clone()));
    }
    for dir in [&cfg.networkd_leases, &cfg.dhcp_vendor_dir]
        .into_iter()
        .flatten()
    {
        t.push(Target::Dir(dir.clone()));
    }
    t.push(Target::Content(PathBuf::from(LOCALTIME)));
    if let Some(file) = crate::clock::test_clock_file() {
        t.push(Target::Content(file.to_path_buf()));
    }
    t
}

/// The closest directory at or above `path` that exists, and the name below it on the way
/// to `path` (`None` when `path` itself exists).
fn nearest_dir(path: &Path) -> Option<(PathBuf, Option<OsString>)> {
    let mut below = None;
    let mut p = path;
    loop {
        if p.is_dir() {
            return Some((p.to_path_buf(), below));
        }
        below = p.file_name().map(|n| n.to_os_string());
        p = p.parent()?;
    }
}

impl Files {
    fn open(targets: Vec<Target>) -> io::Result<Files> {
        // SAFETY: inotify_init1 has no memory preconditions; a valid descriptor is owned.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = register(unsafe { OwnedFd::from_raw_fd(raw) })?;
        let mut f = Files {
            fd,
            targets,
            wanted: HashMap::new(),
        };
        f.rewatch();
        Ok(f)
    }

    /// The watches to set now.
    fn watches(&self) -> Vec<Watch> {
        let mut out = Vec::new();
        let in_dir = |out: &mut Vec<Watch>, file: &Path| {
            let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
                return;
            };
            match nearest_dir(parent) {
                Some((d, None)) => out.push((d, Some(name.to_os_string()), WATCH_MASK)),
                Some((d, below)) => out.push((d, below, WATCH_MASK)),
                None => {}
            }
        };
        for t in &self.targets {
            match t {
                Target::Tree { dir, depth } => match nearest_dir(dir) {
                    Some((d, None)) => {
                        if *depth > 0 {
                            if let Ok(entries) = std::fs::read_dir(&d) {
                                for e in entries.flatten() {
                                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                                        out.push((e.path(), None, WATCH_MASK));
                                    }
                                }
                            }
                        }
                        out.push((d, None, WATCH_MASK));
                    }
                    Some((d, name)) => out.push((d, name, WATCH_MASK)),
                    None => {}
                },
                Target::File(path) => in_dir(&mut out, path),
                Target::Dir(dir) => {
                    if let Some((d, below)) = nearest_dir(dir) {
                        out.push((d, below, WATCH_MASK));
                    }
                }
                Target::Content(path) => {
                    in_dir(&mut out, path);
                    out.push((path.clone(), None, FILE_MASK));
                    if let Ok(target) = std::fs::canonicalize(path) {
                        if &target != path {
                            in_dir(&mut out, &target);
                        }
                    }
                }
            }
        }
        out
    }

    fn rewatch(&mut self) {
        let mut wanted: HashMap<i32, Vec<Option<OsString>>> = HashMap::new();
        for (path, name, mask) in self.watches() {
            let Ok(c) = CString::new(path.into_os_string().into_vec()) else {
                continue;
            };
            // SAFETY: a valid inotify descriptor and a NUL-terminated path. Watching a path
            // already watched returns its watch descriptor again.
            let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
            if wd >= 0 {
                wanted.entry(wd).or_default().push(name);
            }
        }
        for old in self.wanted.keys() {
            if !wanted.contains_key(old) {
                // SAFETY: removing a watch of our own descriptor; an already gone one fails
                // harmlessly.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), *old) };
            }
        }
        self.wanted = wanted;
    }

    /// Whether a buffer of inotify events holds one the readers care about.
    fn relevant(&self, buf: &[u8]) -> bool {
        inotify_events(buf).any(|(wd, mask, name)| {
            if mask
                & (libc::IN_Q_OVERFLOW
                    | libc::IN_IGNORED
                    | libc::IN_DELETE_SELF
                    | libc::IN_MOVE_SELF)
                != 0
            {
                return true;
            }
            self.wanted.get(&wd).is_some_and(|names| {
                names
                    .iter()
                    .any(|n| n.as_ref().is_none_or(|n| n.as_bytes() == name))
            })
        })
    }
}

/// The `(wd, mask, name)` of each event in an inotify read.
pub(crate) fn inotify_events(buf: &[u8]) -> impl Iterator<Item = (i32, u32, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let wd = i32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let mask = u32::from_ne_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let len = u32::from_ne_bytes([rest[12], rest[13], rest[14], rest[15]]) as usize;
        let end = (16 + len).min(rest.len());
        let raw = &rest[16..end];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        rest = &rest[end..];
        Some((wd, mask, name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rtnetlink message of `kind` with a 16-byte family header and `attrs`.
    fn nlmsg(kind: u16, attrs: &[u16]) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        for a in attrs {
            body.extend_from_slice(&8u16.to_ne_bytes());
            body.extend_from_slice(&a.to_ne_bytes());
            body.extend_from_slice(&[1, 2, 3, 4]);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn route_messages_that_matter() {
        let rows: &[(&str, Vec<u8>, bool)] = &[
            ("a route added", nlmsg(RTM_NEWROUTE, &[]), true),
            ("a route removed", nlmsg(RTM_DELROUTE, &[]), true),
            ("an address", nlmsg(RTM_NEWADDR, &[]), true),
            ("an address gone", nlmsg(RTM_DELADDR, &[]), true),
            ("a link's state", nlmsg(RTM_NEWLINK, &[3, 16]), true),
            ("a link gone", nlmsg(RTM_DELLINK, &[]), true),
            (
                "a Wi-Fi scan event",
                nlmsg(RTM_NEWLINK, &[3, IFLA_WIRELESS]),
                false,
            ),
            ("a neighbour", nlmsg(28, &[]), false),
            ("cut short", nlmsg(RTM_NEWLINK, &[3])[..20].to_vec(), true),
            ("nothing", Vec::new(), false),
        ];
        for (name, buf, want) in rows {
            assert_eq!(route_relevant(buf), *want, "{name}");
        }
        let mut two = nlmsg(RTM_NEWLINK, &[IFLA_WIRELESS]);
        two.extend(nlmsg(RTM_DELROUTE, &[]));
        assert!(
            route_relevant(&two),
            "the second message of a datagram counts"
        );
    }

    #[test]
    fn uevents_of_power_supplies_and_thermal_zones() {
        let ev = |s: &str| s.replace('|', "\0").into_bytes();
        assert!(uevent_relevant(&ev(
            "change@/devices/platform/ac|ACTION=change|SUBSYSTEM=power_supply|POWER_SUPPLY_ONLINE=0"
        )));
        assert!(uevent_relevant(&ev("change@/x|SUBSYSTEM=thermal|TRIP=1")));
        assert!(!uevent_relevant(&ev(
            "add@/devices/usb1|ACTION=add|SUBSYSTEM=usb"
        )));
        assert!(!uevent_relevant(&ev("change@/x|SUBSYSTEM=power_supply_x")));
    }

    /// The socket filter passes what the daemon wants from the kernel's uevents and drops
    /// the rest before it wakes anyone (on a datagram socket pair: same filter, same checks).
    #[test]
    fn the_uevent_filter_keeps_power_supplies_and_thermal_zones_only() {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two new descriptors into `fds`.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: both are new descriptors owned here.
        let (tx, rx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        attach_uevent_filter(&rx).unwrap();
        let ev = |s: &str| s.replace('|', "\0").into_bytes();
        let long = format!("add@/devices/{}|SUBSYSTEM=block", "x/".repeat(200));
        let sent = [
            ev("change@/devices/platform/axp20x/axp20x-ac/power_supply/ac|ACTION=change|SUBSYSTEM=power_supply|POWER_SUPPLY_ONLINE=0"),
            ev("add@/devices/virtual/bdi/7:0-fuseblk|ACTION=add|SUBSYSTEM=bdi"),
            ev("change@/devices/virtual/thermal/thermal_zone0|SUBSYSTEM=thermal"),
            ev("change@/devices/virtual/block/loop0|SUBSYSTEM=block|DISK_MEDIA_CHANGE=1"),
            ev(&long),
            ev("x"),
        ];
        for m in &sent {
            // SAFETY: sends `m`'s bytes on our own socket.
            let n = unsafe { libc::send(tx.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
            assert_eq!(n, m.len() as isize);
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`, non-blocking.
            let n = unsafe { libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            got.push(buf[..n as usize].to_vec());
        }
        assert_eq!(got, vec![sent[0].clone(), sent[2].clone()]);
    }

    #[test]
    fn the_real_kernel_trees_are_not_watched() {
        assert!(kernel_fs(Path::new("/proc")));
        if Path::new("/sys/class").is_dir() {
            assert!(kernel_fs(Path::new("/sys")));
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(!kernel_fs(dir.path()));
    }

    #[test]
    fn a_missing_path_is_watched_from_its_nearest_directory() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("camera/state/recording");
        assert_eq!(
            nearest_dir(flag.parent().unwrap()),
            Some((dir.path().to_path_buf(), Some("camera".into())))
        );
        std::fs::create_dir_all(flag.parent().unwrap()).unwrap();
        assert_eq!(
            nearest_dir(flag.parent().unwrap()),
            Some((flag.parent().unwrap().to_path_buf(), None))
        );
    }

    /// The flag file's name matters in its directory, others' do not; a fake sysfs tree's
    /// every change does, down to a new supply's attributes.
    #[tokio::test]
    async fn inotify_tells_the_flag_file_and_the_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(sys.join("class/power_supply/AC")).unwrap();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        let cfg = config::Conditions {
            sysfs: sys.clone(),
            proc: dir.path().join("proc"),
            recording_flag: dir.path().join("run/recording"),
            ..Default::default()
        };
        let mut c = Changes::open(&cfg);
        // Whether a notice that matters comes within `within` (the reactor runs meanwhile).
        async fn within(c: &Changes, within: Duration) -> bool {
            let f = c.files.as_ref().unwrap();
            let deadline = tokio::time::Instant::now() + within;
            while let Ok(g) = tokio::time::timeout_at(deadline, f.fd.readable()).await {
                if drain(g, |b| f.relevant(b)) {
                    return true;
                }
            }
            false
        }
        async fn quiet(c: &Changes) -> bool {
            !within(c, Duration::from_millis(300)).await
        }
        async fn told(c: &Changes) -> bool {
            within(c, Duration::from_secs(5)).await
        }
        assert!(quiet(&c).await);
        std::fs::write(dir.path().join("run/other"), "").unwrap();
        assert!(quiet(&c).await, "another file in the flag's directory");
        std::fs::write(&cfg.recording_flag, "").unwrap();
        assert!(told(&c).await, "the flag file");
        // Reading is not a change.
        let _ = std::fs::read(sys.join("class/power_supply/AC/online"));
        assert!(quiet(&c).await);
        std::fs::write(sys.join("class/power_supply/AC/online"), "1\n").unwrap();
        assert!(told(&c).await, "an attribute of a supply");
        std::fs::create_dir_all(sys.join("class/power_supply/battery")).unwrap();
        assert!(told(&c).await, "a new supply");
        c.rewatch();
        std::fs::write(sys.join("class/power_supply/battery/capacity"), "50\n").unwrap();
        assert!(told(&c).await, "the new supply's attribute, once watched");
    }
}
