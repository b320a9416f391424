//! One trial: a fake camera, a tus server behind the fault proxy, the real daemon; the plan's
//! faults at their instants; then everything heals and the invariant is checked from the
//! server's side.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use testkit::camera::FakeCamera;
use testkit::daemon::{Daemon, Signal};
use testkit::proxy::Proxy;
use testkit::sample::sample_bytes;
use testkit::tus::{Fault as RxFault, Receiver};

use crate::plan::{next_seed, CutAt, Fault, KillAt, Plan, ServerKind};
use crate::server::{Server, TusNode, TOKEN};

/// The user the daemon is paired with.
const USER_ID: &str = "soak-user";
/// How long a trial may take to converge once everything healed.
const CONVERGE: Duration = Duration::from_secs(60);
/// How long a (re)start may take before it counts as refused.
const START: Duration = Duration::from_secs(10);
/// The daemon's peak RSS must stay under this.
pub const RSS_LIMIT_KIB: u64 = 32 * 1024;
/// Size of the state directory's tmpfs in disk-full trials.
const STATE_FS: &str = "size=8m,mode=0700";
/// The card's tmpfs in trials with a cut during a freeing deletion.
const CARD_FS: &str = "size=64m,mode=0755";
/// The fill file that makes that card low: at its root, not a media file (never uploaded).
const CARD_FILLER: &str = "FILLER.BIN";
/// Freeing starts under this percentage of the card free (`media.free_space_below_percent`).
const FREE_BELOW: u64 = 50;
/// The daemon's log line for a deletion noted before a cut and recorded after it.
const SETTLED_FROM_NOTE: &str = "a file deleted to free space before a crash, power cut";

/// What the trial needs from the machine.
pub struct Env {
    /// The daemon binary.
    pub bin: PathBuf,
    /// `interop/` (server.mjs and its node_modules).
    pub interop: PathBuf,
    /// Print what happens.
    pub verbose: bool,
}

/// What a trial found.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// The trial's seed.
    pub seed: u64,
    /// `Receiver` or `TusNode`.
    pub server: String,
    /// Fault kinds injected (as applied, not as planned: a kill needs a running daemon).
    pub faults: Vec<&'static str>,
    /// Settled files on the card at the end.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Files on the card without a byte-identical completed upload.
    pub lost: Vec<String>,
    /// (path, content) pairs completed more than once.
    pub duplicated: Vec<String>,
    /// A (path, content) completed again where the first completion was forced out of the
    /// daemon's hands: the server answered 404/410 for it, or the account file was lost while
    /// the daemon had not recorded it done (the loss erases upload URLs). Not a failure.
    pub resent: Vec<String>,
    /// Completed uploads whose bytes are no version ever written to that path.
    pub corrupt: Vec<String>,
    /// Completed uploads without exactly the four metadata keys and values.
    pub bad_metadata: Vec<String>,
    /// Creations beyond one per file version and one per forced restart.
    pub extra_creations: usize,
    /// Of those, uploads that never received a byte (a creation whose answer was lost).
    pub empty_orphans: usize,
    /// Body bytes received by the server.
    pub received: u64,
    /// Bytes of the completed uploads.
    pub completed_bytes: u64,
    /// Peak RSS seen, KiB.
    pub peak_rss_kib: u64,
    /// From the heal to the first data request, when work remained at the heal.
    pub heal_to_start: Option<Duration>,
    /// Where the queue and the server disagree.
    pub queue: Vec<String>,
    /// Deaths not caused by the harness.
    pub died: Vec<String>,
    /// Uploads from outside the card (through a link) or under a second path (round a loop).
    pub escaped: Vec<String>,
    /// After a corrupt database or zeroed credentials: a daemon that did not come up, consent
    /// or the account changed, a second pairing refused.
    pub recovery: Vec<String>,
    /// Issue 22: a withdrawal of consent on a full state disk refused, or undone by a restart
    /// on that disk.
    pub withdrawal: Vec<String>,
    /// Issue 26: a file gone from the card at a cut during freeing without `freed_at` in the
    /// history after the next pass, or without a byte-identical completed upload.
    pub freed: Vec<String>,
    /// Files the restarted daemon recorded as freed from a note (its log says so): cuts that
    /// landed between a deletion and its record.
    pub freed_from_note: u64,
    /// Everything settled within the limit after the heal.
    pub converged: bool,
    /// Notes: skipped faults, refused starts.
    pub notes: Vec<String>,
    /// Wall time.
    pub secs: f64,
    /// Syncs the daemon made on the power-cut layer, by `file NAME` / `dir NAME` (the name at
    /// the time: a temp file synced before its rename has the temp name).
    pub syncs: BTreeMap<String, u64>,
}

impl Outcome {
    /// Why the trial failed; empty when it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut list = |what: &str, v: &[String]| {
            if !v.is_empty() {
                out.push(format!("{what}: {}", v.join("; ")));
            }
        };
        list("lost", &self.lost);
        list("duplicated", &self.duplicated);
        list("corrupt", &self.corrupt);
        list("bad metadata", &self.bad_metadata);
        list("queue disagrees", &self.queue);
        list("died", &self.died);
        list("outside the card", &self.escaped);
        list("state recovery", &self.recovery);
        list("withdrawal", &self.withdrawal);
        list("freed", &self.freed);
        if self.peak_rss_kib > RSS_LIMIT_KIB {
            out.push(format!("peak RSS {} KiB over 32 MiB", self.peak_rss_kib));
        }
        if !self.converged {
            out.push(format!(
                "not settled {} s after the heal",
                CONVERGE.as_secs()
            ));
        }
        out
    }
}

/// Timed steps a plan expands into.
enum Step {
    Apply(Fault),
    End(Fault),
}

/// Unmounts the state tmpfs when the trial ends, however it ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a small tmpfs; `false` when the machine does not let us (not root).
pub fn can_mount() -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let ok = mount_tmpfs(dir.path());
    if ok {
        let _ = Command::new("umount").arg(dir.path()).status();
    }
    ok
}

fn mount_tmpfs(at: &Path) -> bool {
    mount_tmpfs_with(at, STATE_FS)
}

fn mount_tmpfs_with(at: &Path, options: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn sha_file(path: &Path) -> Option<[u8; 32]> {
    fs::read(path).ok().map(|b| sha(&b))
}

fn hex8(h: &[u8; 32]) -> String {
    h[..4].iter().map(|b| format!("{b:02x}")).collect()
}

struct Trial<'e> {
    env: &'e Env,
    plan: Plan,
    // Drop order: the daemon dies first, then the mount goes, then the camera's dir.
    daemon: Daemon,
    /// The state dir on testkit's power-cut layer (trials with power cuts), and the directory
    /// that holds what survives a cut.
    cut: Option<testkit::powercut::Mounted>,
    cut_disk: Option<tempfile::TempDir>,
    _mount: Option<Mount>,
    /// The card's tmpfs (trials with a cut during freeing); freeing is configured only then.
    card_mount: Option<Mount>,
    /// `SETTLED_FROM_NOTE` lines already counted.
    settled_seen: u64,
    proxy: Proxy,
    server: Server,
    cam: FakeCamera,
    /// Every content ever written per storage path.
    versions: BTreeMap<String, Vec<[u8; 32]>>,
    /// The daemon should be running (false after a kill until the restart).
    expect_running: bool,
    forgotten: BTreeMap<String, usize>,
    forgotten_ids: BTreeSet<String>,
    /// Uploads complete on the server, just before a credentials loss, whose version the
    /// daemon's queue did not show `done`.
    unknown_at_loss: BTreeSet<String>,
    filler: Option<PathBuf>,
    card_out: bool,
    /// Card B (the swap's) is in the slot, card A aside.
    swapped_in: bool,
    /// Versions that must reach the server besides what is on the card at the end: card B's,
    /// snapshot when it had settled in the heal. (storage path, content) → size.
    required: BTreeMap<(String, [u8; 32]), u64>,
    /// Links made on the card (storage paths of the links themselves).
    links: Vec<String>,
    /// Hashes of the files outside the card the links lead to.
    outside: BTreeSet<[u8; 32]>,
    /// When the last file was written behind a link: the check waits long enough after it
    /// for a watcher that followed the link to have queued it (settle, idle, a margin).
    links_at: Option<Instant>,
    /// The daemon must be paired again once it runs (after zeroed credentials).
    needs_pair: bool,
    added: usize,
    out: Outcome,
    start: Instant,
}

/// Runs the trial for `plan`.
pub async fn run(env: &Env, plan: Plan) -> Outcome {
    let started = Instant::now();
    let mut out = Outcome {
        seed: plan.seed,
        server: format!("{:?}", plan.server),
        ..Outcome::default()
    };
    let cam = FakeCamera::new();
    for (section, key, value) in [
        ("media", "settle_secs", "1"),
        ("conditions", "idle_secs", "1"),
        ("conditions", "hold_down_secs", "0"),
        ("cloud", "chunk_size_mib", "1"),
        ("cloud", "stall_secs", "2"),
        ("cloud", "retry_max_secs", "2"),
    ] {
        cam.with(section, key, value);
    }
    let needs_mount = plan
        .faults
        .iter()
        .any(|(_, f)| matches!(f, Fault::DiskFull { .. }));
    let mount = if needs_mount && mount_tmpfs(&cam.state_dir()) {
        Some(Mount(cam.state_dir()))
    } else {
        None
    };
    let needs_card = plan.faults.iter().any(|(_, f)| {
        matches!(
            f,
            Fault::PowerCut {
                at: CutAt::Freeing,
                ..
            }
        )
    });
    let card_mount = if needs_card && mount_tmpfs_with(&cam.media_root(), CARD_FS) {
        cam.with("media", "free_space_below_percent", &FREE_BELOW.to_string())
            .with("media", "keep_days", "0");
        Some(Mount(cam.media_root()))
    } else {
        None
    };
    let needs_cut = plan
        .faults
        .iter()
        .any(|(_, f)| matches!(f, Fault::PowerCut { .. }));
    let (cut, cut_disk) = if needs_cut && mount.is_none() {
        match mount_power_cut(&cam.state_dir()) {
            Ok((m, d)) => (Some(m), Some(d)),
            Err(e) => {
                out.notes.push(format!("power-cut layer not mounted: {e}"));
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let server = match plan.server {
        ServerKind::Receiver => Server::Receiver(
            Receiver::builder()
                .token(TOKEN)
                .relative_location()
                .start()
                .await,
        ),
        ServerKind::TusNode => match TusNode::start(&env.interop) {
            Ok(n) => Server::TusNode(n),
            Err(e) => {
                out.notes.push(format!("@tus/server did not start: {e}"));
                out.died.push(format!("harness: {e}"));
                return out;
            }
        },
    };
    let proxy = Proxy::start(server.addr()).await;
    let mut versions: BTreeMap<String, Vec<[u8; 32]>> = BTreeMap::new();
    for f in &plan.files {
        let bytes = sample_bytes(f.content, f.len as usize);
        cam.write_media(&f.rel, &bytes);
        cam.age_media(&f.rel, Duration::from_secs(30));
        versions.entry(f.rel.clone()).or_default().push(sha(&bytes));
    }
    let config = cam.write_config(&proxy.url("/files/"));
    let mut daemon = Daemon::spawn(&env.bin, &config, &[]);
    if let Err(e) = daemon.wait_healthy(START).await {
        out.died.push(format!("first start: {e}"));
        return out;
    }
    let mut t = Trial {
        env,
        plan,
        daemon,
        cut,
        cut_disk,
        _mount: mount,
        card_mount,
        settled_seen: 0,
        proxy,
        server,
        cam,
        versions,
        expect_running: true,
        forgotten: BTreeMap::new(),
        forgotten_ids: BTreeSet::new(),
        unknown_at_loss: BTreeSet::new(),
        filler: None,
        card_out: false,
        swapped_in: false,
        required: BTreeMap::new(),
        links: Vec::new(),
        outside: BTreeSet::new(),
        links_at: None,
        needs_pair: false,
        added: 0,
        out,
        start: Instant::now(),
    };
    t.go().await;
    if env.verbose && !t.out.failures().is_empty() {
        // Every start of the daemon in the trial (the log file is appended to), without the
        // HTTP client's connection chatter.
        let log = t.daemon.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains(" hyper_util::"))
            .collect();
        eprintln!(
            "--- daemon log ---\n{}\n--- end of daemon log ---",
            lines.join("\n")
        );
    }
    if let Some(m) = t.cut.take() {
        // The daemon must be gone before its file system is.
        t.daemon.kill(Signal::Kill);
        let _ = t.daemon.wait_exit(Duration::from_secs(5)).await;
        match m.unmount() {
            Ok(stats) => t.add_syncs(&stats),
            Err(e) => t.out.notes.push(format!("power-cut layer: unmount: {e}")),
        }
    }
    let mut out = std::mem::take(&mut t.out);
    out.secs = started.elapsed().as_secs_f64();
    out
}

/// Puts `state` on testkit's power-cut layer: what it holds moves to a directory of its own
/// (the "disk"), served back at `state` with the same mode.
fn mount_power_cut(
    state: &Path,
) -> std::io::Result<(testkit::powercut::Mounted, tempfile::TempDir)> {
    use std::os::unix::fs::PermissionsExt;
    let disk = tempfile::tempdir()?;
    fs::set_permissions(disk.path(), fs::metadata(state)?.permissions())?;
    for e in fs::read_dir(state)? {
        let e = e?;
        if !e.file_type()?.is_file() {
            return Err(std::io::Error::other(format!(
                "{}: not a file",
                e.path().display()
            )));
        }
        fs::copy(e.path(), disk.path().join(e.file_name()))?;
        fs::remove_file(e.path())?;
    }
    let mode = fs::metadata(disk.path())?.permissions().mode();
    let m = testkit::powercut::PowerCutFs::mount(disk.path(), state)?;
    debug_assert_eq!(
        fs::metadata(state)?.permissions().mode() & 0o777,
        mode & 0o777
    );
    Ok((m, disk))
}

impl Trial<'_> {
    fn log(&self, what: impl AsRef<str>) {
        if self.env.verbose {
            eprintln!(
                "  [{:>6.2}s] {}",
                self.start.elapsed().as_secs_f64(),
                what.as_ref()
            );
        }
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        self.daemon.try_api(method, path, body).await.ok()
    }

    async fn go(&mut self) {
        let paired = self
            .api(
                "PUT",
                "/v1/account",
                Some(json!({"user_id": USER_ID, "token": TOKEN})),
            )
            .await;
        let consent = self
            .api("PATCH", "/v1/settings", Some(json!({"auto_upload": true})))
            .await;
        if paired.as_ref().map(|r| r.0) != Some(200) || consent.as_ref().map(|r| r.0) != Some(200) {
            self.out
                .died
                .push(format!("pairing failed: {paired:?} / {consent:?}"));
            return;
        }
        self.start = Instant::now();

        let mut steps: Vec<(Duration, Step)> = Vec::new();
        for (at, f) in self.plan.faults.clone() {
            let lasts = match &f {
                Fault::Latency { lasts, .. }
                | Fault::Bandwidth { lasts, .. }
                | Fault::HalfOpen { lasts }
                | Fault::Refuse { lasts }
                | Fault::CardOut { lasts }
                | Fault::CardSwap { lasts, .. }
                | Fault::Charger { lasts }
                | Fault::Wifi { lasts }
                | Fault::Recording { lasts }
                | Fault::Consent { lasts }
                | Fault::DiskFull { lasts }
                | Fault::WithdrawFullDisk { lasts } => Some(*lasts),
                _ => None,
            };
            if let Some(lasts) = lasts {
                steps.push((at + lasts, Step::End(f.clone())));
            }
            steps.push((at, Step::Apply(f)));
        }
        steps.sort_by_key(|(at, _)| *at);
        let chaos = self.plan.chaos;
        for (at, step) in steps {
            if at > chaos {
                // The heal ends it.
                continue;
            }
            let now = self.start.elapsed();
            if at > now {
                tokio::time::sleep(at - now).await;
            }
            self.check_alive().await;
            match step {
                Step::Apply(f) => self.apply(f).await,
                Step::End(f) => self.end(&f).await,
            }
        }
        let now = self.start.elapsed();
        if chaos > now {
            tokio::time::sleep(chaos - now).await;
        }
        self.heal().await;
        self.converge().await;
    }

    fn add_syncs(&mut self, stats: &testkit::powercut::Stats) {
        for (k, v) in &stats.file_syncs {
            *self.out.syncs.entry(format!("file {k}")).or_default() += v;
        }
        for (k, v) in &stats.dir_syncs {
            *self.out.syncs.entry(format!("dir {k}")).or_default() += v;
        }
    }

    /// Issue 26: the power goes at `at`; the daemon restarts on what was synced. What the user
    /// was told had happened (consent, pairing) and what the queue showed done must hold.
    async fn power_cut(&mut self, at: CutAt, tear: Option<f64>, restart_after: Duration) {
        let mut consent = self.consent_now().await;
        let mut paired = self.paired_now().await;
        let done_before = self.done_versions().await;
        let latency = self.proxy.latency();
        // Freeing: what was on the card just before it started, then what the cut took.
        let mut card_before = None;
        match at {
            CutAt::Now => {}
            CutAt::Freeing => {
                if self.card_mount.is_none() {
                    self.out
                        .notes
                        .push("power cut Freeing: no tmpfs card; cut at once".into());
                } else {
                    card_before = Some(self.card_state());
                    if !self.wait_for_freeing().await {
                        self.out
                            .notes
                            .push("power cut Freeing: no file freed in 10 s; cut then".into());
                    }
                }
            }
            CutAt::Creation | CutAt::Chunk | CutAt::Completion => {
                let rel = self.new_name("W");
                let content = next_seed(self.plan.seed ^ self.added as u64);
                self.write_version(&rel, 1_200_000 + content % 1_000_000, content);
                if at == CutAt::Creation {
                    self.proxy
                        .set_latency(latency.max(Duration::from_millis(150)));
                }
                let came = match at {
                    CutAt::Creation => self.wait_for(KillAt::Creation).await,
                    CutAt::Completion => self.wait_for(KillAt::Completion).await,
                    _ => self.wait_for_chunk().await,
                };
                if !came {
                    self.out
                        .notes
                        .push(format!("power cut {at:?}: the moment did not come in 5 s"));
                }
            }
            CutAt::Unpair => {
                if let Some((200, _)) = self.api("DELETE", "/v1/account", None).await {
                    paired = Some(false);
                }
            }
            CutAt::Settings => {
                let to = !consent.unwrap_or(true);
                if let Some((200, _)) = self
                    .api("PATCH", "/v1/settings", Some(json!({"auto_upload": to})))
                    .await
                {
                    consent = Some(to);
                }
            }
        }
        self.sample_rss();
        self.daemon.kill(Signal::Kill);
        self.expect_running = false;
        self.proxy.set_latency(latency);
        let _ = self.daemon.wait_exit(Duration::from_secs(5)).await;
        // The files the daemon had removed from the card when the power went.
        let gone: BTreeMap<String, ([u8; 32], u64)> = card_before
            .map(|before| {
                let now = self.card_state();
                before
                    .into_iter()
                    .filter(|(rel, _)| !now.contains_key(rel))
                    .collect()
            })
            .unwrap_or_default();
        let (Some(m), Some(disk)) = (
            self.cut.take(),
            self.cut_disk.as_ref().map(|d| d.path().to_path_buf()),
        ) else {
            return;
        };
        match m.cut(tear) {
            Ok(stats) => self.add_syncs(&stats),
            Err(e) => self.out.died.push(format!("power-cut layer: cut: {e}")),
        }
        match testkit::powercut::PowerCutFs::mount(&disk, &self.cam.state_dir()) {
            Ok(m) => self.cut = Some(m),
            Err(e) => {
                self.out.died.push(format!("power-cut layer: remount: {e}"));
                return;
            }
        }
        tokio::time::sleep(restart_after).await;
        // Up first as the cut left it, then paired again (the harness is the user).
        let needs_pair = self.needs_pair;
        self.needs_pair = false;
        self.start_after_state_damage("a power cut").await;
        if !self.expect_running {
            self.needs_pair = needs_pair || paired == Some(false);
            return;
        }
        let what = format!("a power cut ({at:?})");
        let (c, p) = (self.consent_now().await, self.paired_now().await);
        if consent.is_some() && c != consent {
            self.out
                .recovery
                .push(format!("consent {consent:?} before {what}, {c:?} after"));
        }
        if paired.is_some() && p != paired {
            self.out
                .recovery
                .push(format!("paired {paired:?} before {what}, {p:?} after"));
        }
        let done_after = self.done_versions().await;
        for (path, len) in done_before.difference(&done_after) {
            self.out.recovery.push(format!(
                "{path} ({len} bytes) done before {what}, not after"
            ));
        }
        if p == Some(false) || needs_pair {
            self.needs_pair = true;
            self.pair_again().await;
        }
        if at == CutAt::Settings && c == Some(false) {
            // The user turns it back on.
            let _ = self
                .api("PATCH", "/v1/settings", Some(json!({"auto_upload": true})))
                .await;
        }
        if !gone.is_empty() {
            self.check_freed(&gone).await;
        }
    }

    /// Freeing on (the user's `when_low`), the card made low by the fill file; waits (at most
    /// 10 s) until a file is gone from the card. The card is the trial's own tmpfs: nothing
    /// else deletes there in a power-cut trial but the daemon (a `card` fault's deletion is
    /// not in `--faults power_cut`; in a mixed run it would be counted here too, see below).
    async fn wait_for_freeing(&mut self) -> bool {
        let before = self.card_state();
        let on = self
            .api(
                "PATCH",
                "/v1/settings",
                Some(json!({"free_space": "when_low"})),
            )
            .await;
        if on.as_ref().map(|r| r.0) != Some(200) {
            self.out
                .notes
                .push(format!("power cut Freeing: free_space refused: {on:?}"));
            return false;
        }
        if let Err(e) = self.fill_card() {
            self.out
                .notes
                .push(format!("power cut Freeing: fill file: {e}"));
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let now = self.card_entries();
            if before.keys().any(|rel| !now.iter().any(|(r, _)| r == rel)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        false
    }

    /// Grows the card's fill file until the card has well under `FREE_BELOW` percent free.
    fn fill_card(&self) -> std::io::Result<()> {
        let root = self.cam.media_root();
        let (avail, total) = statvfs(&root)?;
        let want = total * (FREE_BELOW - 20) / 100;
        let Some(mut add) = avail.checked_sub(want) else {
            return Ok(());
        };
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join(CARD_FILLER))?;
        let block = vec![0x5au8; 1 << 20];
        while add > 0 {
            let n = add.min(block.len() as u64) as usize;
            f.write_all(&block[..n])?;
            add -= n as u64;
        }
        Ok(())
    }

    /// After a cut during freeing: once a pass has run on the restarted daemon, every file
    /// the cut found gone from the card must have `freed_at` in the history and a
    /// byte-identical completed upload on the server.
    async fn check_freed(&mut self, gone: &BTreeMap<String, ([u8; 32], u64)>) {
        // The pass report lives in memory: any report now is from the restarted daemon, and it
        // is set when its pass has ended.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut passed = false;
        while Instant::now() < deadline {
            if let Some((200, s)) = self.api("GET", "/v1/status", None).await {
                if s["space"]["last_pass"]["at"].is_i64() {
                    passed = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !passed {
            self.out.freed.push(format!(
                "no freeing pass within 30 s of the restart ({} files gone at the cut)",
                gone.len()
            ));
            return;
        }
        let freed: BTreeSet<String> = match self.api("GET", "/v1/history?limit=1000", None).await {
            Some((200, body)) => body["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["freed_at"].is_i64())
                .filter_map(|e| e["storage_path"].as_str().map(str::to_owned))
                .collect(),
            other => {
                self.out
                    .freed
                    .push(format!("GET /v1/history after the restart: {other:?}"));
                return;
            }
        };
        let mut cache = BTreeMap::new();
        let complete = self.complete_uploads(&mut cache);
        for (rel, (h, len)) in gone {
            if !freed.contains(rel) {
                self.out.freed.push(format!(
                    "{rel} ({len} bytes) gone from the card at the cut, no freed_at after the next pass"
                ));
            }
            let sent = complete
                .iter()
                .any(|(p, ch, _)| p.as_deref() == Some(rel.as_str()) && ch == h);
            if !sent {
                self.out.freed.push(format!(
                    "{rel} ({}) removed from the card without a byte-identical completed upload",
                    hex8(h)
                ));
            }
        }
        // The log holds every start of the trial's daemon: count what this restart added.
        let settled = self.daemon.log().matches(SETTLED_FROM_NOTE).count() as u64;
        let new = settled.saturating_sub(self.settled_seen);
        self.settled_seen = settled;
        self.out.freed_from_note += new;
        self.log(format!(
            "freeing cut: {} gone at the cut ({new} settled from a note), all recorded: {}",
            gone.len(),
            gone.keys().all(|r| freed.contains(r))
        ));
    }

    /// Waits (at most 5 s) until the server has answered one more PATCH.
    async fn wait_for_chunk(&self) -> bool {
        let Server::Receiver(rx) = &self.server else {
            return false;
        };
        let answered = |rx: &Receiver| {
            rx.requests_with_method("PATCH")
                .iter()
                .filter(|r| r.status.is_some())
                .count()
        };
        let before = answered(rx);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if answered(rx) > before {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        false
    }

    fn sample_rss(&mut self) {
        if let Some(kib) = self.daemon.peak_rss_kib() {
            self.out.peak_rss_kib = self.out.peak_rss_kib.max(kib);
        }
    }

    /// Records a death the harness did not cause, and brings the daemon back.
    async fn check_alive(&mut self) {
        if self.expect_running && self.daemon.has_exited() {
            let tail: String = self
                .daemon
                .log()
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ");
            self.out.died.push(format!(
                "at {:.2}s, not killed by the harness; log tail: {tail}",
                self.start.elapsed().as_secs_f64()
            ));
            self.log("daemon died on its own");
            self.expect_running = false;
            self.start_daemon().await;
        }
    }

    async fn start_daemon(&mut self) {
        if self.expect_running {
            return;
        }
        match self.daemon.try_restart(START).await {
            Ok(()) => {
                self.expect_running = true;
                self.log("daemon started");
                if self.needs_pair {
                    self.pair_again().await;
                }
            }
            Err(e) => {
                self.daemon.kill(Signal::Kill);
                let _ = self.daemon.wait_exit(Duration::from_secs(5)).await;
                let note = if self.filler.is_some() {
                    format!("start refused while the state disk was full: {e}")
                } else {
                    format!("start refused: {e}")
                };
                self.log(&note);
                self.out.notes.push(note);
            }
        }
    }

    /// Waits (at most 5 s: a new file settles, then the camera must be idle) until the server
    /// shows `what` happening, for a targeted kill.
    async fn wait_for(&self, what: KillAt) -> bool {
        let Server::Receiver(rx) = &self.server else {
            return false;
        };
        let posts = rx.requests_with_method("POST").len();
        let done = rx.completed_uploads().len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let hit = match what {
                KillAt::Now => true,
                KillAt::Creation => rx.requests_with_method("POST").len() > posts,
                KillAt::MidPatch => rx
                    .requests_with_method("PATCH")
                    .iter()
                    .any(|r| r.status.is_none() && r.body_len > 0),
                KillAt::Completion => rx.completed_uploads().len() > done,
            };
            if hit {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        false
    }

    /// (storage path, path on disk) of every regular file on the card (links not followed),
    /// sorted.
    fn card_entries(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        walk(&self.cam.media_root(), &self.cam.media_root(), &mut out);
        out.retain(|(rel, _)| rel != CARD_FILLER);
        out.sort();
        out
    }

    fn write_version(&mut self, rel: &str, len: u64, content: u64) -> bool {
        let path = self.cam.media_path(rel);
        self.write_at(rel, &path, len, content)
    }

    /// Writes a version of storage path `rel` at `path` (parents created) and records it.
    fn write_at(&mut self, rel: &str, path: &Path, len: u64, content: u64) -> bool {
        if self.card_out {
            self.out
                .notes
                .push(format!("{rel}: not written, the card was out"));
            return false;
        }
        let bytes = sample_bytes(content, len as usize);
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        if let Err(e) = fs::write(path, &bytes) {
            self.out.notes.push(format!("{rel}: not written: {e}"));
            return false;
        }
        self.versions
            .entry(rel.to_owned())
            .or_default()
            .push(sha(&bytes));
        true
    }

    fn new_name(&mut self, prefix: &str) -> String {
        self.added += 1;
        format!("DCIM/100MEDIA/{prefix}{:03}.JPG", self.added)
    }

    /// SIGTERM; it must exit 0 within 6 s (killed otherwise, and said).
    async fn stop_term(&mut self) {
        self.sample_rss();
        self.daemon.kill(Signal::Term);
        self.expect_running = false;
        match self.daemon.wait_exit(Duration::from_secs(6)).await {
            Some(s) if s.success() => {}
            Some(s) => self
                .out
                .died
                .push(format!("SIGTERM: exited {s} instead of 0")),
            None => {
                self.out
                    .died
                    .push("SIGTERM: still running after 6 s (killed)".into());
                self.daemon.kill(Signal::Kill);
                let _ = self.daemon.wait_exit(Duration::from_secs(5)).await;
            }
        }
    }

    /// Pairs again with the same user and token (after zeroed credentials).
    async fn pair_again(&mut self) {
        let r = self
            .api(
                "PUT",
                "/v1/account",
                Some(json!({"user_id": USER_ID, "token": TOKEN})),
            )
            .await;
        match r {
            Some((200, _)) => {
                self.needs_pair = false;
                self.log("paired again");
            }
            // The daemon went away meanwhile (a kill): the next start pairs.
            None => {}
            Some((code, body)) => {
                self.needs_pair = false;
                self.out
                    .recovery
                    .push(format!("pairing again refused: {code} {body}"));
            }
        }
    }

    async fn consent_now(&self) -> Option<bool> {
        match self.api("GET", "/v1/settings", None).await {
            Some((200, v)) => v["auto_upload"].as_bool(),
            _ => None,
        }
    }

    /// The versions the daemon's queue shows `done`: (storage path, size).
    async fn done_versions(&self) -> BTreeSet<(String, u64)> {
        self.queue()
            .await
            .iter()
            .filter(|i| i["state"] == "done")
            .filter_map(|i| Some((i["storage_path"].as_str()?.to_owned(), i["size"].as_u64()?)))
            .collect()
    }

    async fn paired_now(&self) -> Option<bool> {
        match self.api("GET", "/v1/account", None).await {
            Some((200, v)) => v["paired"].as_bool(),
            _ => None,
        }
    }

    fn card_a_aside(&self) -> PathBuf {
        self.cam.root().join("card.a")
    }

    fn card_b_aside(&self) -> PathBuf {
        self.cam.root().join("card.b")
    }

    /// Card A aside, card B in. Card B is made on the first swap: every file then on card A
    /// under the same storage path, with other bytes and a larger size. With `fresh` (the
    /// fault, not the heal), a new file is written on card A first, and another version of it
    /// on card B: one the daemon cannot have uploaded yet, so A's version is still queued when
    /// B's shows up under its name (the moment issue 17's defect needed).
    fn swap_to_b(&mut self, fresh: Option<u64>) {
        if self.swapped_in {
            return;
        }
        let b = self.card_b_aside();
        let mut w = None;
        if let Some(content) = fresh {
            let rel = self.new_name("W");
            let len = 20_000 + content % 280_000;
            if self.write_version(&rel, len, content) {
                w = Some((rel, len));
            }
        }
        if let Some((rel, len)) = w.clone().filter(|_| b.exists()) {
            // Card B made by an earlier swap: it gets its version of the new name too.
            let seed = next_seed(fresh.unwrap_or_default() ^ 0xb);
            let bytes = sample_bytes(seed, (len + 1 + seed % 40_000) as usize);
            let target = b.join(&rel);
            if let Some(dir) = target.parent() {
                let _ = fs::create_dir_all(dir);
            }
            if fs::write(&target, &bytes).is_ok() {
                self.versions.entry(rel).or_default().push(sha(&bytes));
            }
        }
        if !b.exists() {
            let content = fresh.unwrap_or_default();
            let entries = self.card_entries();
            let root = self.cam.media_root();
            for (i, (rel, path)) in entries.into_iter().enumerate() {
                let Ok(inner) = path.strip_prefix(&root) else {
                    continue;
                };
                let seed = next_seed(content ^ i as u64);
                let len = fs::metadata(&path).map_or(1000, |m| m.len()) + 1 + seed % 40_000;
                let target = b.join(inner);
                // Not through write_at: card B is not in the slot yet.
                let bytes = sample_bytes(seed, len as usize);
                if let Some(dir) = target.parent() {
                    let _ = fs::create_dir_all(dir);
                }
                if fs::write(&target, &bytes).is_ok() {
                    self.versions.entry(rel).or_default().push(sha(&bytes));
                }
            }
            let _ = fs::create_dir_all(b.join("DCIM/100MEDIA"));
        }
        let (root, a) = (self.cam.media_root(), self.card_a_aside());
        if fs::rename(&root, &a).is_ok() {
            if let Err(e) = fs::rename(&b, &root) {
                let _ = fs::rename(&a, &root);
                self.out.notes.push(format!("card swap failed: {e}"));
                return;
            }
            self.swapped_in = true;
        }
    }

    /// Card B out (kept aside for the heal), card A back in.
    fn swap_to_a(&mut self) {
        if !self.swapped_in {
            return;
        }
        let (root, a, b) = (
            self.cam.media_root(),
            self.card_a_aside(),
            self.card_b_aside(),
        );
        if fs::rename(&root, &b).is_ok() && fs::rename(&a, &root).is_ok() {
            self.swapped_in = false;
        } else {
            self.out
                .died
                .push("harness: could not swap card A back".into());
        }
    }

    /// A link out of the card to a directory holding a photo, and a loop back into the card;
    /// then a photo through the link, and one on the card (reachable again round the loop).
    fn make_links(&mut self, content: u64) {
        let n = self.links.len() / 2 + 1;
        let outside = self.cam.root().join(format!("outside{n}"));
        let _ = fs::create_dir_all(&outside);
        let early = sample_bytes(content, 2000 + (content % 5000) as usize);
        let _ = fs::write(outside.join("SYSTEM.JPG"), &early);
        self.outside.insert(sha(&early));
        let dcim = self.cam.media_path("DCIM");
        let _ = fs::create_dir_all(dcim.join("100MEDIA"));
        let out_link = format!("DCIM/OUT{n}");
        let loop_link = format!("DCIM/100MEDIA/LOOP{n}");
        let _ = std::os::unix::fs::symlink(&outside, self.cam.media_path(&out_link));
        let _ = std::os::unix::fs::symlink("..", self.cam.media_path(&loop_link));
        self.links.push(out_link);
        self.links.push(loop_link);
        let later = sample_bytes(next_seed(content), 3000 + (content % 7000) as usize);
        let _ = fs::write(outside.join("LATER.JPG"), &later);
        self.outside.insert(sha(&later));
        self.links_at = Some(Instant::now());
        let rel = self.new_name("L");
        self.write_version(&rel, 4000 + content % 60_000, next_seed(content ^ 1));
    }

    /// SIGTERM, garbage over the database (same length), its -wal and -shm gone, restart:
    /// it must come up with the consent and the account as they were.
    async fn corrupt_db(&mut self, garbage: u64) {
        let consent = self.consent_now().await;
        let paired = self.paired_now().await;
        self.stop_term().await;
        let dir = self.cam.state_dir();
        let db = dir.join("cambackup.db");
        let len = fs::metadata(&db).map_or(8192, |m| m.len().max(512)) as usize;
        let mut rng = fastrand::Rng::with_seed(garbage);
        let junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if let Err(e) = fs::write(&db, junk) {
            self.out.notes.push(format!("corrupt database: {e}"));
        }
        let _ = fs::remove_file(dir.join("cambackup.db-wal"));
        let _ = fs::remove_file(dir.join("cambackup.db-shm"));
        self.start_after_state_damage("a corrupt database").await;
        if !self.expect_running {
            return;
        }
        let (c, p) = (self.consent_now().await, self.paired_now().await);
        if consent.is_some() && c != consent {
            self.out.recovery.push(format!(
                "consent {consent:?} before the corrupt database, {c:?} after"
            ));
        }
        if paired.is_some() && p != paired {
            self.out.recovery.push(format!(
                "paired {paired:?} before the corrupt database, {p:?} after"
            ));
        }
    }

    /// SIGTERM, zeros over the credentials, restart: it must come up (health 200) unpaired,
    /// consent as it was; then paired again with the same user and token.
    async fn zero_credentials(&mut self) {
        let consent = self.consent_now().await;
        let done_before = self.done_versions().await;
        self.stop_term().await;
        // The daemon takes a damaged account file for an unpairing cut short and erases the
        // upload URLs: an upload the server holds complete but the daemon had not recorded
        // done (its last answer cut off by the stop, a kill or a full state disk at its end)
        // is then sent again, as it must be. Which those are is known once it is up again.
        let complete_at_loss: Vec<(String, String, u64)> = self
            .server
            .uploads()
            .into_iter()
            .filter(|u| u.complete())
            .map(|u| (u.path().unwrap_or_default().to_owned(), u.id, u.length))
            .collect();
        let creds = self.cam.state_dir().join("credentials.json");
        let len = fs::metadata(&creds).map_or(96, |m| m.len().max(1)) as usize;
        if let Err(e) = fs::write(&creds, vec![0u8; len]) {
            self.out.notes.push(format!("zeroed credentials: {e}"));
        }
        // Started without pairing (it must come up unpaired); from then on paired again by
        // the harness: here, or at the next start if the daemon goes away meanwhile.
        self.needs_pair = false;
        self.start_after_state_damage("zeroed credentials").await;
        self.needs_pair = true;
        if !self.expect_running {
            return;
        }
        let done_after = self.done_versions().await;
        for (path, id, len) in complete_at_loss {
            if !done_after.contains(&(path, len)) {
                self.unknown_at_loss.insert(id);
            }
        }
        // Strict the other way: what the daemon knew as done it still knows (else a file
        // sent again would pass as forced above).
        for (path, len) in done_before.difference(&done_after) {
            self.out.recovery.push(format!(
                "{path} ({len} bytes) done before the zeroed credentials, not after"
            ));
        }
        match self.paired_now().await {
            Some(false) => {}
            other => self.out.recovery.push(format!(
                "after zeroed credentials GET /v1/account says paired {other:?}, not false"
            )),
        }
        let c = self.consent_now().await;
        if consent.is_some() && c != consent {
            self.out.recovery.push(format!(
                "consent {consent:?} before the zeroed credentials, {c:?} after"
            ));
        }
        self.pair_again().await;
    }

    /// Starts the daemon after its state was damaged: it must come up (not on a full disk).
    async fn start_after_state_damage(&mut self, what: &str) {
        self.start_daemon().await;
        if !self.expect_running && self.filler.is_none() {
            self.out.recovery.push(format!(
                "no health 200 within {} s after {what}",
                START.as_secs()
            ));
        }
    }

    async fn apply(&mut self, f: Fault) {
        self.log(format!("{f:?}"));
        let kind = f.kind();
        let mut applied = true;
        match f {
            Fault::Kill { at, restart_after } => {
                if !self.expect_running {
                    applied = false;
                } else {
                    // A fresh file makes sure the moment comes: by now the first files may
                    // all be uploaded. Big enough for several PATCHes.
                    if at != KillAt::Now {
                        let rel = self.new_name("K");
                        let content = next_seed(self.plan.seed ^ self.added as u64);
                        self.write_version(&rel, 1_200_000 + content % 1_000_000, content);
                    }
                    // Holding answers back a little makes "during the creation" mean that:
                    // the POST reached the server, its answer has not reached the daemon.
                    let latency = self.proxy.latency();
                    if at == KillAt::Creation {
                        self.proxy
                            .set_latency(latency.max(Duration::from_millis(150)));
                    }
                    if at != KillAt::Now && !self.wait_for(at).await {
                        self.out.notes.push(format!(
                            "{kind}: the moment did not come in 5 s; killed then"
                        ));
                    }
                    self.sample_rss();
                    self.daemon.kill(Signal::Kill);
                    self.expect_running = false;
                    self.proxy.set_latency(latency);
                    let _ = self.daemon.wait_exit(Duration::from_secs(5)).await;
                    tokio::time::sleep(restart_after).await;
                    self.start_daemon().await;
                }
            }
            Fault::Term { restart_after } => {
                if !self.expect_running {
                    applied = false;
                } else {
                    self.stop_term().await;
                    tokio::time::sleep(restart_after).await;
                    self.start_daemon().await;
                }
            }
            Fault::CardSwap { content, .. } => {
                if self.card_out || self.swapped_in {
                    applied = false;
                } else {
                    self.swap_to_b(Some(content));
                }
            }
            Fault::Symlinks { content } => {
                if self.card_out {
                    applied = false;
                } else {
                    self.make_links(content);
                }
            }
            Fault::NonUtf8Dir {
                len,
                content,
                backslash,
            } => {
                use std::os::unix::ffi::OsStrExt;
                self.added += 1;
                let name = if backslash {
                    format!("U{:03}\\B.JPG", self.added)
                } else {
                    format!("U{:03}.JPG", self.added)
                };
                let dir = std::ffi::OsStr::from_bytes(b"Caf\xe9");
                let path = self.cam.media_path("DCIM").join(dir).join(&name);
                let rel = storage_path(path.strip_prefix(self.cam.media_root()).unwrap_or(&path));
                applied = self.write_at(&rel, &path, len, content);
            }
            Fault::CorruptDb { garbage } => {
                if !self.expect_running {
                    applied = false;
                } else {
                    self.corrupt_db(garbage).await;
                }
            }
            Fault::ZeroedCredentials => {
                if !self.expect_running {
                    applied = false;
                } else {
                    self.zero_credentials().await;
                }
            }
            Fault::PowerCut {
                at,
                tear,
                restart_after,
            } => {
                if !self.expect_running || self.cut.is_none() {
                    applied = false;
                } else {
                    self.power_cut(at, tear, restart_after).await;
                }
            }
            Fault::Latency { latency, .. } => self.proxy.set_latency(latency),
            Fault::Bandwidth { bytes_per_sec, .. } => self.proxy.set_rate(Some(bytes_per_sec)),
            Fault::ConnReset => self.proxy.reset_all(),
            Fault::HalfOpen { .. } => self.proxy.set_silent(true),
            Fault::TruncatedAnswer { bytes } => self.proxy.truncate_next_answer(bytes),
            Fault::Refuse { .. } => self.proxy.set_refusing(true),
            Fault::ServerErrors { count } => {
                if let Server::Receiver(rx) = &self.server {
                    rx.inject(RxFault::server_errors(count));
                }
            }
            Fault::RetryAfter {
                status,
                secs,
                count,
            } => {
                if let Server::Receiver(rx) = &self.server {
                    rx.inject(RxFault::retry_after(status, secs).times(count));
                }
            }
            Fault::UploadGone { status } => {
                if let Server::Receiver(rx) = &self.server {
                    let open = rx
                        .uploads()
                        .into_iter()
                        .rev()
                        .find(|u| !u.complete && !u.terminated);
                    match (status, open) {
                        (410, Some(u)) => rx.expire(&u.id),
                        _ => rx.inject(RxFault::upload_not_found()),
                    }
                }
            }
            Fault::ServerRestart => {
                match &mut self.server {
                    Server::Receiver(rx) => {
                        for u in rx.forget_unfinished() {
                            if let Some(p) = u.storage_path() {
                                *self.forgotten.entry(p.to_owned()).or_default() += 1;
                            }
                            self.forgotten_ids.insert(u.id);
                        }
                    }
                    Server::TusNode(n) => match n.restart() {
                        Ok(addr) => self.proxy.set_upstream(addr),
                        Err(e) => self.out.died.push(format!("@tus/server restart: {e}")),
                    },
                }
                self.proxy.reset_all();
            }
            Fault::CardOut { .. } => {
                self.cam.set_card_present(false);
                self.card_out = true;
            }
            Fault::AddFile { len, content } => {
                let rel = self.new_name("A");
                applied = self.write_version(&rel, len, content);
            }
            Fault::RewriteFile { pick, len, content } => {
                let files = self.card_entries();
                if files.is_empty() || self.card_out {
                    applied = false;
                } else {
                    let (rel, path) = files[pick % files.len()].clone();
                    applied = self.write_at(&rel, &path, len, content);
                }
            }
            Fault::DeleteFile { pick } => {
                let files = self.card_entries();
                if files.is_empty() || self.card_out {
                    applied = false;
                } else {
                    let _ = fs::remove_file(&files[pick % files.len()].1);
                }
            }
            Fault::Charger { .. } => self.cam.set_charging(false),
            Fault::Wifi { .. } => self.cam.set_interface("wlan0", false, true),
            Fault::Recording { .. } => self.cam.set_recording(true),
            Fault::Consent { .. } => {
                applied = self
                    .api("PATCH", "/v1/settings", Some(json!({"auto_upload": false})))
                    .await
                    .is_some_and(|(c, _)| c == 200);
            }
            Fault::DiskFull { .. } => {
                if self._mount.is_none() {
                    applied = false;
                } else if self.filler.is_none() {
                    let path = self.cam.state_dir().join("soak-filler");
                    fill(&path);
                    self.filler = Some(path);
                }
            }
            Fault::WithdrawFullDisk { .. } => {
                applied = self.withdraw_on_a_full_disk().await;
            }
            Fault::ClockPast { len, content } => {
                let rel = self.new_name("P");
                applied = self.write_version(&rel, len, content);
                if applied {
                    let days = Duration::from_secs(86400 * (1 + content % 30));
                    set_mtime(&self.cam.media_path(&rel), UNIX_EPOCH + days);
                }
            }
            Fault::ClockFuture {
                len,
                content,
                ahead,
            } => {
                let rel = self.new_name("F");
                applied = self.write_version(&rel, len, content);
                if applied {
                    set_mtime(&self.cam.media_path(&rel), SystemTime::now() + ahead);
                }
            }
        }
        if applied {
            self.out.faults.push(kind);
        } else {
            self.out.notes.push(format!("{kind}: not applicable then"));
        }
    }

    async fn end(&mut self, f: &Fault) {
        self.log(format!("end of {}", f.kind()));
        match f {
            Fault::Latency { .. } => self.proxy.set_latency(Duration::ZERO),
            Fault::Bandwidth { .. } => self.proxy.set_rate(None),
            Fault::HalfOpen { .. } => self.proxy.set_silent(false),
            Fault::Refuse { .. } => self.proxy.set_refusing(false),
            Fault::CardOut { .. } => {
                self.cam.set_card_present(true);
                self.card_out = false;
            }
            Fault::CardSwap { .. } => {
                // A card taken out meanwhile (card B) comes back first, then card A returns.
                self.cam.set_card_present(true);
                self.card_out = false;
                self.swap_to_a();
            }
            Fault::Charger { .. } => self.cam.set_charging(true),
            Fault::Wifi { .. } => self.cam.set_interface("wlan0", true, true),
            Fault::Recording { .. } => self.cam.set_recording(false),
            Fault::Consent { .. } => {
                let _ = self
                    .api("PATCH", "/v1/settings", Some(json!({"auto_upload": true})))
                    .await;
            }
            Fault::DiskFull { .. } => {
                if let Some(p) = self.filler.take() {
                    let _ = fs::remove_file(p);
                }
            }
            Fault::WithdrawFullDisk { .. } => {
                if let Some(p) = self.filler.take() {
                    let _ = fs::remove_file(p);
                }
                // The user grants again: consent on, and a resume (a withdrawal the disk had no
                // room for at all leaves no record of the choices, which reads as paused).
                let _ = self
                    .api("PATCH", "/v1/settings", Some(json!({"auto_upload": true})))
                    .await;
                let _ = self.api("POST", "/v1/resume", None).await;
            }
            _ => {}
        }
    }

    /// Every condition back to "upload now".
    async fn heal(&mut self) {
        self.log("heal");
        self.proxy.clear();
        if let Server::Receiver(rx) = &self.server {
            rx.clear_faults();
        }
        self.cam.set_card_present(true);
        self.card_out = false;
        self.swap_to_a();
        self.cam.set_charging(true);
        self.cam.set_interface("wlan0", true, true);
        self.cam.set_recording(false);
        if let Some(p) = self.filler.take() {
            let _ = fs::remove_file(p);
        }
        if self.card_mount.is_some() {
            let _ = fs::remove_file(self.cam.media_root().join(CARD_FILLER));
        }
        self.check_alive().await;
        self.start_daemon().await;
        if self.needs_pair && self.expect_running {
            self.pair_again().await;
        }
        let _ = self
            .api("PATCH", "/v1/settings", Some(json!({"auto_upload": true})))
            .await;
        let _ = self.api("POST", "/v1/resume", None).await;
    }

    /// Issue 22, item 1: fills the state disk, withdraws consent (200, whatever the disk says),
    /// restarts the daemon on the still-full disk and checks that consent is still off. False
    /// when it could not be tried (no tmpfs, no daemon).
    async fn withdraw_on_a_full_disk(&mut self) -> bool {
        if self._mount.is_none() || !self.expect_running {
            return false;
        }
        if self.filler.is_none() {
            let path = self.cam.state_dir().join("soak-filler");
            fill(&path);
            self.filler = Some(path);
        }
        match self
            .api("PATCH", "/v1/settings", Some(json!({"auto_upload": false})))
            .await
        {
            Some((200, _)) => {}
            Some((code, body)) => {
                self.out.withdrawal.push(format!(
                    "consent off on a full state disk answered {code}: {body}"
                ));
                return true;
            }
            None => return false,
        }
        self.stop_term().await;
        self.start_daemon().await;
        if !self.expect_running {
            // Noted by start_daemon; the heal starts it again.
            return true;
        }
        match self.api("GET", "/v1/settings", None).await {
            Some((200, v)) if v["auto_upload"] == false => {}
            Some((code, v)) => self.out.withdrawal.push(format!(
                "after a restart on the full state disk the settings answered {code}: {v}"
            )),
            None => self
                .out
                .notes
                .push("no settings after a restart on the full state disk".into()),
        }
        true
    }

    /// Waits for the card and the server to agree, then checks the invariant.
    async fn converge(&mut self) {
        let heal_at = SystemTime::now();
        let mut hashes: BTreeMap<String, [u8; 32]> = BTreeMap::new();
        let mut work_at_heal = None;
        let mut converged = true;
        if self.card_b_aside().exists() {
            // A card swap happened: card B goes in until it settles (its versions must all
            // reach the server), then card A comes back (none of A's may go up again).
            self.log("heal: card B in until it settles");
            self.swap_to_b(None);
            let (ok, _) = self.settle(&mut hashes, &mut work_at_heal).await;
            converged &= ok;
            let b = self.card_state();
            self.out.notes.push(format!(
                "card B in the heal: {} files, {} settled",
                b.len(),
                if ok { "all" } else { "not all" }
            ));
            for (rel, (h, len)) in b {
                self.required.insert((rel, h), len);
            }
            self.swap_to_a();
            self.log("heal: card A back");
        }
        let (ok, mut queue) = self.settle(&mut hashes, &mut work_at_heal).await;
        self.out.converged = converged && ok;
        // A late duplicate would show within this.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(at) = self.links_at {
            // A file followed through a link is queued only once it settled (1 s) and the
            // camera is idle (1 s): give it that, and the upload time, before looking.
            let until = at + Duration::from_secs(5);
            let now = Instant::now();
            if until > now {
                tokio::time::sleep(until - now).await;
            }
        }
        self.sample_rss();
        if self.expect_running {
            queue = self.queue().await;
        }
        self.check_alive().await;
        if self.expect_running {
            self.sample_rss();
            match self.daemon.stop().await {
                Some(s) if s.success() => {}
                other => self
                    .out
                    .died
                    .push(format!("final SIGTERM: exit {other:?} instead of 0")),
            }
        }
        if work_at_heal == Some(true) {
            self.out.heal_to_start = self
                .server
                .request_times()
                .into_iter()
                .filter(|t| *t >= heal_at)
                .min()
                .and_then(|t| t.duration_since(heal_at).ok());
        }
        self.evaluate(&queue, &mut hashes);
    }

    /// Waits (at most `CONVERGE`) until every file on the card has a byte-identical complete
    /// upload and the queue has nothing `pending` or `uploading`; returns whether it did, and
    /// the queue.
    async fn settle(
        &mut self,
        hashes: &mut BTreeMap<String, [u8; 32]>,
        work_at_heal: &mut Option<bool>,
    ) -> (bool, Vec<Value>) {
        let deadline = Instant::now() + CONVERGE;
        let mut queue: Vec<Value>;
        loop {
            self.check_alive().await;
            self.sample_rss();
            let card = self.card_state();
            let complete = self.complete_uploads(hashes);
            let all_there = card.iter().all(|(rel, (h, _))| {
                complete
                    .iter()
                    .any(|(p, ch, _)| p.as_deref() == Some(rel.as_str()) && ch == h)
            });
            work_at_heal.get_or_insert(!all_there);
            queue = self.queue().await;
            let busy = queue
                .iter()
                .any(|i| matches!(i["state"].as_str(), Some("pending" | "uploading")));
            if all_there && !busy && self.expect_running {
                return (true, queue);
            }
            if Instant::now() >= deadline {
                return (false, queue);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn card_state(&self) -> BTreeMap<String, ([u8; 32], u64)> {
        self.card_entries()
            .into_iter()
            .filter_map(|(rel, path)| {
                let len = fs::metadata(&path).ok()?.len();
                Some((rel, (sha_file(&path)?, len)))
            })
            .collect()
    }

    /// (storage path, content hash, upload) of every completed upload.
    fn complete_uploads(
        &self,
        cache: &mut BTreeMap<String, [u8; 32]>,
    ) -> Vec<(Option<String>, [u8; 32], crate::server::StoredUpload)> {
        self.server
            .uploads()
            .into_iter()
            .filter(|u| u.complete())
            .filter_map(|u| {
                let h = match cache.get(&u.id) {
                    Some(h) => *h,
                    None => {
                        let h = sha_file(&u.data)?;
                        cache.insert(u.id.clone(), h);
                        h
                    }
                };
                Some((u.path().map(str::to_owned), h, u))
            })
            .collect()
    }

    async fn queue(&self) -> Vec<Value> {
        match self.api("GET", "/v1/queue?limit=1000", None).await {
            Some((200, body)) => body["items"].as_array().cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn evaluate(&mut self, queue: &[Value], cache: &mut BTreeMap<String, [u8; 32]>) {
        let card = self.card_state();
        let complete = self.complete_uploads(cache);
        self.out.files = card.len();
        self.out.bytes = card.values().map(|(_, l)| l).sum();
        for (rel, (h, _)) in &card {
            let n = complete
                .iter()
                .filter(|(p, ch, _)| p.as_deref() == Some(rel.as_str()) && ch == h)
                .count();
            if n == 0 {
                self.out.lost.push(format!("{rel} ({})", hex8(h)));
            }
        }
        // Card B's versions (a swap): each must be there too, keyed by path and content.
        for ((rel, h), len) in &self.required {
            if card.get(rel).is_some_and(|(ch, _)| ch == h) {
                continue;
            }
            let there = complete
                .iter()
                .any(|(p, ch, _)| p.as_deref() == Some(rel.as_str()) && ch == h);
            if !there {
                self.out
                    .lost
                    .push(format!("{rel} ({}, {len} bytes, on card B)", hex8(h)));
            }
        }
        // Links: nothing through one, complete or not; no content from outside the card.
        for u in self.server.every_upload() {
            let path = u.path().unwrap_or_default();
            if let Some(link) = self
                .links
                .iter()
                .find(|l| path.starts_with(&format!("{l}/")))
            {
                self.out.escaped.push(format!(
                    "upload {} of {path} ({} of {} bytes) went through the link {link}",
                    u.id, u.offset, u.length
                ));
            }
        }
        for (p, h, u) in &complete {
            if self.outside.contains(h) {
                self.out.escaped.push(format!(
                    "upload {} ({:?}) holds a file from outside the card",
                    u.id, p
                ));
            }
        }
        // Each (path, content) completed: the uploads (id, bytes) that hold it.
        type Holders = Vec<(String, u64)>;
        let mut seen: BTreeMap<(String, [u8; 32]), Holders> = BTreeMap::new();
        let want: BTreeMap<&str, &str> = [
            ("user_id", USER_ID),
            ("device_type", "SJ10 Pro"),
            ("serial_number", "TEST0001"),
        ]
        .into_iter()
        .collect();
        for (p, h, u) in &complete {
            let path = p.clone().unwrap_or_default();
            seen.entry((path.clone(), *h))
                .or_default()
                .push((u.id.clone(), u.length));
            let known = self.versions.get(&path).is_some_and(|v| v.contains(h));
            let through_link = self
                .links
                .iter()
                .any(|l| path.starts_with(&format!("{l}/")));
            if !known && !through_link {
                self.out.corrupt.push(format!(
                    "{path}: upload {} ({} bytes, {}) is no version written",
                    u.id,
                    u.length,
                    hex8(h)
                ));
            }
            let keys: BTreeSet<&str> = u.metadata.keys().map(String::as_str).collect();
            let keys_ok = keys
                == ["user_id", "device_type", "serial_number", "storage_path"]
                    .into_iter()
                    .collect();
            let values_ok = want
                .iter()
                .all(|(k, v)| u.metadata.get(*k).map(String::as_str) == Some(*v));
            // A name that is not UTF-8 is escaped (`\xNN`), never replaced by U+FFFD.
            let path_ok = !path.contains('\u{FFFD}');
            if !keys_ok || !values_ok || !path_ok {
                self.out
                    .bad_metadata
                    .push(format!("{path}: {:?}", u.metadata));
            }
            self.out.completed_bytes += u.length;
        }
        // A completion beyond the first is a duplicate, unless the daemon was made to lose the
        // earlier one: the server denied it (404/410), or the account loss erased its URL
        // before its outcome was recorded. One allowance per such upload.
        let gone = self.server.gone_answers();
        for ((path, h), ups) in seen {
            if ups.len() < 2 {
                continue;
            }
            let forced = ups
                .iter()
                .filter(|(id, _)| gone.contains_key(id) || self.unknown_at_loss.contains(id))
                .count();
            let named: Vec<String> = ups
                .iter()
                .map(|(id, len)| {
                    let why = if gone.contains_key(id) {
                        ", answered 404/410"
                    } else if self.unknown_at_loss.contains(id) {
                        ", not recorded done at a credentials loss"
                    } else {
                        ""
                    };
                    format!("{id} ({len} bytes{why})")
                })
                .collect();
            let line = format!(
                "{path} ({}) completed {} times: uploads {}",
                hex8(&h),
                ups.len(),
                named.join(", ")
            );
            if ups.len() - 1 > forced {
                self.out.duplicated.push(line);
            } else {
                self.out.resent.push(line);
            }
        }
        // Extra creations: beyond one per version written and one per forced restart.
        let creations = self.server.creations(&self.forgotten);
        let uploads = self.server.uploads();
        for (path, n) in &creations {
            let versions = self.versions.get(path).map_or(0, Vec::len);
            let forced: usize = self.forgotten.get(path).copied().unwrap_or(0)
                + uploads
                    .iter()
                    .filter(|u| u.path() == Some(path.as_str()))
                    .map(|u| gone.get(&u.id).copied().unwrap_or(0).min(1))
                    .sum::<usize>();
            self.out.extra_creations += n.saturating_sub(versions + forced);
        }
        self.out.empty_orphans = uploads.iter().filter(|u| u.offset == 0).count();
        self.out.received = self
            .server
            .body_bytes()
            .unwrap_or_else(|| self.proxy.stats().bytes_up);
        // The queue against the server.
        for (rel, (h, len)) in &card {
            let items: Vec<&Value> = queue
                .iter()
                .filter(|i| i["storage_path"] == rel.as_str())
                .collect();
            let done = items
                .iter()
                .any(|i| i["state"] == "done" && i["size"].as_u64() == Some(*len));
            let on_server = complete
                .iter()
                .any(|(p, ch, _)| p.as_deref() == Some(rel.as_str()) && ch == h);
            if done != on_server {
                let states: Vec<String> = items
                    .iter()
                    .map(|i| format!("{}/{}", i["state"], i["size"]))
                    .collect();
                self.out.queue.push(format!(
                    "{rel}: queue {} (items {}), server {}",
                    if done { "done" } else { "not done" },
                    states.join(","),
                    if on_server { "has it" } else { "lacks it" }
                ));
            }
        }
        for i in queue {
            if i["state"] == "uploading" {
                self.out.queue.push(format!(
                    "{}: still `uploading` at the end",
                    i["storage_path"]
                ));
            }
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        // `file_type` does not follow links: a link on the card is neither a dir nor a file.
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(root, &path, out);
        } else if ft.is_file() {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push((storage_path(rel), path.clone()));
            }
        }
    }
}

/// The storage path the daemon must send for `rel` (INTERFACE.md section 6), written here from
/// the spec rather than taken from the daemon: components joined by `/`, each byte that is not
/// part of valid UTF-8 written `\xNN` (upper-case hex), a backslash `\x5C`.
fn storage_path(rel: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for (i, c) in rel.components().enumerate() {
        if i > 0 {
            out.push('/');
        }
        for chunk in c.as_os_str().as_bytes().utf8_chunks() {
            for ch in chunk.valid().chars() {
                if ch == '\\' {
                    out.push_str("\\x5C");
                } else {
                    out.push(ch);
                }
            }
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02X}"));
            }
        }
    }
    out
}

/// Writes zeros until the file system says ENOSPC.
fn fill(path: &Path) {
    let Ok(mut f) = fs::File::create(path) else {
        return;
    };
    let block = vec![0u8; 64 * 1024];
    // Bounded: the tmpfs is 8 MiB.
    for _ in 0..1024 {
        if f.write_all(&block).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
}

fn set_mtime(path: &Path, t: SystemTime) {
    if let Ok(f) = fs::File::options().write(true).open(path) {
        let _ = f.set_modified(t);
    }
}

/// (available to an unprivileged writer, total) bytes of the file system holding `path`.
fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path; `st` is written by statvfs before it is read.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn storage_paths_escape_bytes_that_are_not_utf8_and_backslashes() {
        let rel = Path::new(std::ffi::OsStr::from_bytes(b"DCIM/Caf\xe9/U007\\B.JPG"));
        assert_eq!(storage_path(rel), r"DCIM/Caf\xE9/U007\x5CB.JPG");
        let rel = Path::new("DCIM/Café/É.JPG");
        assert_eq!(storage_path(rel), "DCIM/Café/É.JPG");
    }
}
