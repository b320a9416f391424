//! What `synchronous = FULL` costs per uploaded file, against the `NORMAL` it replaced.
//!
//! Runs the store's own write sequence for one file (queue it, mark it uploading, store the
//! upload URL, two progress updates, record it done with its history row and the ledger line)
//! through the real `Store`, in a real SQLite file in `DIR` (default: a temp dir; point it at
//! the camera's state partition to measure the flash), and times it. Then the same sequence on
//! a bare connection set to NORMAL. Rounds alternate between the two, and the medians and the
//! spread are printed.
//!
//!     cargo run --release --example durability -- [FILES_PER_ROUND] [ROUNDS] [DIR]

use std::path::Path;
use std::time::{Duration, Instant};

use cambackup::media::{Kind, StoragePath};
use cambackup::store::{FoundFile, Store};

fn found(i: usize) -> FoundFile {
    FoundFile {
        path: StoragePath::from_relative(Path::new(&format!("DCIM/100MEDIA/IMG_{i:05}.JPG")))
            .unwrap(),
        kind: Kind::Photo,
        size: 4_000_000,
        mtime_ns: i as i64,
    }
}

/// The daemon's sequence through the real store (synchronous = FULL).
fn full(dir: &Path, n: usize) -> Duration {
    let s = Store::open(dir).unwrap();
    let t = Instant::now();
    for i in 0..n {
        s.upsert_files(&[found(i)]).unwrap();
        let id = s.max_item_id().unwrap();
        assert!(s.mark_uploading(id).unwrap());
        s.set_upload_url(
            id,
            &format!("https://up.example/files/{i}"),
            None,
            "https://up.example/files/",
        )
        .unwrap();
        s.set_progress(id, 2_000_000, None).unwrap();
        s.set_progress(id, 4_000_000, None).unwrap();
        s.mark_done(id).unwrap();
    }
    t.elapsed() / n as u32
}

/// The same statements on a connection with the old setting (synchronous = NORMAL), no ledger.
fn normal(dir: &Path, n: usize) -> Duration {
    drop(Store::open(dir).unwrap()); // the schema
    let c = rusqlite::Connection::open(dir.join("cambackup.db")).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    c.pragma_update(None, "synchronous", "NORMAL").unwrap();
    let t = Instant::now();
    for i in 0..n {
        c.execute(
            "INSERT INTO items (storage_path, kind, size, mtime_ns, queued_at) VALUES (?1, 'photo', 4000000, ?2, 0)",
            rusqlite::params![format!("DCIM/100MEDIA/IMG_{i:05}.JPG"), i as i64],
        )
        .unwrap();
        let id = c.last_insert_rowid();
        for sql in [
            "UPDATE items SET state = 'uploading' WHERE id = ?1",
            "UPDATE items SET upload_url = 'https://up.example/files/x', creations = creations + 1 WHERE id = ?1",
            "UPDATE items SET bytes_sent = 2000000 WHERE id = ?1",
            "UPDATE items SET bytes_sent = 4000000 WHERE id = ?1",
        ] {
            c.execute(sql, [id]).unwrap();
        }
        let tx = c.unchecked_transaction().unwrap();
        tx.execute("UPDATE items SET state = 'done' WHERE id = ?1", [id])
            .unwrap();
        tx.execute(
            "INSERT INTO history (storage_path, size, completed_at) SELECT storage_path, size, 0 FROM items WHERE id = ?1",
            [id],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    t.elapsed() / n as u32
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let base = args.get(3).map(std::path::PathBuf::from);
    let (mut f, mut o) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let dir = match &base {
            Some(b) => tempfile::tempdir_in(b).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        // Alternate which goes first, so neither always gets the warmer cache.
        if r % 2 == 0 {
            f.push(full(&dir.path().join("full"), n));
            o.push(normal(&dir.path().join("normal"), n));
        } else {
            o.push(normal(&dir.path().join("normal"), n));
            f.push(full(&dir.path().join("full"), n));
        }
    }
    let (fm, om) = (median(&mut f), median(&mut o));
    println!("per file, {n} files x {rounds} alternating rounds:");
    println!(
        "  synchronous=FULL + ledger: median {:?} (min {:?}, max {:?})",
        fm,
        f[0],
        f[f.len() - 1]
    );
    println!(
        "  synchronous=NORMAL:        median {:?} (min {:?}, max {:?})",
        om,
        o[0],
        o[o.len() - 1]
    );
    println!("  extra per file: {:?}", fm.saturating_sub(om));
}
