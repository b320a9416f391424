//! A trial's schedule, drawn from its seed alone: which server, which files, and which faults
//! at which instants. Pure: the same seed gives the same plan on any machine, so a failing
//! trial replays with `--seed S --trials 1` (the instants are the same; what the daemon is
//! doing at each instant varies a little with the machine's speed).

use std::time::Duration;

/// Which tus server the trial runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// testkit's receiver (fault injection: status codes, 404/410, forgetting uploads).
    Receiver,
    /// The reference @tus/server (interop/server.mjs): faults only from the proxy and restarts.
    TusNode,
}

/// When a `kill -9` lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillAt {
    /// At the scheduled instant, whatever the daemon is doing.
    Now,
    /// As soon as the server sees a creation (POST) after the instant.
    Creation,
    /// As soon as a PATCH body is streaming after the instant.
    MidPatch,
    /// As soon as an upload completes after the instant.
    Completion,
}

/// When a power cut (issue 26) lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutAt {
    /// At the scheduled instant, whatever the daemon is doing (a ledger append, a scan's
    /// batch, a freeing pass...).
    Now,
    /// As soon as the server sees a creation (POST): its URL is being recorded.
    Creation,
    /// As soon as the server has answered a PATCH: between a chunk and its record.
    Chunk,
    /// As soon as an upload completes: during `done`.
    Completion,
    /// Right after the user's unpairing was answered 200.
    Unpair,
    /// Right after the user's settings change (consent withdrawn) was answered 200.
    Settings,
    /// As soon as a file freed to make room is gone from the card (the trial's card is a small
    /// tmpfs, freeing configured, made low by a fill file): between the deletion and its record.
    Freeing,
}

/// One fault; the ones with a duration end by themselves (and at the latest when the trial heals).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `kill -9`, restarted after `restart_after`.
    Kill { at: KillAt, restart_after: Duration },
    /// SIGTERM (graceful), restarted after `restart_after`.
    Term { restart_after: Duration },
    /// Added latency in the proxy.
    Latency { latency: Duration, lasts: Duration },
    /// A bandwidth cap in the proxy, bytes per second.
    Bandwidth { bytes_per_sec: u64, lasts: Duration },
    /// Every open connection reset.
    ConnReset,
    /// Connections go silent (half-open), then are dead.
    HalfOpen { lasts: Duration },
    /// The next answer is cut after this many bytes.
    TruncatedAnswer { bytes: u64 },
    /// New connections refused (reset on accept).
    Refuse { lasts: Duration },
    /// A burst of 500/502/503 (receiver only).
    ServerErrors { count: usize },
    /// 429 or 503 with Retry-After (receiver only).
    RetryAfter {
        status: u16,
        secs: u64,
        count: usize,
    },
    /// 404 or 410 for an upload the daemon knows (receiver only).
    UploadGone { status: u16 },
    /// The server restarts: the receiver forgets unfinished uploads; @tus/server restarts on
    /// its store (on another port, which the proxy follows).
    ServerRestart,
    /// The card is taken out, and put back after `lasts`.
    CardOut { lasts: Duration },
    /// A new file appears.
    AddFile { len: u64, content: u64 },
    /// A file is rewritten with other content (same name), pick by index.
    RewriteFile { pick: usize, len: u64, content: u64 },
    /// A file is deleted, pick by index.
    DeleteFile { pick: usize },
    /// The charger is unplugged for a while.
    Charger { lasts: Duration },
    /// The Wi-Fi goes down for a while.
    Wifi { lasts: Duration },
    /// The camera records for a while.
    Recording { lasts: Duration },
    /// The user withdraws consent for a while.
    Consent { lasts: Duration },
    /// The state directory's file system fills up for a while (needs root for the tmpfs).
    DiskFull { lasts: Duration },
    /// A file written while the clock said 1970 (no RTC battery): its mtime is in 1970.
    ClockPast { len: u64, content: u64 },
    /// A file whose mtime is ahead of the daemon's clock (stamped by a clock NTP later moved
    /// back, or seen by a daemon whose clock is still at 1970).
    ClockFuture {
        len: u64,
        content: u64,
        ahead: Duration,
    },
    /// Issue 17: the card is swapped for another whose files reuse the first card's storage
    /// paths with other bytes and sizes (`content` seeds them), then swapped back after `lasts`.
    CardSwap { lasts: Duration, content: u64 },
    /// Issue 17: while the daemon runs, a link on the card to a directory outside it holding a
    /// photo, and a link looping back into the card.
    Symlinks { content: u64 },
    /// Issue 17: a directory whose name is not UTF-8 (`Caf\xe9`) with a photo in it; with
    /// `backslash`, the photo's name has a backslash too.
    NonUtf8Dir {
        len: u64,
        content: u64,
        backslash: bool,
    },
    /// Issue 17: SIGTERM, garbage over `cambackup.db` (its `-wal` and `-shm` removed), restart.
    CorruptDb { garbage: u64 },
    /// Issue 17: SIGTERM, zeros over `credentials.json`, restart; the harness pairs again.
    ZeroedCredentials,
    /// Issue 22: the state disk fills, the user withdraws consent (it must answer 200 and take
    /// effect), the daemon restarts on the still-full disk (consent must still be off), and
    /// the disk is given room again after `lasts`.
    WithdrawFullDisk { lasts: Duration },
    /// Issue 26: the power goes (the state dir is on testkit's power-cut layer): `kill -9`,
    /// everything not synced is dropped, the last unsynced write torn to `tear` of its bytes
    /// (`None`: not at all); restarted after `restart_after`.
    PowerCut {
        at: CutAt,
        tear: Option<f64>,
        restart_after: Duration,
    },
}

impl Fault {
    /// The name in the report's "faults by kind".
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill {
                at: KillAt::Now, ..
            } => "kill -9 (any instant)",
            Fault::Kill {
                at: KillAt::Creation,
                ..
            } => "kill -9 (creation)",
            Fault::Kill {
                at: KillAt::MidPatch,
                ..
            } => "kill -9 (mid-PATCH)",
            Fault::Kill {
                at: KillAt::Completion,
                ..
            } => "kill -9 (after completion)",
            Fault::Term { .. } => "SIGTERM + restart",
            Fault::Latency { .. } => "net: latency",
            Fault::Bandwidth { .. } => "net: bandwidth cap",
            Fault::ConnReset => "net: connection reset",
            Fault::HalfOpen { .. } => "net: half-open (silent)",
            Fault::TruncatedAnswer { .. } => "net: truncated answer",
            Fault::Refuse { .. } => "net: refused",
            Fault::ServerErrors { .. } => "server: 5xx burst",
            Fault::RetryAfter { status: 429, .. } => "server: 429 Retry-After",
            Fault::RetryAfter { .. } => "server: 503 Retry-After",
            Fault::UploadGone { status: 404 } => "server: 404 known upload",
            Fault::UploadGone { .. } => "server: 410 known upload",
            Fault::ServerRestart => "server: restart",
            Fault::CardOut { .. } => "card: removed + reinserted",
            Fault::AddFile { .. } => "card: file added",
            Fault::RewriteFile { .. } => "card: file rewritten",
            Fault::DeleteFile { .. } => "card: file deleted",
            Fault::Charger { .. } => "device: charger flap",
            Fault::Wifi { .. } => "device: Wi-Fi flap",
            Fault::Recording { .. } => "device: recording flap",
            Fault::Consent { .. } => "app: consent toggled",
            Fault::DiskFull { .. } => "state dir: ENOSPC",
            Fault::ClockPast { .. } => "clock: mtime in 1970",
            Fault::ClockFuture { .. } => "clock: mtime in the future",
            Fault::CardSwap { .. } => "card: swapped for one reusing names, then back",
            Fault::Symlinks { .. } => "card: symlink out + loop link",
            Fault::NonUtf8Dir { .. } => "card: non-UTF-8 directory",
            Fault::CorruptDb { .. } => "state dir: corrupt database",
            Fault::ZeroedCredentials => "state dir: zeroed credentials",
            Fault::WithdrawFullDisk { .. } => "consent: withdrawn on a full disk",
            Fault::PowerCut { at, .. } => match at {
                CutAt::Now => "power cut (any instant)",
                CutAt::Creation => "power cut (creation)",
                CutAt::Chunk => "power cut (after a chunk)",
                CutAt::Completion => "power cut (after completion)",
                CutAt::Unpair => "power cut (after unpairing)",
                CutAt::Settings => "power cut (after a settings change)",
                CutAt::Freeing => "power cut (during a freeing deletion)",
            },
        }
    }

    /// The name `--faults` selects it by.
    pub fn group(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Term { .. } => "term",
            Fault::Latency { .. }
            | Fault::Bandwidth { .. }
            | Fault::ConnReset
            | Fault::HalfOpen { .. }
            | Fault::TruncatedAnswer { .. }
            | Fault::Refuse { .. } => "net",
            Fault::ServerErrors { .. }
            | Fault::RetryAfter { .. }
            | Fault::UploadGone { .. }
            | Fault::ServerRestart => "server",
            Fault::CardOut { .. }
            | Fault::AddFile { .. }
            | Fault::RewriteFile { .. }
            | Fault::DeleteFile { .. } => "card",
            Fault::Charger { .. } | Fault::Wifi { .. } | Fault::Recording { .. } => "device",
            Fault::Consent { .. } => "consent",
            Fault::DiskFull { .. } => "disk_full",
            Fault::ClockPast { .. } | Fault::ClockFuture { .. } => "clock",
            Fault::CardSwap { .. } => "card_swap",
            Fault::Symlinks { .. } => "symlinks",
            Fault::NonUtf8Dir { .. } => "non_utf8",
            Fault::CorruptDb { .. } => "corrupt_db",
            Fault::ZeroedCredentials => "zeroed_credentials",
            Fault::WithdrawFullDisk { .. } => "withdraw_full_disk",
            Fault::PowerCut { .. } => "power_cut",
        }
    }
}

/// Every name `--faults` takes, in the order `soak --help` lists them.
pub const GROUPS: [&str; 16] = [
    "kill",
    "term",
    "net",
    "server",
    "card",
    "device",
    "consent",
    "disk_full",
    "clock",
    "card_swap",
    "symlinks",
    "non_utf8",
    "corrupt_db",
    "zeroed_credentials",
    "power_cut",
    "withdraw_full_disk",
];

/// The groups of the first draw (issue 10's and the clock's); the others have streams of
/// their own.
const MAIN_GROUPS: [&str; 9] = [
    "kill",
    "term",
    "net",
    "server",
    "card",
    "device",
    "consent",
    "disk_full",
    "clock",
];

/// A set of groups (`--faults`), as bits in [`GROUPS`]' order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Groups(u32);

impl Groups {
    /// Every group.
    pub const ALL: Groups = Groups((1 << GROUPS.len()) - 1);

    /// From `--faults`' value: names separated by commas.
    pub fn parse(s: &str) -> Result<Groups, String> {
        let mut bits = 0;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let i = GROUPS.iter().position(|g| *g == name).ok_or_else(|| {
                format!(
                    "--faults: unknown kind `{name}` (kinds: {})",
                    GROUPS.join(", ")
                )
            })?;
            bits |= 1 << i;
        }
        if bits == 0 {
            return Err("--faults: no kind given".into());
        }
        Ok(Groups(bits))
    }

    /// Whether `group` is in.
    pub fn has(self, group: &str) -> bool {
        GROUPS
            .iter()
            .position(|g| *g == group)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// Only `group`.
    pub fn only(self, group: &str) -> bool {
        self.has(group) && self.0.count_ones() == 1
    }
}

/// One file on the card at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialFile {
    /// Storage path.
    pub rel: String,
    /// Size in bytes.
    pub len: u64,
    /// Content seed.
    pub content: u64,
}

/// Everything a trial does, from its seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The trial's seed.
    pub seed: u64,
    /// The server.
    pub server: ServerKind,
    /// Files on the card when the daemon starts.
    pub files: Vec<InitialFile>,
    /// Faults at instants after the daemon started consenting, sorted.
    pub faults: Vec<(Duration, Fault)>,
    /// How long the chaos lasts; then everything heals.
    pub chaos: Duration,
}

/// What a plan may contain on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    /// Node and @tus/server are installed.
    pub node: bool,
    /// Fraction of trials on @tus/server.
    pub node_share: f64,
    /// A tmpfs can be mounted (root).
    pub disk_full: bool,
    /// Include the faults that trigger defects already being fixed elsewhere: future mtimes
    /// (files never uploaded) and a full state disk (items stuck `uploading`, and files that
    /// settle meanwhile waiting for the next rescan).
    pub known_defects: bool,
    /// testkit's power-cut layer can be mounted (root and /dev/fuse).
    pub power_cut: bool,
    /// The fault kinds to draw from (`--faults`).
    pub groups: Groups,
}

/// The next seed in a run: trial i+1's seed from trial i's (splitmix64), so any trial's seed
/// alone replays it.
pub fn next_seed(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn ms(rng: &mut fastrand::Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.u64(lo..=hi))
}

/// A file size: mostly small, some over one chunk (1 MiB) so uploads have several PATCHes.
fn file_len(rng: &mut fastrand::Rng) -> u64 {
    match rng.u32(0..10) {
        0..=3 => rng.u64(1..=64 * 1024),
        4..=7 => rng.u64(100_000..=900_000),
        _ => rng.u64(1_100_000..=2_600_000),
    }
}

/// Draws the plan for `seed`.
pub fn plan(seed: u64, allowed: Allowed) -> Plan {
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = if allowed.node && rng.f64() < allowed.node_share {
        ServerKind::TusNode
    } else {
        ServerKind::Receiver
    };
    let files = (0..rng.usize(2..=6))
        .map(|i| {
            let ext = if rng.bool() { "JPG" } else { "MP4" };
            InitialFile {
                rel: format!("DCIM/100MEDIA/S{i:03}.{ext}"),
                len: file_len(&mut rng),
                content: rng.u64(..),
            }
        })
        .collect();
    let chaos = ms(&mut rng, 2500, 6000);
    // Without a kind of the first draw selected, it draws nothing (and then nothing of it).
    let main = MAIN_GROUPS.iter().any(|g| allowed.groups.has(g));
    let n = if main { rng.usize(3..=8) } else { 0 };
    let mut faults = Vec::with_capacity(n);
    // A bound, for a selection this machine or server cannot give (`disk_full` without root).
    let mut draws = 0;
    while faults.len() < n && draws < 10_000 {
        draws += 1;
        let at = Duration::from_millis(rng.u64(0..chaos.as_millis() as u64));
        let f = match rng.u32(0..27) {
            0 | 1 => Fault::Kill {
                at: KillAt::Now,
                restart_after: ms(&mut rng, 0, 500),
            },
            2 => Fault::Kill {
                at: KillAt::Creation,
                restart_after: ms(&mut rng, 0, 300),
            },
            3 => Fault::Kill {
                at: KillAt::MidPatch,
                restart_after: ms(&mut rng, 0, 300),
            },
            4 => Fault::Kill {
                at: KillAt::Completion,
                restart_after: ms(&mut rng, 0, 300),
            },
            5 => Fault::Term {
                restart_after: ms(&mut rng, 0, 500),
            },
            6 => Fault::Latency {
                latency: ms(&mut rng, 5, 200),
                lasts: ms(&mut rng, 500, 3000),
            },
            7 => Fault::Bandwidth {
                bytes_per_sec: rng.u64(64 * 1024..=1024 * 1024),
                lasts: ms(&mut rng, 500, 3000),
            },
            8 => Fault::ConnReset,
            9 => Fault::HalfOpen {
                lasts: ms(&mut rng, 500, 3500),
            },
            10 => Fault::TruncatedAnswer {
                bytes: rng.u64(0..120),
            },
            11 => Fault::Refuse {
                lasts: ms(&mut rng, 200, 2000),
            },
            12 => Fault::ServerErrors {
                count: rng.usize(1..=6),
            },
            13 => Fault::RetryAfter {
                status: if rng.bool() { 429 } else { 503 },
                secs: rng.u64(1..=3),
                count: rng.usize(1..=3),
            },
            14 => Fault::UploadGone {
                status: if rng.bool() { 404 } else { 410 },
            },
            15 => Fault::ServerRestart,
            16 => Fault::CardOut {
                lasts: ms(&mut rng, 200, 2000),
            },
            17 | 18 => Fault::AddFile {
                len: file_len(&mut rng),
                content: rng.u64(..),
            },
            19 => Fault::RewriteFile {
                pick: rng.usize(..),
                len: file_len(&mut rng),
                content: rng.u64(..),
            },
            20 => Fault::DeleteFile {
                pick: rng.usize(..),
            },
            21 => Fault::Charger {
                lasts: ms(&mut rng, 200, 2000),
            },
            22 => Fault::Wifi {
                lasts: ms(&mut rng, 200, 2000),
            },
            23 => Fault::Recording {
                lasts: ms(&mut rng, 200, 2000),
            },
            24 => Fault::Consent {
                lasts: ms(&mut rng, 200, 2000),
            },
            25 => Fault::DiskFull {
                lasts: ms(&mut rng, 300, 2500),
            },
            _ => {
                if rng.bool() {
                    Fault::ClockPast {
                        len: file_len(&mut rng),
                        content: rng.u64(..),
                    }
                } else {
                    Fault::ClockFuture {
                        len: file_len(&mut rng),
                        content: rng.u64(..),
                        ahead: Duration::from_secs(rng.u64(3600..=365 * 86400)),
                    }
                }
            }
        };
        // Only the receiver shows the moment of a creation, a PATCH or a completion as it
        // happens; against @tus/server a targeted kill lands at its instant.
        let f = match f {
            Fault::Kill { restart_after, .. } if server != ServerKind::Receiver => Fault::Kill {
                at: KillAt::Now,
                restart_after,
            },
            f => f,
        };
        let receiver_only = matches!(
            f,
            Fault::ServerErrors { .. } | Fault::RetryAfter { .. } | Fault::UploadGone { .. }
        );
        if receiver_only && server != ServerKind::Receiver {
            continue;
        }
        if matches!(f, Fault::DiskFull { .. }) && !allowed.disk_full {
            continue;
        }
        if matches!(f, Fault::ClockFuture { .. } | Fault::DiskFull { .. }) && !allowed.known_defects
        {
            continue;
        }
        if !allowed.groups.has(f.group()) {
            continue;
        }
        faults.push((at, f));
    }
    // Issue 17's kinds come from a stream of their own, so the faults above are the same for a
    // seed as before they existed (the seeds in docs/SOAK.md keep their schedules); about 0.8
    // per trial, so each kind lands in about one trial in six.
    let mut rng17 = fastrand::Rng::with_seed(seed ^ 0x1717_1717_1717_1717);
    let n17 = match rng17.u32(0..5) {
        0 | 1 => 0,
        2 | 3 => 1,
        _ => 2,
    };
    for _ in 0..n17 {
        let at = Duration::from_millis(rng17.u64(0..chaos.as_millis() as u64));
        let f = match rng17.u32(0..5) {
            0 => Fault::CardSwap {
                lasts: ms(&mut rng17, 1500, 4000),
                content: rng17.u64(..),
            },
            1 => Fault::Symlinks {
                content: rng17.u64(..),
            },
            2 => Fault::NonUtf8Dir {
                len: file_len(&mut rng17),
                content: rng17.u64(..),
                backslash: rng17.bool(),
            },
            3 => Fault::CorruptDb {
                garbage: rng17.u64(..),
            },
            _ => Fault::ZeroedCredentials,
        };
        if allowed.groups.has(f.group()) {
            faults.push((at, f));
        }
    }
    // Issue 26's power cuts, from a stream of their own too: in one trial in three of a mixed
    // run, one to three in every trial of `--faults power_cut`.
    let mut rng26 = fastrand::Rng::with_seed(seed ^ 0x2626_2626_2626_2626);
    // The freeing moment from a stream of its own, so the other moments stay those of their
    // seeds: one cut in five becomes one during a freeing deletion (the receiver only: freeing
    // needs the server to accept `Upload-Checksum`).
    let mut rng_free = fastrand::Rng::with_seed(seed ^ 0x2626_F4EE_F4EE_2626);
    let cuts = if !allowed.power_cut || !allowed.groups.has("power_cut") {
        0
    } else if allowed.groups.only("power_cut") {
        rng26.usize(1..=3)
    } else {
        usize::from(rng26.u32(0..3) == 0)
    };
    let only_cuts = allowed.groups.only("power_cut");
    for _ in 0..cuts {
        let at = Duration::from_millis(rng26.u64(0..chaos.as_millis() as u64));
        let mut cut_at = match rng26.u32(0..6) {
            0 => CutAt::Now,
            1 => CutAt::Creation,
            2 => CutAt::Chunk,
            3 => CutAt::Completion,
            4 => CutAt::Unpair,
            _ => CutAt::Settings,
        };
        // Only the receiver shows the server's moments as they happen.
        if server != ServerKind::Receiver
            && matches!(cut_at, CutAt::Creation | CutAt::Chunk | CutAt::Completion)
        {
            cut_at = CutAt::Now;
        }
        // A cut during a freeing deletion only in `--faults power_cut` runs: its trial puts the
        // card on a tmpfs of its own and fills it, which the card faults of a mixed run (files
        // deleted, cards swapped or pulled) would be taken for freeing by its check.
        if rng_free.u32(0..5) == 0 && server == ServerKind::Receiver && only_cuts {
            cut_at = CutAt::Freeing;
        }
        let tear = rng26.bool().then(|| rng26.f64());
        faults.push((
            at,
            Fault::PowerCut {
                at: cut_at,
                tear,
                restart_after: ms(&mut rng26, 0, 300),
            },
        ));
    }
    // Issue 22's withdrawal on a full state disk, from a stream of its own too (the schedules
    // above stay those of their seeds): in about one trial in five, where a tmpfs can be made.
    let mut rng22 = fastrand::Rng::with_seed(seed ^ 0x2222_2222_2222_2222);
    let withdraw = if !allowed.disk_full || !allowed.groups.has("withdraw_full_disk") {
        false
    } else {
        allowed.groups.only("withdraw_full_disk") || rng22.u32(0..5) == 0
    };
    if withdraw {
        let at = Duration::from_millis(rng22.u64(0..chaos.as_millis() as u64));
        faults.push((
            at,
            Fault::WithdrawFullDisk {
                lasts: ms(&mut rng22, 3000, 6000),
            },
        ));
    }
    faults.sort_by_key(|(at, _)| *at);
    Plan {
        seed,
        server,
        files,
        faults,
        chaos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Allowed = Allowed {
        node: true,
        node_share: 0.3,
        disk_full: true,
        known_defects: true,
        power_cut: true,
        groups: Groups::ALL,
    };

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        assert_eq!(plan(42, ALL), plan(42, ALL));
        assert_ne!(plan(42, ALL), plan(43, ALL));
    }

    #[test]
    fn plans_respect_what_the_machine_allows() {
        let none = Allowed {
            node: false,
            node_share: 0.3,
            disk_full: false,
            known_defects: false,
            power_cut: false,
            groups: Groups::ALL,
        };
        let mut seed = 1;
        for _ in 0..500 {
            let p = plan(seed, none);
            assert_eq!(p.server, ServerKind::Receiver);
            assert!(p.faults.iter().all(|(at, f)| *at < p.chaos
                && !matches!(f, Fault::DiskFull { .. } | Fault::ClockFuture { .. })));
            assert!(p.faults.windows(2).all(|w| w[0].0 <= w[1].0));
            seed = next_seed(seed);
        }
    }

    #[test]
    fn node_trials_get_no_receiver_only_faults() {
        let mut seed = 7;
        let mut node_trials = 0;
        for _ in 0..500 {
            let p = plan(seed, ALL);
            if p.server == ServerKind::TusNode {
                node_trials += 1;
                assert!(p.faults.iter().all(|(_, f)| !matches!(
                    f,
                    Fault::ServerErrors { .. }
                        | Fault::RetryAfter { .. }
                        | Fault::UploadGone { .. }
                )));
            }
            seed = next_seed(seed);
        }
        assert!((100..200).contains(&node_trials), "{node_trials}");
    }

    #[test]
    fn faults_selects_the_kinds_and_power_cut_alone_gives_only_cuts() {
        let only = Allowed {
            groups: Groups::parse("power_cut").unwrap(),
            ..ALL
        };
        let mut seed = 3;
        let mut at = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let p = plan(seed, only);
            assert!((1..=3).contains(&p.faults.len()), "{:?}", p.faults);
            for (_, f) in &p.faults {
                let Fault::PowerCut { at: a, .. } = f else {
                    panic!("{f:?}")
                };
                // Freeing needs the receiver (it accepts `Upload-Checksum`).
                assert!(*a != CutAt::Freeing || p.server == ServerKind::Receiver);
                at.insert(format!("{a:?}"));
            }
            // A mixed run has no cut during freeing (its card faults would confuse the check).
            assert!(!plan(seed, ALL).faults.iter().any(|(_, f)| matches!(
                f,
                Fault::PowerCut {
                    at: CutAt::Freeing,
                    ..
                }
            )));
            // A mixed run keeps its other draws (the seeds in docs/SOAK.md) as they were.
            let mixed: Vec<_> = plan(seed, ALL)
                .faults
                .into_iter()
                .filter(|(_, f)| f.group() != "power_cut")
                .collect();
            let without = Allowed {
                power_cut: false,
                ..ALL
            };
            assert_eq!(mixed, plan(seed, without).faults);
            seed = next_seed(seed);
        }
        assert_eq!(at.len(), 7, "{at:?}");
        let two = Allowed {
            groups: Groups::parse("kill,net").unwrap(),
            ..ALL
        };
        let p = plan(5, two);
        assert!(!p.faults.is_empty());
        assert!(p
            .faults
            .iter()
            .all(|(_, f)| ["kill", "net"].contains(&f.group())));
        assert!(Groups::parse("kill,nope").is_err());
        // A selection this machine cannot give draws nothing, rather than forever.
        let none = Allowed {
            disk_full: false,
            groups: Groups::parse("disk_full").unwrap(),
            ..ALL
        };
        assert!(plan(5, none).faults.is_empty());
    }

    fn is17(f: &Fault) -> bool {
        matches!(
            f,
            Fault::CardSwap { .. }
                | Fault::Symlinks { .. }
                | Fault::NonUtf8Dir { .. }
                | Fault::CorruptDb { .. }
                | Fault::ZeroedCredentials
        )
    }

    #[test]
    fn issue_17_kinds_come_at_a_sensible_rate() {
        let mut seed = 11;
        let mut kinds = std::collections::BTreeMap::new();
        for _ in 0..600 {
            let p = plan(seed, ALL);
            let new: Vec<&Fault> = p
                .faults
                .iter()
                .map(|(_, f)| f)
                .filter(|f| is17(f))
                .collect();
            assert!(new.len() <= 2);
            assert!(p.faults.iter().all(|(at, _)| *at < p.chaos));
            for f in new {
                *kinds.entry(f.kind()).or_insert(0) += 1;
            }
            seed = next_seed(seed);
        }
        // Each of the five kinds in roughly one trial in six (600 trials: about 96 each).
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert!(kinds.values().all(|n| (50..150).contains(n)), "{kinds:?}");
    }
}
