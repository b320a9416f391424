//! Two small files beside the database that survive its loss: the ledger of what the server
//! was given (`ledger.jsonl`), and the user's choices (`choices.json`).
//!
//! Why: a corrupt database used to be moved aside and rebuilt empty, so every file on the card
//! went up a second time and the user's consent fell back to the maker's defaults. SQLite's
//! own recovery is not part of the bundled library, so the facts that promise "never twice"
//! and "consent is the user's" are also written here, append-only and synced:
//!
//! - the ledger gets one line when a tus upload is created (its URL and endpoint: a rebuilt
//!   queue resumes it by asking the server, `HEAD`) and one when an upload is done (a rebuilt
//!   queue knows it was sent), and one when a done upload turns out lost on the server
//!   (freeing space found a 404: it is sent again). A torn last line (power cut mid-append) is
//!   skipped on reading.
//! - the choices file holds the user's settings and pause, replaced atomically (temp file,
//!   fsync, rename) on every change.
//!
//! Invariants: a line is appended only after the database committed the same fact, and
//! synced before the caller goes on; reading never fails on a damaged line; the ledger is
//! rewritten from the database (never grown without bound) when it holds many more lines than
//! the database has facts, and when unpairing erases the upload URLs.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::media::Kind;
use crate::settings::Settings;

/// The ledger's file name inside `state.dir`.
pub const LEDGER_FILE: &str = "ledger.jsonl";
/// The user's choices' file name inside `state.dir`.
pub const CHOICES_FILE: &str = "choices.json";

/// One fact about one file version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Storage path.
    pub p: String,
    /// Size in bytes.
    pub s: u64,
    /// Modification time, ns since the epoch.
    pub m: i64,
    /// `photo` or `video`.
    pub k: Kind,
    /// The tus upload URL, on a creation line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
    /// The endpoint the upload was created at, on a creation line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// The server has every byte.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub d: bool,
    /// The user cancelled it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub x: bool,
    /// Its upload URL was forgotten (gone on the server, expired, another endpoint).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub f: bool,
    /// It was done, but the server lost the completed upload: it is to be sent again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub r: bool,
}

/// What the ledger says about one file version, after replaying every line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub kind: Kind,
    pub done: bool,
    pub cancelled: bool,
    pub upload: Option<(String, Option<String>)>,
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Appends one line and syncs it (and the directory, when the file is new).
pub fn append(dir: &Path, entry: &Entry) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(entry).expect("plain data serializes");
    line.push(b'\n');
    let path = dir.join(LEDGER_FILE);
    let new = !path.exists();
    let mut f = open_append(&path)?;
    // A power cut mid-append leaves a torn last line without its newline: this line starts a
    // new one, or it would be glued to the torn one and skipped with it on reading (found by
    // fuzzing: fuzz/regressions/ledger/).
    let len = f.metadata()?.len();
    if len > 0 {
        use std::os::unix::fs::FileExt;
        let mut last = [0u8];
        f.read_exact_at(&mut last, len - 1)?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }
    f.write_all(&line)?;
    f.sync_data()?;
    if new {
        sync_dir(dir);
    }
    Ok(())
}

/// Replays the ledger: the last word on each file version. Damaged lines are skipped.
pub fn replay(dir: &Path) -> (HashMap<(String, u64, i64), Known>, usize) {
    let mut out: HashMap<(String, u64, i64), Known> = HashMap::new();
    let mut lines = 0;
    let Ok(f) = std::fs::File::open(dir.join(LEDGER_FILE)) else {
        return (out, 0);
    };
    for line in std::io::BufReader::new(f)
        .split(b'\n')
        .map_while(Result::ok)
    {
        lines += 1;
        let Ok(e) = serde_json::from_slice::<Entry>(&line) else {
            continue;
        };
        let k = out.entry((e.p, e.s, e.m)).or_insert(Known {
            kind: e.k,
            done: false,
            cancelled: false,
            upload: None,
        });
        if e.d {
            k.done = true;
            k.upload = None;
        } else if e.r {
            k.done = false;
            k.upload = None;
        } else if e.x {
            k.cancelled = true;
            k.upload = None;
        } else if e.f {
            k.upload = None;
        } else if let Some(u) = e.u {
            if !k.done {
                k.upload = Some((u, e.e));
            }
        }
    }
    (out, lines)
}

/// Replaces the ledger with `entries`, atomically.
pub fn rewrite(dir: &Path, entries: impl Iterator<Item = Entry>) -> std::io::Result<()> {
    let tmp = dir.join(format!("{LEDGER_FILE}.tmp"));
    {
        let mut f = std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?,
        );
        for e in entries {
            serde_json::to_writer(&mut f, &e).map_err(std::io::Error::other)?;
            f.write_all(b"\n")?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(LEDGER_FILE))?;
    sync_dir(dir);
    Ok(())
}

/// The user's choices as the choices file keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choices {
    pub settings: Settings,
    pub paused: bool,
}

/// Reads the choices file; `None` when it is missing or damaged (logged).
pub fn load_choices(dir: &Path) -> Option<Choices> {
    let path = dir.join(CHOICES_FILE);
    let text = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "the user's choices file is damaged; using the database's copy");
            None
        }
    }
}

/// Writes the choices file atomically (temp file, fsync, rename, directory fsync).
pub fn save_choices(dir: &Path, c: &Choices) -> std::io::Result<()> {
    let path = dir.join(CHOICES_FILE);
    let tmp: PathBuf = dir.join(format!("{CHOICES_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(c).expect("plain data serializes"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_appended_after_a_torn_one_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |p: &str, d: bool| Entry {
            p: p.into(),
            s: 10,
            m: 1,
            k: Kind::Photo,
            u: (!d).then(|| "https://tus.example.com/files/1".into()),
            e: None,
            d,
            x: false,
            f: false,
            r: false,
        };
        append(dir.path(), &entry("A.JPG", false)).unwrap();
        // The power went mid-append: half a line, no newline.
        let mut f = open_append(&dir.path().join(LEDGER_FILE)).unwrap();
        f.write_all(br#"{"p":"B.JPG","s":10,"m":1,"k":"pho"#)
            .unwrap();
        drop(f);
        append(dir.path(), &entry("A.JPG", true)).unwrap();
        let (known, lines) = replay(dir.path());
        assert!(known[&("A.JPG".to_string(), 10, 1)].done);
        assert_eq!(known.len(), 1);
        assert_eq!(lines, 3);
    }

    fn entry(p: &str, u: Option<&str>, d: bool) -> Entry {
        Entry {
            p: p.into(),
            s: 10,
            m: 1,
            k: Kind::Photo,
            u: u.map(Into::into),
            e: u.map(|_| "https://up.example/files/".into()),
            d,
            x: false,
            f: false,
            r: false,
        }
    }

    #[test]
    fn replay_keeps_the_last_word_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        append(
            dir.path(),
            &entry("A.JPG", Some("https://up.example/files/1"), false),
        )
        .unwrap();
        append(
            dir.path(),
            &entry("B.JPG", Some("https://up.example/files/2"), false),
        )
        .unwrap();
        append(dir.path(), &entry("A.JPG", None, true)).unwrap();
        // A power cut in the middle of an append.
        let mut f = open_append(&dir.path().join(LEDGER_FILE)).unwrap();
        f.write_all(br#"{"p":"C.JPG","s":1"#).unwrap();
        let (known, lines) = replay(dir.path());
        assert_eq!(lines, 4);
        assert_eq!(known.len(), 2);
        let a = &known[&("A.JPG".to_string(), 10, 1)];
        assert!(a.done && a.upload.is_none());
        let b = &known[&("B.JPG".to_string(), 10, 1)];
        assert!(!b.done);
        assert_eq!(b.upload.as_ref().unwrap().0, "https://up.example/files/2");
    }
}
