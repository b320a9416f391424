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
//!   (freeing space found a 404: it is sent again). A torn last line (power cut or full disk
//!   mid-append) is skipped on reading, and mended (cut back to the last whole line) at start
//!   and before the next append, so that line is not glued to it and lost too.
//! - the choices file holds the user's settings and pause, and the app's "this Wi-Fi is
//!   metered", replaced atomically (temp file, fsync, rename) on every change. A withdrawal
//!   the full disk has no room for is written over the file in place, or else the file is
//!   emptied: an empty or damaged file means "no record", which allows nothing (consent off,
//!   paused, freeing off, the Wi-Fi metered), never the database's older copy.
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

use crate::durable::sync_dir;
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
    /// The content fingerprint (hex) of the bytes sent, on a done line: a rebuilt queue still
    /// tells a file with the same name, size and stamp but other bytes from the one sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub g: Option<String>,
}

/// What the ledger says about one file version, after replaying every line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub kind: Kind,
    pub done: bool,
    pub cancelled: bool,
    pub upload: Option<(String, Option<String>)>,
    /// The fingerprint (hex) of the content sent, when the done line had one.
    pub fingerprint: Option<String>,
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Appends one line and syncs it (and the directory, when the file is new). A torn last line
/// is mended first ([`mend_tail`]): glued to it, this line would be lost with it.
pub fn append(dir: &Path, entry: &Entry) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(entry).expect("plain data serializes");
    line.push(b'\n');
    let path = dir.join(LEDGER_FILE);
    let new = !path.exists();
    let mut f = open_append(&path)?;
    mend_tail(&f, &path)?;
    f.write_all(&line)?;
    f.sync_data()?;
    if new {
        sync_dir(dir);
    }
    Ok(())
}

/// Mends a torn end of the ledger at start ([`mend_tail`]); a missing ledger is not an error.
pub fn mend(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(LEDGER_FILE);
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => mend_tail(&f, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes the file end with a whole line, so the next append starts a line of its own.
///
/// Why: a power cut or a full disk in the middle of an append leaves a last line without its
/// newline. The reader skips it, but the next line appended after it would be glued onto it,
/// and skipped with it: that fact (a cancel, say) would be lost at the next rebuild. A tail
/// that is a whole JSON object but for its newline (the cut fell just before it) gets the
/// newline;
/// any other tail is cut back to the last newline. Costs one `pread` of one byte when the
/// file is whole, which is every time but after a crash.
fn mend_tail(f: &std::fs::File, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let mut last = [0u8; 1];
    if len == 0 {
        return Ok(());
    }
    f.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Back to the last newline, a block at a time (a torn line is one entry, ~100 bytes).
    let mut end = len;
    let mut cut = 0;
    let mut block = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let buf = &mut block[..(end - start) as usize];
        f.read_exact_at(buf, start)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            cut = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    let mut tail = vec![0u8; (len - cut) as usize];
    f.read_exact_at(&mut tail, cut)?;
    // Any JSON object, not only this release's `Entry`: a line a newer release wrote (the
    // firmware was rolled back) is that release's fact, kept for when it runs again.
    if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&tail).is_ok() {
        // O_APPEND: the write lands at the end whatever the offset.
        let mut w = f;
        w.write_all(b"\n")?;
        tracing::warn!(file = %path.display(), "the ledger's last line had lost its newline: completed it");
    } else {
        f.set_len(cut)?;
        tracing::warn!(
            file = %path.display(),
            bytes = len - cut,
            "the ledger ended in a torn line (a power cut or a full disk mid-append): cut it off"
        );
    }
    f.sync_data()
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
            fingerprint: None,
        });
        if e.d {
            k.done = true;
            k.upload = None;
            k.fingerprint = e.g;
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
    /// The app's answer to "is this Wi-Fi metered" (`PUT /v1/network`): `Some(None)` the
    /// daemon decides, `Some(Some(m))` the app's word. Kept here with the other choices,
    /// because "metered" narrows what may be sent and must hold like a withdrawal. `None`
    /// only in a file an earlier release wrote (it kept the answer in the database), and then
    /// written back as it was, without the field (found by the `choices` fuzz target's round
    /// trip: written as `null`, it read back as "the daemon decides").
    #[serde(
        default,
        deserialize_with = "recorded",
        skip_serializing_if = "Option::is_none"
    )]
    pub metered: Option<Option<bool>>,
    /// The app's answers per Wi-Fi network (issue 25), oldest first; a network's own answer
    /// wins over `metered` on that network. Missing in a file an earlier release wrote, which
    /// reads as none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metered_networks: Vec<MeteredNetwork>,
}

/// The app's answer for one Wi-Fi network, as the choices file keeps it (the daemon's own
/// type is `conditions::metered::NetworkAnswer`; `app` converts, keeping this layer below).
/// No BSSID: an access point's address can be looked up on a map, and nothing needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeteredNetwork {
    /// The network, by its SSID's bytes as wpa_supplicant escapes them (`printf_encode`:
    /// `\xNN` for a byte outside printable ASCII, `\\`, `\"`, ...): one text per SSID, so
    /// two names that are not UTF-8 are never taken for one.
    pub ssid: String,
    /// The app's word: metered or not; `null`: the daemon decides on this network (the
    /// answer for every network, `metered`, does not apply there).
    #[serde(default)]
    pub metered: Option<bool>,
}

/// A field that is there, even as `null`, is `Some`: only a missing one is `None`.
fn recorded<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<bool>>, D::Error> {
    Option::<bool>::deserialize(d).map(Some)
}

/// What the choices file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChoicesFile {
    /// No file (a first start, or a daemon from before the file).
    Missing,
    /// An empty or damaged file: no record of the user's last choice. An empty one is what a
    /// withdrawal leaves when the disk had no room for it ([`clear_choices`]).
    NoRecord,
    Found(Choices),
}

/// Reads the choices file.
pub fn load_choices(dir: &Path) -> ChoicesFile {
    let path = dir.join(CHOICES_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ChoicesFile::Missing,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read the user's choices file");
            return ChoicesFile::NoRecord;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(c) => ChoicesFile::Found(c),
        Err(_) if text.is_empty() => ChoicesFile::NoRecord,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "the user's choices file is damaged: nothing the user allowed is assumed");
            ChoicesFile::NoRecord
        }
    }
}

/// Writes the choices file atomically (temp file, fsync, rename, directory fsync). On failure
/// the file is as it was, and the temp file is gone (it may hold the blocks a full disk lacks).
pub fn save_choices(dir: &Path, c: &Choices) -> std::io::Result<()> {
    let path = dir.join(CHOICES_FILE);
    let tmp: PathBuf = dir.join(format!("{CHOICES_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(c).expect("plain data serializes"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir);
    Ok(())
}

/// Writes a withdrawal over the choices file where it stands, for when the disk has no room
/// for a new file: the blocks the file already holds take the new text (a few hundred bytes,
/// the old text's length give or take a few). Not atomic: a power cut in the middle leaves a
/// damaged file, which reads as [`ChoicesFile::NoRecord`] (nothing allowed), never as a grant.
pub fn overwrite_choices(dir: &Path, c: &Choices) -> std::io::Result<()> {
    let text = serde_json::to_vec(c).expect("plain data serializes");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(CHOICES_FILE))?;
    f.write_all(&text)?;
    f.set_len(text.len() as u64)?;
    f.sync_all()
}

/// Empties the choices file (creating it empty if there is none): "no record of the user's
/// choice", which the next start reads as nothing allowed. Truncating frees blocks and
/// needs none, so this works on a full disk.
pub fn clear_choices(dir: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(CHOICES_FILE))?;
    f.sync_all()?;
    sync_dir(dir);
    Ok(())
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
            g: None,
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
        assert_eq!(lines, 2, "the torn half line is cut before the next append");
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
            g: None,
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

    #[test]
    fn a_whole_entry_that_lost_only_its_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        let mut done = serde_json::to_vec(&entry("A.JPG", None, true)).unwrap();
        std::fs::write(&path, &done).unwrap();
        append(dir.path(), &entry("B.JPG", None, true)).unwrap();
        let (known, lines) = replay(dir.path());
        assert_eq!(lines, 2);
        assert!(known[&("A.JPG".to_string(), 10, 1)].done);
        assert!(known[&("B.JPG".to_string(), 10, 1)].done);
        done.push(b'\n');
        assert!(std::fs::read(&path).unwrap().starts_with(&done));
    }

    /// A firmware rolled back: the newer release wrote a line this one cannot read as an
    /// [`Entry`] (a kind it does not know). Whole but for its newline, it is the newer
    /// release's fact, kept for when it runs again, not a tear.
    #[test]
    fn a_whole_line_of_a_newer_release_that_lost_its_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        let newer = br#"{"p":"A.WAV","s":1,"m":2,"k":"audio","d":true}"#;
        assert!(serde_json::from_slice::<Entry>(newer).is_err());
        std::fs::write(&path, newer).unwrap();
        append(dir.path(), &entry("B.JPG", None, true)).unwrap();
        let text = std::fs::read(&path).unwrap();
        let mut whole = newer.to_vec();
        whole.push(b'\n');
        assert!(
            text.starts_with(&whole),
            "{}",
            String::from_utf8_lossy(&text)
        );
        let (known, lines) = replay(dir.path());
        assert_eq!(lines, 2);
        assert!(known[&("B.JPG".to_string(), 10, 1)].done);
    }

    #[test]
    fn a_torn_line_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &entry("A.JPG", None, true)).unwrap();
        let mut f = open_append(&dir.path().join(LEDGER_FILE)).unwrap();
        // A tear longer than one block of the backward search.
        f.write_all(&[b'x'; 9000]).unwrap();
        append(dir.path(), &entry("B.JPG", None, true)).unwrap();
        let (known, lines) = replay(dir.path());
        assert_eq!(lines, 2);
        assert!(known[&("B.JPG".to_string(), 10, 1)].done);
        // A ledger that is nothing but a tear.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(LEDGER_FILE), b"{\"p\":").unwrap();
        append(other.path(), &entry("C.JPG", None, true)).unwrap();
        assert_eq!(replay(other.path()).1, 1);
    }

    /// A choices file from before the per-network answers (issue 25) loads with none, and is
    /// written back as it was; one with them keeps them.
    #[test]
    fn choices_from_before_the_per_network_answers_load() {
        let dir = tempfile::tempdir().unwrap();
        let old =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/choices/choices"))
                .unwrap();
        std::fs::write(dir.path().join(CHOICES_FILE), &old).unwrap();
        let ChoicesFile::Found(c) = load_choices(dir.path()) else {
            panic!("the old file does not load");
        };
        assert!(c.metered_networks.is_empty());
        save_choices(dir.path(), &c).unwrap();
        let again: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(CHOICES_FILE)).unwrap()).unwrap();
        assert!(again.get("metered_networks").is_none(), "{again}");

        let new = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/choices/networks"),
        )
        .unwrap();
        std::fs::write(dir.path().join(CHOICES_FILE), &new).unwrap();
        let ChoicesFile::Found(c) = load_choices(dir.path()) else {
            panic!("the new file does not load");
        };
        let ssids: Vec<_> = c.metered_networks.iter().map(|a| a.ssid.as_str()).collect();
        assert_eq!(ssids, ["Home", "iPhone", "\\xbc\\xd2"]);
        let answers: Vec<_> = c.metered_networks.iter().map(|a| a.metered).collect();
        assert_eq!(answers, [Some(false), Some(true), None]);
        // Written back as read: "the daemon decides" stays `null`, not a missing answer.
        save_choices(dir.path(), &c).unwrap();
        let ChoicesFile::Found(again) = load_choices(dir.path()) else {
            panic!("the file written back does not load");
        };
        assert_eq!(again, c);
    }
}
