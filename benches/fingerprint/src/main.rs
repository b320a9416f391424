//! Fingerprints every file under a directory (benches/fingerprint.sh): per file and per GiB.

#[allow(dead_code)]
#[path = "../../../src/card.rs"]
mod card;

use std::time::Instant;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: fingerprint-bench DIR");
    let mut files = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let m = e.metadata().expect("stat");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files.push((e.path(), m.len()));
            }
        }
    }
    files.sort();
    let mut per_file: Vec<(u64, f64)> = Vec::new();
    let started = Instant::now();
    for (p, len) in &files {
        let t = Instant::now();
        card::Fingerprint::of_path(p, *len)
            .expect("fingerprint")
            .expect("same size");
        per_file.push((*len, t.elapsed().as_secs_f64() * 1e3));
    }
    let total = started.elapsed().as_secs_f64();
    let bytes: u64 = files.iter().map(|f| f.1).sum();
    let read: u64 = files
        .iter()
        .map(|f| {
            f.1.min(if f.1 <= card::WHOLE_UP_TO {
                f.1
            } else {
                card::SAMPLE * card::SAMPLES
            })
        })
        .sum();
    let mut small: Vec<f64> = per_file
        .iter()
        .filter(|f| f.0 <= card::WHOLE_UP_TO)
        .map(|f| f.1)
        .collect();
    let mut large: Vec<f64> = per_file
        .iter()
        .filter(|f| f.0 > card::WHOLE_UP_TO)
        .map(|f| f.1)
        .collect();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "files={} media_mib={:.0} read_mib={:.1} total_s={:.3} per_file_ms={:.2} per_gib_of_media_s={:.3} median_small_ms={:.2} median_large_ms={:.2}",
        files.len(),
        bytes as f64 / 1048576.0,
        read as f64 / 1048576.0,
        total,
        total * 1e3 / files.len() as f64,
        total / (bytes as f64 / 1073741824.0),
        median(&mut small),
        median(&mut large),
    );
}
