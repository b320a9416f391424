//! `fleet`: N cameras (real daemons, each with its own card, state and socket) against one
//! tus server that answers 503 for a while and then recovers (issue 10, part 4).
//!
//! The cameras arrive at random instants in the first third of the outage (`--arrivals`).
//! From the server's request log it shows:
//! - the reconnection is spread: the busiest second after the recovery against the mean rate
//!   of the following minute (all data requests, and first contacts per camera); beside it,
//!   the same figure for an ideal fleet, each camera's requests of that minute moved together
//!   to an instant drawn uniformly in the minute (what independent cameras can do at best:
//!   with 100 of them the busiest of 60 seconds is well above the mean by chance alone);
//! - `Retry-After` is honoured: no camera asks again sooner than the server said (the daemon
//!   schedules in whole seconds, so 1 s of rounding is allowed);
//! - without `Retry-After` (`--retry-after 0`), no camera retries faster than its back-off:
//!   a camera's next request after a 503 against that file's full-jitter ceiling
//!   `min(cap, 2 s * 2^k)` (a 503 holds the whole camera for it);
//! - every file arrives once, byte-identical.
//!
//! ```text
//! fleet [--daemons N] [--outage SECS] [--retry-after SECS] [--arrivals SECS] [--seed S]
//!       [--daemon PATH] [--log FILE]
//! ```
//! `--log FILE` writes every data request as CSV (seconds since the recovery, camera, file,
//! method, status) to read the per-second counts from.
//! `benches/fleet.sh` runs it; docs/SOAK.md has the figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;
use testkit::camera::FakeCamera;
use testkit::daemon::Daemon;
use testkit::tus::{Fault, Receiver, RecordedRequest};

const TOKEN: &str = "fleet-token-03c9";
/// The daemons' back-off cap (`cloud.retry_max_secs`) in this run.
const RETRY_MAX_SECS: u64 = 60;
/// The daemon's first back-off ceiling (`upload::retry::DEFAULT_BASE`).
const BASE_SECS: f64 = 2.0;
/// Draws of the ideal fleet (see the module's doc).
const IDEAL_DRAWS: usize = 2000;

struct Args {
    daemons: usize,
    outage: u64,
    retry_after: u64,
    seed: u64,
    bin: PathBuf,
    /// Cameras arrive at random instants in the first this-many seconds of the outage.
    arrivals: Option<u64>,
    log: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        daemons: 100,
        outage: 60,
        retry_after: 10,
        seed: 1,
        bin: std::env::var_os("CAMBACKUP_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/debug/cambackup")),
        arrivals: None,
        log: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |n: &str| it.next().ok_or(format!("{n} needs a value"));
        let num = |s: String, n: &str| s.parse::<u64>().map_err(|e| format!("{n}: {e}"));
        match arg.as_str() {
            "--daemons" => a.daemons = num(val("--daemons")?, "--daemons")? as usize,
            "--outage" => a.outage = num(val("--outage")?, "--outage")?,
            "--retry-after" => a.retry_after = num(val("--retry-after")?, "--retry-after")?,
            "--seed" => a.seed = num(val("--seed")?, "--seed")?,
            "--arrivals" => a.arrivals = Some(num(val("--arrivals")?, "--arrivals")?),
            "--daemon" => a.bin = PathBuf::from(val("--daemon")?),
            "--log" => a.log = Some(PathBuf::from(val("--log")?)),
            "--help" | "-h" => {
                println!(
                    "usage: fleet [--daemons N] [--outage SECS] [--retry-after SECS (0: none)] \
                     [--seed S] [--arrivals SECS (default: a third of the outage)] [--daemon PATH] \
                     [--log FILE (every data request as CSV)]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !a.bin.is_file() {
        return Err(format!("no daemon binary at {}", a.bin.display()));
    }
    Ok(a)
}

/// The file a request is about (its `storage_path`).
fn path_of(r: &RecordedRequest, by_id: &BTreeMap<String, String>) -> Option<String> {
    let path = if r.method == "POST" {
        let meta = r.header("upload-metadata")?;
        let v = meta
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix("storage_path "))?;
        String::from_utf8(B64.decode(v.trim()).ok()?).ok()?
    } else {
        by_id.get(r.path.strip_prefix("/files/")?)?.clone()
    };
    Some(path)
}

/// The camera a request came from: `storage_path` names it (`DCIM/100MEDIA/CNNN_...`).
fn camera_of(r: &RecordedRequest, by_id: &BTreeMap<String, String>) -> Option<usize> {
    let path = path_of(r, by_id)?;
    let name = path.rsplit('/').next()?;
    name.strip_prefix('C')?.get(..3)?.parse().ok()
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fleet: {e}");
            std::process::exit(2);
        }
    };
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let rx = Arc::new(Receiver::builder().token(TOKEN).start().await);
    let outage = Duration::from_secs(args.outage);
    let fault = if args.retry_after > 0 {
        Fault::retry_after(503, args.retry_after)
    } else {
        Fault::status(503)
    };
    rx.inject(fault.times(usize::MAX / 2));
    let t0 = Instant::now();
    eprintln!(
        "fleet: {} daemons, server answers 503{} for {} s, seed {}",
        args.daemons,
        if args.retry_after > 0 {
            format!(" with Retry-After: {}", args.retry_after)
        } else {
            " without Retry-After".into()
        },
        args.outage,
        args.seed
    );

    // Cameras arrive at random instants in the first third of the outage (or --arrivals).
    let window_ms = args.arrivals.unwrap_or(args.outage / 3) * 1000;
    let mut arrivals: Vec<(Duration, usize)> = (0..args.daemons)
        .map(|i| (Duration::from_millis(rng.u64(0..=window_ms)), i))
        .collect();
    arrivals.sort();
    let mut cams: Vec<(FakeCamera, Daemon, Vec<String>)> = Vec::new();
    let mut files_total = 0;
    for (at, i) in arrivals {
        if let Some(wait) = at.checked_sub(t0.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let cam = FakeCamera::new();
        for (s, k, v) in [
            ("media", "settle_secs", "1"),
            ("conditions", "idle_secs", "1"),
            ("conditions", "hold_down_secs", "0"),
            ("cloud", "chunk_size_mib", "1"),
            ("cloud", "retry_max_secs", "60"),
        ] {
            cam.with(s, k, v);
        }
        let mut rels = Vec::new();
        for f in 0..rng.usize(1..=2) {
            let rel = cam.photo(&format!("C{i:03}_{f}.JPG"), rng.u64(50_000..=400_000));
            cam.age_media(&rel, Duration::from_secs(30));
            rels.push(rel);
        }
        files_total += rels.len();
        let config = cam.write_config(&rx.url());
        let mut daemon = Daemon::spawn(&args.bin, &config, &[]);
        if let Err(e) = daemon.wait_healthy(Duration::from_secs(30)).await {
            eprintln!("fleet: camera {i} did not start: {e}");
            std::process::exit(1);
        }
        for (m, p, b) in [
            (
                "PUT",
                "/v1/account",
                json!({"user_id": format!("fleet-{i}"), "token": TOKEN}),
            ),
            ("PATCH", "/v1/settings", json!({"auto_upload": true})),
        ] {
            let (code, body) = daemon.api(m, p, Some(b)).await;
            assert_eq!(code, 200, "camera {i}: {m} {p}: {body}");
        }
        cams.push((cam, daemon, rels));
    }
    eprintln!(
        "fleet: all {} cameras up after {:.1} s",
        cams.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(wait) = outage.checked_sub(t0.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    rx.clear_faults();
    let recovered = SystemTime::now();
    eprintln!(
        "fleet: server recovered at {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let deadline = Instant::now() + Duration::from_secs(args.outage + 240);
    while rx.completed_uploads().len() < files_total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_done_after = SystemTime::now()
        .duration_since(recovered)
        .unwrap_or_default();
    // Let the minute after the recovery end, so its mean rate is over a full minute.
    let minute_end = recovered + Duration::from_secs(60);
    if let Ok(left) = minute_end.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    let mut peak_rss = 0;
    for (_, d, _) in &cams {
        peak_rss = peak_rss.max(d.peak_rss_kib().unwrap_or(0));
    }

    // --- the server's view ---
    let uploads = rx.uploads();
    let by_id: BTreeMap<String, String> = uploads
        .iter()
        .filter_map(|u| Some((u.id.clone(), u.storage_path()?.to_owned())))
        .collect();
    let reqs: Vec<RecordedRequest> = rx
        .requests()
        .into_iter()
        .filter(|r| r.method != "OPTIONS")
        .collect();
    let mut arrived_once = 0;
    let mut problems = Vec::new();
    for (cam, _, rels) in &cams {
        for rel in rels {
            let n = uploads
                .iter()
                .filter(|u| u.complete && u.storage_path() == Some(rel.as_str()))
                .count();
            if n == 1 && rx.file_matches(rel, &cam.media_path(rel)) {
                arrived_once += 1;
            } else {
                problems.push(format!("{rel}: {n} completed uploads"));
            }
        }
    }

    // Spread: per-second buckets over the minute after the recovery.
    let rec = secs(recovered);
    let mut buckets = [0u32; 60];
    let mut first_contact: BTreeMap<usize, f64> = BTreeMap::new();
    let mut first_buckets = [0u32; 60];
    for r in &reqs {
        let t = secs(r.at) - rec;
        if !(0.0..60.0).contains(&t) {
            continue;
        }
        buckets[t as usize] += 1;
        if let Some(c) = camera_of(r, &by_id) {
            first_contact.entry(c).or_insert(t);
        }
    }
    for t in first_contact.values() {
        first_buckets[*t as usize] += 1;
    }
    let total: u32 = buckets.iter().sum();
    let busiest = *buckets.iter().max().unwrap_or(&0);
    let mean = f64::from(total) / 60.0;
    let first_total: u32 = first_buckets.iter().sum();
    let first_busiest = *first_buckets.iter().max().unwrap_or(&0);
    let first_mean = f64::from(first_total) / 60.0;

    // The ideal for the same cameras and the same load: each camera's requests of the minute
    // keep their spacing but start at an instant drawn uniformly in the minute (wrapping round,
    // so the total stays). Many draws: the busiest second's ratio to the mean, by chance alone.
    let mut blocks: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for r in &reqs {
        let t = secs(r.at) - rec;
        if (0.0..60.0).contains(&t) {
            if let Some(c) = camera_of(r, &by_id) {
                blocks.entry(c).or_default().push(t);
            }
        }
    }
    let mut ideal = Vec::new();
    let mut ideal_first = Vec::new();
    let mut draw_rng = fastrand::Rng::with_seed(args.seed ^ 0x1dea_1dea);
    for _ in 0..IDEAL_DRAWS {
        let mut b = [0u32; 60];
        let mut f = [0u32; 60];
        for ts in blocks.values() {
            let start = draw_rng.f64() * 60.0;
            f[start as usize] += 1;
            for t in ts {
                b[((start + t - ts[0]) % 60.0) as usize] += 1;
            }
        }
        let n: u32 = b.iter().sum();
        ideal.push(f64::from(*b.iter().max().unwrap_or(&0)) / (f64::from(n) / 60.0).max(1e-9));
        ideal_first.push(
            f64::from(*f.iter().max().unwrap_or(&0)) / (blocks.len() as f64 / 60.0).max(1e-9),
        );
    }
    let spread = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            v.get(((v.len() - 1) as f64 * p) as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let line = format!(
            "median {:.2}x (10-90 %: {:.2}-{:.2}x) of {IDEAL_DRAWS} draws",
            q(0.5),
            q(0.1),
            q(0.9),
        );
        (line, q(0.5))
    };
    let (ideal_line, ideal_median) = spread(&mut ideal);
    let (ideal_first_line, ideal_first_median) = spread(&mut ideal_first);

    // Per camera: the gaps after each 503.
    let mut per_cam: BTreeMap<usize, Vec<&RecordedRequest>> = BTreeMap::new();
    for r in &reqs {
        if let Some(c) = camera_of(r, &by_id) {
            per_cam.entry(c).or_default().push(r);
        }
    }
    let mut min_gap_after_503 = f64::MAX;
    let mut too_soon = 0;
    let mut gaps_503 = 0;
    let mut gaps = Vec::new();
    let mut attempts_in_outage = Vec::new();
    for rs in per_cam.values() {
        let mut n_outage = 0;
        for w in rs.windows(2) {
            if w[0].status != Some(503) {
                continue;
            }
            n_outage += 1;
            let gap = secs(w[1].at) - secs(w[0].at);
            gaps_503 += 1;
            gaps.push(gap);
            min_gap_after_503 = min_gap_after_503.min(gap);
            if args.retry_after > 0 && gap < args.retry_after as f64 - 1.0 {
                too_soon += 1;
            }
        }
        attempts_in_outage.push(n_outage);
    }
    attempts_in_outage.sort();
    gaps.sort_by(f64::total_cmp);
    let gap_at = |p: f64| {
        gaps.get(((gaps.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    // Per file: the same, but only the item's own next request counts.
    let mut per_item: BTreeMap<String, Vec<&RecordedRequest>> = BTreeMap::new();
    for r in &reqs {
        if let Some(p) = path_of(r, &by_id) {
            per_item.entry(p).or_default().push(r);
        }
    }
    let mut item_too_soon = 0;
    let mut item_min_gap = f64::MAX;
    let mut over_ceiling = 0;
    let mut longest_over: f64 = 0.0;
    for rs in per_item.values() {
        for w in rs.windows(2) {
            if w[0].status != Some(503) {
                continue;
            }
            let gap = secs(w[1].at) - secs(w[0].at);
            item_min_gap = item_min_gap.min(gap);
            if args.retry_after > 0 && gap < args.retry_after as f64 - 1.0 {
                item_too_soon += 1;
            }
        }
    }
    if args.retry_after == 0 {
        // Without Retry-After a 503 holds the whole camera for that file's back-off (issue
        // 29), so a camera's next request, whichever file it is for, comes within the full
        // jitter ceiling of the file that got the 503: a wait in [0, ceiling), scheduled in
        // whole seconds from the next second on (so up to 2 s more). A file of its own may
        // wait longer: another file's hold came first.
        for rs in per_cam.values() {
            let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
            for w in rs.windows(2) {
                if w[0].status != Some(503) {
                    continue;
                }
                let Some(p) = path_of(w[0], &by_id) else {
                    continue;
                };
                let k = attempts.entry(p).or_default();
                let ceiling =
                    (BASE_SECS * 2f64.powi((*k).min(20) as i32)).min(RETRY_MAX_SECS as f64);
                let gap = secs(w[1].at) - secs(w[0].at);
                if gap > ceiling + 2.5 {
                    over_ceiling += 1;
                    longest_over = longest_over.max(gap - ceiling);
                }
                *k += 1;
            }
        }
    }

    println!(
        "\n## fleet: {} daemons arriving over {} s, 503{} for {} s, seed {}\n",
        cams.len(),
        window_ms / 1000,
        if args.retry_after > 0 {
            format!(" + Retry-After: {}", args.retry_after)
        } else {
            " without Retry-After".into()
        },
        args.outage,
        args.seed
    );
    println!("| figure | value |\n| --- | --- |");
    println!("| files arrived exactly once, byte-identical | {arrived_once} of {files_total} |");
    println!(
        "| all files complete after the recovery | {:.1} s |",
        all_done_after.as_secs_f64()
    );
    println!("| data requests in the minute after the recovery | {total} (mean {mean:.2}/s) |");
    // Issue 29's bar: judged against what independent cameras would do by chance alone.
    let busiest_x = f64::from(busiest) / mean.max(f64::MIN_POSITIVE);
    let first_x = f64::from(first_busiest) / first_mean.max(f64::MIN_POSITIVE);
    println!(
        "| busiest second after the recovery | {busiest} requests = {busiest_x:.2}x the mean = **{:.2}x the ideal fleet's median** (goal <= 1.25x) |",
        busiest_x / ideal_median.max(f64::MIN_POSITIVE)
    );
    println!(
        "| first contacts per camera after the recovery: busiest second | {first_busiest} = {first_x:.2}x the mean {first_mean:.2}/s = {:.2}x the ideal fleet's median |",
        first_x / ideal_first_median.max(f64::MIN_POSITIVE)
    );
    println!("| ideal fleet (each camera's requests at a uniform instant of the minute): busiest second | {ideal_line} |");
    println!("| ideal fleet: first contacts, busiest second | {ideal_first_line} |");
    println!(
        "| a camera's next request after a 503 | {gaps_503}, gap min / median / max {:.2} / {:.2} / {:.2} s |",
        if gaps_503 > 0 { min_gap_after_503 } else { 0.0 },
        gap_at(0.5),
        gap_at(1.0)
    );
    if args.retry_after > 0 {
        println!(
            "| a camera's next request sooner than Retry-After ({} s, 1 s rounding allowed) | {too_soon} |",
            args.retry_after
        );
        println!(
            "| the same file's next request sooner than Retry-After | {item_too_soon} (shortest gap {:.2} s) |",
            if item_min_gap < f64::MAX { item_min_gap } else { 0.0 }
        );
    } else {
        println!(
            "| a camera's next request after a 503 later than that file's back-off ceiling min(60, 2*2^k) s + 2.5 s | {over_ceiling} (worst by {longest_over:.1} s) |"
        );
        println!(
            "| a file's shortest gap after a 503 | {:.2} s (full jitter may draw ~0) |",
            if item_min_gap < f64::MAX {
                item_min_gap
            } else {
                0.0
            }
        );
    }
    println!(
        "| requests per camera during the outage (min / median / max) | {} / {} / {} |",
        attempts_in_outage.first().unwrap_or(&0),
        attempts_in_outage
            .get(attempts_in_outage.len() / 2)
            .unwrap_or(&0),
        attempts_in_outage.last().unwrap_or(&0)
    );
    println!(
        "| peak RSS of any daemon | {:.1} MiB |",
        peak_rss as f64 / 1024.0
    );
    println!("\nrequests per second after the recovery (s: count):");
    let line: Vec<String> = buckets
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{s}:{n}"))
        .collect();
    println!("{}", line.join(" "));
    for p in &problems {
        println!("PROBLEM: {p}");
    }
    if let Some(path) = &args.log {
        let mut csv = String::from("secs_after_recovery,camera,file,method,status\n");
        for r in &reqs {
            csv.push_str(&format!(
                "{:.3},{},{},{},{}\n",
                secs(r.at) - rec,
                camera_of(r, &by_id).map_or(String::new(), |c| c.to_string()),
                path_of(r, &by_id).unwrap_or_default(),
                r.method,
                r.status.map_or(String::new(), |s| s.to_string())
            ));
        }
        if let Err(e) = std::fs::write(path, csv) {
            eprintln!("fleet: cannot write {}: {e}", path.display());
        }
    }
    // A Retry-After holds the whole camera (not just the file it answered), so a camera asking
    // again sooner fails the run too.
    let ok = problems.is_empty() && item_too_soon == 0 && too_soon == 0 && over_ceiling == 0;
    for (_, mut d, _) in cams {
        d.stop().await;
    }
    // process::exit skips destructors: the receiver's temp dir goes first.
    drop(Arc::into_inner(rx));
    std::process::exit(if ok { 0 } else { 1 });
}
