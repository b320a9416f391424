//! `soak`: a thousand random faults, nothing lost (issue 10).
//!
//! Runs the real `cambackup daemon` against a real tus server (testkit's receiver, or
//! @tus/server from `interop/` for a share of the trials) through a TCP fault proxy, trial
//! after trial. Each trial draws from its seed a card, a server and a schedule of faults
//! (kill -9 at chosen moments, SIGTERM, network and server faults, card and device flaps,
//! consent toggles, a full state disk, clock-skewed mtimes; and issue 17's: a card swapped for
//! one reusing names, links out of the card and round a loop, a non-UTF-8 directory, a corrupt
//! database, zeroed credentials; and issue 26's power cuts, the state dir on testkit's power-cut
//! layer so that what was not synced is lost), heals everything, waits for the
//! daemon to settle and checks from the server's side that every file on the card arrived
//! exactly once, byte-identical, with exactly the four metadata keys; that the queue agrees;
//! that the daemon never died unless killed and stayed under 32 MiB. See docs/SOAK.md.
//!
//! ```text
//! soak [--seed S] [--trials N] [--time-budget SECS] [--daemon PATH] [--node-share F]
//!      [--no-known-defects] [--faults KIND[,KIND]] [--json FILE] [--jobs N] [--verbose]
//!      [--plans]
//! ```
//! A failing trial prints its seed; `soak --seed S --trials 1 --verbose` replays it.
//! Exit status: 0 when every trial held the invariant, 1 otherwise, 2 on bad usage.

mod plan;
mod server;
mod trial;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use plan::{next_seed, Allowed, Groups};
use server::TusNode;
use trial::{Env, Outcome, RSS_LIMIT_KIB};

struct Args {
    seed: u64,
    trials: u64,
    budget: Option<Duration>,
    daemon: PathBuf,
    node_share: f64,
    known_defects: bool,
    json: Option<PathBuf>,
    verbose: bool,
    jobs: usize,
    plans: bool,
    groups: Groups,
}

const USAGE: &str = "usage: soak [--seed S] [--trials N] [--time-budget SECS] [--daemon PATH] \
[--node-share F] [--no-known-defects] [--faults KIND[,KIND]] [--json FILE] [--jobs N] [--verbose] \
[--plans]

  --seed S            first trial's seed (default: from the clock); a failing trial's seed
                      replays it alone: soak --seed S --trials 1 --verbose
  --trials N          how many trials (default 20)
  --time-budget SECS  stop starting trials after this long (the report says so)
  --daemon PATH       the cambackup binary (default: $CAMBACKUP_BIN, else target/debug/cambackup)
  --node-share F      share of trials against @tus/server (default 0.3; 0 without node)
  --no-known-defects  leave out the faults that hit defects known and being fixed: future
                      mtimes, a full state disk (docs/SOAK.md, \"What the soak found\")
  --faults KIND,...   only these kinds of fault (default: all): kill, term, net, server, card,
                      device, consent, disk_full, clock, card_swap, symlinks, non_utf8,
                      corrupt_db, zeroed_credentials, power_cut (root and /dev/fuse: the
                      state dir on testkit's power-cut layer; alone, 1-3 cuts a trial),
                      withdraw_full_disk (root: consent withdrawn on a full state disk, then
                      a restart on it)
  --json FILE         also write every trial's outcome as JSON lines
  --jobs N            trials run N at a time (default 1); each has its own daemon, server,
                      proxy and temp dirs, so they do not interfere (but share the CPUs)
  --verbose           print each trial's faults as they happen
  --plans             print each trial's seed, server and planned fault kinds; run nothing";

fn parse_args() -> Result<Args, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = Args {
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        trials: 20,
        budget: None,
        daemon: std::env::var_os("CAMBACKUP_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/debug/cambackup")),
        node_share: 0.3,
        known_defects: true,
        json: None,
        verbose: false,
        jobs: 1,
        plans: false,
        groups: Groups::ALL,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--seed" => args.seed = val("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--trials" => {
                args.trials = val("--trials")?
                    .parse()
                    .map_err(|e| format!("--trials: {e}"))?
            }
            "--time-budget" => {
                let s: u64 = val("--time-budget")?
                    .parse()
                    .map_err(|e| format!("--time-budget: {e}"))?;
                args.budget = Some(Duration::from_secs(s));
            }
            "--daemon" => args.daemon = PathBuf::from(val("--daemon")?),
            "--node-share" => {
                args.node_share = val("--node-share")?
                    .parse()
                    .map_err(|e| format!("--node-share: {e}"))?
            }
            "--no-known-defects" => args.known_defects = false,
            "--faults" => args.groups = Groups::parse(&val("--faults")?)?,
            "--json" => args.json = Some(PathBuf::from(val("--json")?)),
            "--verbose" | "-v" => args.verbose = true,
            "--plans" => args.plans = true,
            "--jobs" => {
                args.jobs = val("--jobs")?
                    .parse::<usize>()
                    .map_err(|e| format!("--jobs: {e}"))?
                    .max(1)
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !args.daemon.is_file() {
        return Err(format!(
            "no daemon binary at {} (build it with `cargo build`, or pass --daemon PATH)",
            args.daemon.display()
        ));
    }
    Ok(args)
}

/// Sums over a run.
#[derive(Default)]
struct Totals {
    trials: u64,
    by_server: BTreeMap<String, u64>,
    faults: BTreeMap<&'static str, u64>,
    files: u64,
    bytes: u64,
    lost: u64,
    duplicated: u64,
    resent: u64,
    corrupt: u64,
    bad_metadata: u64,
    queue: u64,
    died: u64,
    escaped: u64,
    recovery: u64,
    withdrawal: u64,
    freed: u64,
    freed_from_note: u64,
    unsettled: u64,
    extra_creations: u64,
    empty_orphans: u64,
    received: u64,
    completed_bytes: u64,
    peak_rss_kib: u64,
    syncs: BTreeMap<String, u64>,
    heal_to_start: Vec<Duration>,
    failed: Vec<(u64, Vec<String>, Vec<&'static str>)>,
    secs: f64,
}

impl Totals {
    fn add(&mut self, o: &Outcome) {
        self.trials += 1;
        *self.by_server.entry(o.server.clone()).or_default() += 1;
        for f in &o.faults {
            *self.faults.entry(f).or_default() += 1;
        }
        self.files += o.files as u64;
        self.bytes += o.bytes;
        self.lost += o.lost.len() as u64;
        self.duplicated += o.duplicated.len() as u64;
        self.resent += o.resent.len() as u64;
        self.corrupt += o.corrupt.len() as u64;
        self.bad_metadata += o.bad_metadata.len() as u64;
        self.queue += o.queue.len() as u64;
        self.died += o.died.len() as u64;
        self.escaped += o.escaped.len() as u64;
        self.recovery += o.recovery.len() as u64;
        self.withdrawal += o.withdrawal.len() as u64;
        self.freed += o.freed.len() as u64;
        self.freed_from_note += o.freed_from_note;
        self.unsettled += u64::from(!o.converged);
        self.extra_creations += o.extra_creations as u64;
        self.empty_orphans += o.empty_orphans as u64;
        self.received += o.received;
        self.completed_bytes += o.completed_bytes;
        self.peak_rss_kib = self.peak_rss_kib.max(o.peak_rss_kib);
        self.heal_to_start.extend(o.heal_to_start);
        for (k, v) in &o.syncs {
            *self.syncs.entry(k.clone()).or_default() += v;
        }
        self.secs += o.secs;
        let why = o.failures();
        if !why.is_empty() {
            let mut kinds = o.faults.clone();
            kinds.sort();
            kinds.dedup();
            self.failed.push((o.seed, why, kinds));
        }
    }

    fn table(&self, args: &Args, stopped_early: bool, wall: Duration) -> String {
        let mut s = String::new();
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        let mut h = self.heal_to_start.clone();
        h.sort();
        let median = h.get(h.len() / 2).copied().unwrap_or_default();
        let longest = h.last().copied().unwrap_or_default();
        let resent = self.received.saturating_sub(self.completed_bytes);
        s.push_str(&format!(
            "\n## soak: seed {}, {} trials{} ({:.0} s wall)\n\n",
            args.seed,
            self.trials,
            if stopped_early {
                format!(" of {} (time budget reached)", args.trials)
            } else {
                String::new()
            },
            wall.as_secs_f64()
        ));
        s.push_str("| figure | value |\n| --- | --- |\n");
        let servers: Vec<String> = self
            .by_server
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let rows = [
            (
                "trials (by server)",
                format!("{} ({})", self.trials, servers.join(", ")),
            ),
            (
                "trials failing the invariant",
                format!("{}", self.failed.len()),
            ),
            (
                "faults injected",
                format!("{}", self.faults.values().sum::<u64>()),
            ),
            (
                "files (settled on the card at the end)",
                format!("{}", self.files),
            ),
            ("file bytes", format!("{}", self.bytes)),
            ("lost", format!("{}", self.lost)),
            ("duplicated", format!("{}", self.duplicated)),
            (
                "sent again, forced (the first answered 404/410, or its URL erased by a credentials loss before its outcome was recorded)",
                format!("{}", self.resent),
            ),
            ("corrupt", format!("{}", self.corrupt)),
            ("bad metadata", format!("{}", self.bad_metadata)),
            ("queue disagrees with the server", format!("{}", self.queue)),
            (
                "daemon died unless killed / bad exit",
                format!("{}", self.died),
            ),
            (
                "uploads through a link / from outside the card",
                format!("{}", self.escaped),
            ),
            (
                "state recovery (corrupt database, zeroed credentials, power cut)",
                format!("{}", self.recovery),
            ),
            (
                "withdrawals refused or undone on a full state disk",
                format!("{}", self.withdrawal),
            ),
            (
                "files gone at a cut during freeing without a record or a complete upload",
                format!(
                    "{} (recorded from the deletion's note after the cut: {})",
                    self.freed, self.freed_from_note
                ),
            ),
            (
                "not settled 60 s after the heal",
                format!("{}", self.unsettled),
            ),
            (
                "extra creations (beyond versions + forced restarts)",
                format!(
                    "{} (uploads never sent a byte: {})",
                    self.extra_creations, self.empty_orphans
                ),
            ),
            (
                "bytes sent again, % of completed bytes",
                format!(
                    "{:.1} % ({} of {})",
                    pct(resent, self.completed_bytes),
                    resent,
                    self.completed_bytes
                ),
            ),
            (
                "peak RSS (VmHWM)",
                format!(
                    "{:.1} MiB (limit {} MiB)",
                    self.peak_rss_kib as f64 / 1024.0,
                    RSS_LIMIT_KIB / 1024
                ),
            ),
            (
                "heal → first upload request (median / longest)",
                format!(
                    "{:.2} s / {:.2} s over {} trials with work left",
                    median.as_secs_f64(),
                    longest.as_secs_f64(),
                    h.len()
                ),
            ),
        ];
        for (k, v) in rows {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        s.push_str("\n| fault kind | injected |\n| --- | --- |\n");
        for (k, v) in &self.faults {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        if !self.syncs.is_empty() {
            s.push_str("\n| syncs on the power-cut layer (state dir) | count |\n| --- | --- |\n");
            for (k, v) in &self.syncs {
                s.push_str(&format!("| {k} | {v} |\n"));
            }
        }
        if !self.failed.is_empty() {
            s.push_str("\nfailing trials (replay: soak --seed S --trials 1 --verbose):\n");
            for (seed, why, kinds) in &self.failed {
                s.push_str(&format!(
                    "- seed {seed}: {}\n  faults: {}\n",
                    why.join(" / "),
                    kinds.join(", ")
                ));
            }
        }
        s
    }
}

fn outcome_json(o: &Outcome) -> serde_json::Value {
    serde_json::json!({
        "seed": o.seed, "server": o.server, "faults": o.faults, "files": o.files,
        "bytes": o.bytes, "lost": o.lost, "duplicated": o.duplicated, "resent": o.resent,
        "corrupt": o.corrupt,
        "bad_metadata": o.bad_metadata, "queue": o.queue, "died": o.died,
        "escaped": o.escaped, "recovery": o.recovery, "withdrawal": o.withdrawal, "freed": o.freed, "freed_from_note": o.freed_from_note,
        "converged": o.converged, "extra_creations": o.extra_creations,
        "empty_orphans": o.empty_orphans, "received": o.received,
        "completed_bytes": o.completed_bytes, "peak_rss_kib": o.peak_rss_kib,
        "heal_to_start_ms": o.heal_to_start.map(|d| d.as_millis() as u64),
        "notes": o.notes, "secs": o.secs, "syncs": o.syncs,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop");
    let node = args.node_share > 0.0 && TusNode::available(&interop);
    if args.node_share > 0.0 && !node {
        eprintln!(
            "soak: node or interop/node_modules missing (npm ci --prefix interop): every trial \
             runs against testkit's receiver"
        );
    }
    let disk_full = trial::can_mount();
    if !disk_full {
        eprintln!("soak: cannot mount a tmpfs (not root?): the ENOSPC fault is left out");
    }
    let power_cut = testkit::powercut::available();
    if !power_cut && args.groups.has("power_cut") {
        eprintln!("soak: no root or /dev/fuse: the power cut fault is left out");
    }
    let allowed = Allowed {
        node,
        node_share: args.node_share,
        disk_full,
        known_defects: args.known_defects,
        power_cut,
        groups: args.groups,
    };
    let env = Env {
        bin: args.daemon.clone(),
        interop,
        verbose: args.verbose,
    };
    let mut json = args.json.as_ref().map(|p| {
        std::fs::File::create(p).unwrap_or_else(|e| {
            eprintln!("soak: cannot write {}: {e}", p.display());
            std::process::exit(2);
        })
    });
    eprintln!(
        "soak: seed {}, {} trials, daemon {}",
        args.seed,
        args.trials,
        args.daemon.display()
    );
    if args.plans {
        let mut seed = args.seed;
        for i in 0..args.trials {
            let p = plan::plan(seed, allowed);
            let kinds: Vec<&str> = p.faults.iter().map(|(_, f)| f.kind()).collect();
            println!(
                "trial {i:>4} seed {seed:>20} {:?}: {}",
                p.server,
                kinds.join(", ")
            );
            seed = next_seed(seed);
        }
        return;
    }
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut seeds = Vec::with_capacity(args.trials as usize);
    let mut seed = args.seed;
    for _ in 0..args.trials {
        seeds.push(seed);
        seed = next_seed(seed);
    }
    let budget = args.budget;
    let env = &env;
    let verbose = args.verbose;
    let mut results = futures_util::stream::iter(seeds.into_iter().enumerate())
        .map(|(i, seed)| async move {
            if budget.is_some_and(|b| started.elapsed() >= b) {
                return None;
            }
            let plan = plan::plan(seed, allowed);
            if verbose {
                eprintln!("trial {i} seed {seed}: {plan:?}");
            }
            Some((i, seed, trial::run(env, plan).await))
        })
        .buffer_unordered(args.jobs);
    let mut stopped_early = false;
    while let Some(r) = results.next().await {
        let Some((i, seed, o)) = r else {
            stopped_early = true;
            continue;
        };
        let why = o.failures();
        eprintln!(
            "trial {i:>4} seed {seed:>20} {:<9} {:>2} faults {:>2} files {:>5.1}s {}",
            o.server,
            o.faults.len(),
            o.files,
            o.secs,
            if why.is_empty() {
                "ok".to_string()
            } else {
                format!(
                    "FAIL: {} (replay: soak --seed {seed} --trials 1 --verbose)",
                    why.join(" / ")
                )
            }
        );
        if let Some(f) = json.as_mut() {
            use std::io::Write;
            let _ = writeln!(f, "{}", outcome_json(&o));
        }
        totals.add(&o);
    }
    println!("{}", totals.table(&args, stopped_early, started.elapsed()));
    std::process::exit(if totals.failed.is_empty() { 0 } else { 1 });
}
