//! What the camera's digest costs per GiB (benches/digest.sh): `FileDigest` over 128 KiB
//! blocks (the bodies' block size, src/upload/source.rs), beside sha2's own `Sha256` and the
//! SHA-1 per chunk that `length` and `checksum` compute instead. In memory: the CPU alone.
//!
//!   digest-bench [MIB] [RUNS]   (default 1024 MiB, 7 runs)
//!
//! Prints, per hash: the median CPU seconds per GiB (this thread's user and system time, from
//! `/proc/thread-self/stat`: on a shared machine wall time counts the other tenants too), the
//! fastest and slowest run, the median wall time, and cycles per byte at the CPU's nominal
//! clock (`/proc/cpuinfo`'s "cpu MHz", when there).

#[allow(dead_code)]
#[path = "../../../src/digest.rs"]
mod digest;

use std::hint::black_box;
use std::time::Instant;

use sha1::Digest as _;

const BLOCK: usize = 128 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(1024, |a| a.parse().expect("MIB"));
    let runs: usize = args.next().map_or(7, |a| a.parse().expect("RUNS"));
    let data: Vec<u8> = (0..BLOCK).map(|i| (i * 31 + i / 7) as u8).collect();
    let blocks = mib * 1024 * 1024 / BLOCK;
    let mhz = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("cpu MHz"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let gib = (blocks * BLOCK) as f64 / (1u64 << 30) as f64;
    let measure = |name: &str, f: &mut dyn FnMut()| {
        let mut wall = Vec::new();
        let mut secs: Vec<f64> = (0..runs)
            .map(|_| {
                let (t, c) = (Instant::now(), cpu_secs());
                f();
                wall.push(t.elapsed().as_secs_f64() / gib);
                (cpu_secs() - c) / gib
            })
            .collect();
        secs.sort_by(f64::total_cmp);
        wall.sort_by(f64::total_cmp);
        let median = secs[secs.len() / 2];
        let cpb = mhz.map_or(String::from("?"), |m| {
            format!("{:.2}", median * m * 1e6 / (1u64 << 30) as f64)
        });
        println!(
            "{name:<22} median {median:.3} CPU s/GiB ({:.0} MiB/s), min {:.3}, max {:.3}, wall median {:.3} s/GiB, {cpb} cycles/byte at {} MHz, {runs} runs of {mib} MiB",
            1024.0 / median,
            secs[0],
            secs[secs.len() - 1],
            wall[wall.len() / 2],
            mhz.map_or(String::from("?"), |m| format!("{m:.0}")),
        );
    };
    measure("FileDigest (sha-256)", &mut || {
        let mut d = digest::FileDigest::default();
        for _ in 0..blocks {
            d.update(black_box(&data));
        }
        black_box(d.finish());
    });
    measure("sha2::Sha256", &mut || {
        let mut d = sha2::Sha256::new();
        for _ in 0..blocks {
            d.update(black_box(&data));
        }
        black_box(d.finalize());
    });
    measure("sha1 (per chunk today)", &mut || {
        let mut d = sha1::Sha1::new();
        for _ in 0..blocks {
            d.update(black_box(&data));
        }
        black_box(d.finalize());
    });
}

/// This thread's CPU time (user + system), from `/proc/thread-self/stat` (clock ticks, 100 Hz:
/// runs of seconds make that 1 %).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
