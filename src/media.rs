//! What counts as media on the card, and how a file on it is named.
//!
//! Invariant: a [`StoragePath`] is relative to `media.root`, `/`-separated, has no `.`, `..` or
//! empty components, and keeps the exact characters of the name. It is the only form of a card
//! path that the store, the uploader and the API handle.
//!
//! Names that are not valid UTF-8 (a vfat card mounted with the kernel's default iso8859-1
//! charset shows non-ASCII names that way) are not skipped: each byte that is not part of valid
//! UTF-8 is written `\xNN` (two upper-case hex digits), and a backslash itself `\x5C`, so the
//! mapping from the name on disk to the storage path is one-to-one and reversible
//! ([`StoragePath::on_disk`]). FAT and exFAT forbid backslashes in names, so on a camera card
//! the storage path differs from the name only where the name is not UTF-8.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// The data types a user can choose between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Photo,
    Video,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Photo => "photo",
            Kind::Video => "video",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "photo" => Some(Kind::Photo),
            "video" => Some(Kind::Video),
            _ => None,
        }
    }
}

/// A path on the card, relative to `media.root`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StoragePath(String);

/// Why a path is not a storage path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("`{0}` is outside the media root")]
    Outside(String),
    #[error("`{0}` is empty or names the media root itself")]
    Empty(String),
    #[error("`{0}` passes through a symbolic link; links on the card are never followed")]
    Symlink(String),
    #[error("`{0}` cannot be examined: {1}")]
    Unreadable(String, String),
}

/// Appends the storage-path form of one name on disk (see the module's doc).
pub(crate) fn escape_name(name: &std::ffi::OsStr, out: &mut String) {
    use std::os::unix::ffi::OsStrExt;
    // Nearly every name on a card is UTF-8 without a backslash: copied whole.
    if let Some(s) = name.to_str().filter(|s| !s.contains('\\')) {
        out.push_str(s);
        return;
    }
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\x5C");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
}

/// The name on disk for a storage path's text: `\xNN` back to its byte.
pub(crate) fn unescape(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    if !s.contains('\\') {
        return s.into();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            let hex = b
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok());
            // Only what `escape_name` writes: a byte of a name that is not UTF-8 (0x80 and
            // up) or a backslash. Anything else (`\x2F`) stays text, so no escape can make a
            // `/` or a NUL and the mapping stays one-to-one.
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = byte.filter(|v| *v >= 0x80 || *v == b'\\') {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::ffi::OsString::from_vec(out)
}

/// A file's mtime in nanoseconds since the epoch: with its path and size, the identity of a
/// file version in the queue (the scan, the watcher and the uploader compute it alike).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// Fails if any component of `path` below `root` is a symbolic link (or cannot be examined).
/// The scan and the watcher never follow links; this keeps the uploader from reading through
/// one that appeared since (a few `lstat`s per file opened).
pub fn check_no_symlink(root: &Path, path: &Path) -> Result<(), PathError> {
    let shown = || path.to_string_lossy().into_owned();
    let rel = path
        .strip_prefix(root)
        .map_err(|_| PathError::Outside(shown()))?;
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Err(PathError::Symlink(shown())),
            Ok(_) => {}
            // A missing file is reported by the caller with its own message.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(PathError::Unreadable(shown(), e.to_string())),
        }
    }
    Ok(())
}

impl StoragePath {
    /// From a path relative to the media root, as the scanner and watcher find it.
    pub fn from_relative(rel: &Path) -> Result<StoragePath, PathError> {
        let shown = || rel.to_string_lossy().into_owned();
        let mut out = String::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => {
                    if !out.is_empty() {
                        out.push('/');
                    }
                    escape_name(p, &mut out);
                }
                Component::CurDir => {}
                _ => return Err(PathError::Outside(shown())),
            }
        }
        if out.is_empty() {
            return Err(PathError::Empty(shown()));
        }
        Ok(StoragePath(out))
    }

    /// The storage path of `name` inside the directory `parent` (`None`: the media root), as a
    /// walk reading directory entries finds it: one allocation, no parsing of the whole path.
    /// `None` for what no directory entry names (empty, `.`, `..`, a name with a `/`).
    pub fn child(parent: Option<&StoragePath>, name: &std::ffi::OsStr) -> Option<StoragePath> {
        use std::os::unix::ffi::OsStrExt;
        let b = name.as_bytes();
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
            return None;
        }
        let mut out = String::with_capacity(parent.map_or(0, |p| p.0.len() + 1) + b.len());
        if let Some(p) = parent {
            out.push_str(&p.0);
            out.push('/');
        }
        escape_name(name, &mut out);
        Some(StoragePath(out))
    }

    /// From a path under `root` (absolute, as the watcher reports it).
    pub fn under(root: &Path, abs: &Path) -> Result<StoragePath, PathError> {
        let rel = abs
            .strip_prefix(root)
            .map_err(|_| PathError::Outside(abs.to_string_lossy().into_owned()))?;
        StoragePath::from_relative(rel)
    }

    /// From what a user typed or the app sent: relative to the media root, or absolute inside
    /// it. Symlinks are resolved, and the real file must still be inside the real root, so a
    /// link to `/etc/passwd` is refused like `../../etc/passwd`.
    pub fn from_user(root: &Path, input: &str) -> Result<StoragePath, PathError> {
        let lexical = lexical_from_user(root, input)?;
        let real_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let real = match lexical.canonicalize() {
            Ok(r) => r,
            // A missing file is reported by the caller with its own message.
            Err(_) => return StoragePath::under(root, &lexical),
        };
        if !real.starts_with(&real_root) {
            return Err(PathError::Outside(input.into()));
        }
        // Name the file by the path the user gave (within the root), not the link's target.
        StoragePath::under(root, &lexical)
    }

    /// [`StoragePath::from_user`] without resolving links: the path as given, inside the root
    /// by its names alone, spelt as the card spells it. For asking about a file (`why`), where
    /// a link is an answer (the card's link is left out), not an error.
    pub fn from_user_as_named(root: &Path, input: &str) -> Result<StoragePath, PathError> {
        StoragePath::under(root, &lexical_from_user(root, input)?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file's place on disk.
    pub fn on_disk(&self, root: &Path) -> PathBuf {
        root.join(unescape(&self.0))
    }

    /// Wraps a value read back from the store, which only ever holds valid storage paths.
    pub fn from_stored(s: String) -> StoragePath {
        StoragePath(s)
    }
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a user typed or the app sent (relative to `root`, or absolute inside it, `\xNN`
/// escapes allowed) as a path on disk inside `root`, by its names alone (`..` resolved, no
/// link followed), each name spelt as the card spells it.
fn lexical_from_user(root: &Path, input: &str) -> Result<PathBuf, PathError> {
    // The storage-path form (`\xNN` escapes) back to the name on disk.
    let on_disk = unescape(input);
    let given = Path::new(&on_disk);
    let joined = if given.is_absolute() {
        given.to_path_buf()
    } else {
        root.join(given)
    };
    // Lexical check first, so `..` is refused even when the target does not exist.
    let lexical = normalize(&joined).ok_or_else(|| PathError::Outside(input.into()))?;
    if !lexical.starts_with(root) {
        return Err(PathError::Outside(input.into()));
    }
    // FAT and exFAT names are case-insensitive: `dcim/100media/img_0001.jpg` is the file
    // `DCIM/100MEDIA/IMG_0001.JPG`, and must be named as the card names it, never twice.
    Ok(with_names_on_disk(root, &lexical))
}

/// `path` (inside `root`) with each name below the root spelt as its directory spells it: a
/// name that is not there as given but is there in another case (one entry only, compared
/// case-insensitively as FAT and exFAT do) takes that entry's spelling. A name found as given,
/// or not at all, or more than once (a case-sensitive file system), is kept.
fn with_names_on_disk(root: &Path, path: &Path) -> PathBuf {
    let Ok(rel) = path.strip_prefix(root) else {
        return path.to_path_buf();
    };
    let mut at = root.to_path_buf();
    for c in rel.components() {
        let name = c.as_os_str();
        let listed: Vec<std::ffi::OsString> = std::fs::read_dir(&at)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if listed.iter().any(|n| n == name) {
            at.push(name);
            continue;
        }
        let folded = name.to_string_lossy().to_lowercase();
        let mut same = listed
            .iter()
            .filter(|n| n.to_string_lossy().to_lowercase() == folded);
        match (same.next(), same.next()) {
            (Some(one), None) => at.push(one),
            _ => at.push(name),
        }
    }
    at
}

/// Resolves `.` and `..` without touching the disk; `None` if `..` climbs above `/`.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// Decides which files are media: by extension (case-insensitive) and the exclude globs.
#[derive(Debug, Clone)]
pub struct MediaFilter {
    photo: Vec<String>,
    video: Vec<String>,
    exclude: GlobSet,
}

impl MediaFilter {
    /// Compiles the filter from the extensions and the exclude globs. The config builds it
    /// once, at load, and names `media.exclude` in the error for a bad glob; everything else
    /// uses that compiled value, so what was checked is what runs.
    pub fn new(
        photo_extensions: &[String],
        video_extensions: &[String],
        exclude: &[String],
    ) -> Result<MediaFilter, String> {
        let mut b = GlobSetBuilder::new();
        for pattern in exclude {
            let g = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("bad glob `{pattern}`: {e}"))?;
            b.add(g);
        }
        let lower = |v: &[String]| v.iter().map(|e| e.to_ascii_lowercase()).collect();
        Ok(MediaFilter {
            photo: lower(photo_extensions),
            video: lower(video_extensions),
            exclude: b.build().map_err(|e| e.to_string())?,
        })
    }

    /// The kind of the file at `path`, or `None` if it is not media we back up.
    pub fn classify(&self, path: &StoragePath) -> Option<Kind> {
        let kind = self.kind_by_extension(path)?;
        let s = path.as_str();
        // A file inside an excluded directory (`DCIM/.trash/x.jpg`) is excluded too.
        let mut ancestors = s.match_indices('/').map(|(i, _)| &s[..i]).chain([s]);
        (!ancestors.any(|p| self.excluded(p))).then_some(kind)
    }

    /// [`MediaFilter::classify`] for a file whose directories were already checked with
    /// [`MediaFilter::skip_dir`] (the walk does that on the way down): only the file's own
    /// path is matched against the globs, once, and only when its extension is media.
    pub fn classify_in_checked_dir(&self, path: &StoragePath) -> Option<Kind> {
        let kind = self.kind_by_extension(path)?;
        (!self.excluded(path.as_str())).then_some(kind)
    }

    /// Whether the file's extension is a photo or video one: of a file [`MediaFilter::classify`]
    /// refuses, tells an excluded type from an excluded path.
    pub fn has_media_extension(&self, path: &StoragePath) -> bool {
        self.kind_by_extension(path).is_some()
    }

    fn kind_by_extension(&self, path: &StoragePath) -> Option<Kind> {
        let s = path.as_str();
        let name = s.rsplit('/').next().unwrap_or(s);
        let ext = name.rsplit_once('.')?.1;
        // Compare without allocating: this runs once per file on the card.
        let is = |list: &[String]| list.iter().any(|e| e.eq_ignore_ascii_case(ext));
        if is(&self.photo) {
            Some(Kind::Photo)
        } else if is(&self.video) {
            Some(Kind::Video)
        } else {
            None
        }
    }

    /// Whether a directory should be skipped whole (hidden or excluded directories).
    pub fn skip_dir(&self, path: &StoragePath) -> bool {
        self.excluded(path.as_str())
    }

    /// Globs are matched against the storage path (globset's `**/x` also matches a top-level
    /// `x`, so `**/.*` covers hidden entries at the top of the card).
    fn excluded(&self, s: &str) -> bool {
        self.exclude.is_match(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> MediaFilter {
        crate::config::Media::default().filter
    }

    fn sp(s: &str) -> StoragePath {
        StoragePath::from_relative(Path::new(s)).unwrap()
    }

    #[test]
    fn a_child_is_named_as_the_whole_path_would_be() {
        use std::os::unix::ffi::OsStrExt;
        let dir = sp("DCIM/100MEDIA");
        for name in [
            &b"IMG_0001.JPG"[..],
            "ünï cødé.mp4".as_bytes(),
            b"back\\slash.jpg",
            b"\xc9t\xe9.JPG",
        ] {
            let name = std::ffi::OsStr::from_bytes(name);
            let whole = StoragePath::from_relative(&Path::new("DCIM/100MEDIA").join(name));
            assert_eq!(StoragePath::child(Some(&dir), name), Some(whole.unwrap()));
            let top = StoragePath::from_relative(Path::new(name)).unwrap();
            assert_eq!(StoragePath::child(None, name), Some(top));
        }
        for name in ["", ".", "..", "a/b"] {
            assert_eq!(
                StoragePath::child(Some(&dir), name.as_ref()),
                None,
                "{name:?}"
            );
        }
    }

    #[test]
    fn classifies_by_extension_case_insensitively() {
        let f = filter();
        let cases = [
            ("DCIM/100MEDIA/A.JPG", Some(Kind::Photo)),
            ("DCIM/100MEDIA/a.heic", Some(Kind::Photo)),
            ("DCIM/100MEDIA/V.MP4", Some(Kind::Video)),
            ("DCIM/100MEDIA/V.Mov", Some(Kind::Video)),
            ("DCIM/100MEDIA/V.THM", None),
            ("DCIM/100MEDIA/V.LRV", None),
            ("DCIM/.hidden.jpg", None),
            (".top.jpg", None),
            ("DCIM/.trash/x.jpg", None),
            ("notes.txt", None),
            ("noext", None),
            ("DCIM/my holiday, day 1/été.jpg", Some(Kind::Photo)),
        ];
        for (path, want) in cases {
            assert_eq!(f.classify(&sp(path)), want, "{path}");
        }
    }

    #[test]
    fn names_that_are_not_utf8_map_one_to_one_and_back() {
        use std::os::unix::ffi::OsStrExt;
        let cases: &[(&[u8], &str)] = &[
            (b"DCIM/Caf\xe9/A.JPG", "DCIM/Caf\\xE9/A.JPG"),
            (b"DCIM/a\\b.JPG", "DCIM/a\\x5Cb.JPG"),
            (b"DCIM/100%.JPG", "DCIM/100%.JPG"),
            ("DCIM/été.JPG".as_bytes(), "DCIM/été.JPG"),
            // Text that looks like an escape is a backslash and text.
            (b"DCIM/x\\x2F.JPG", "DCIM/x\\x5Cx2F.JPG"),
        ];
        let root = Path::new("/card");
        for (disk, stored) in cases {
            let p = root.join(std::ffi::OsStr::from_bytes(disk));
            let sp = StoragePath::under(root, &p).unwrap();
            assert_eq!(sp.as_str(), *stored);
            assert_eq!(sp.on_disk(root), p, "{stored}");
        }
        // An escape escape_name never writes stays text: no `/` or NUL can be smuggled in.
        let sp = StoragePath::from_stored("DCIM/a\\x2Fb\\x00.JPG".into());
        assert_eq!(sp.on_disk(root), root.join("DCIM/a\\x2Fb\\x00.JPG"));
    }

    #[test]
    fn a_user_path_in_another_case_names_the_file_as_the_card_spells_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("DCIM/100MEDIA")).unwrap();
        std::fs::write(root.join("DCIM/100MEDIA/IMG_0001.JPG"), b"x").unwrap();
        let sp = StoragePath::from_user(&root, "dcim/100media/img_0001.jpg").unwrap();
        assert_eq!(sp.as_str(), "DCIM/100MEDIA/IMG_0001.JPG");
        // Where both spellings exist (a case-sensitive file system), each is itself.
        std::fs::write(root.join("DCIM/100MEDIA/img_0001.jpg"), b"y").unwrap();
        let sp = StoragePath::from_user(&root, "dcim/100media/img_0001.jpg").unwrap();
        assert_eq!(sp.as_str(), "DCIM/100MEDIA/img_0001.jpg");
        let sp = StoragePath::from_user(&root, "DCIM/100MEDIA/Img_0001.jpg").unwrap();
        assert_eq!(
            sp.as_str(),
            "DCIM/100MEDIA/Img_0001.jpg",
            "two candidates: kept as given"
        );
    }

    #[test]
    fn user_paths_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("card");
        std::fs::create_dir_all(root.join("DCIM")).unwrap();
        std::fs::write(root.join("DCIM/A.JPG"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("DCIM/passwd.jpg")).unwrap();
        let ok = StoragePath::from_user(&root, "DCIM/A.JPG").unwrap();
        assert_eq!(ok.as_str(), "DCIM/A.JPG");
        let abs = root.join("DCIM/A.JPG");
        assert_eq!(
            StoragePath::from_user(&root, abs.to_str().unwrap()).unwrap(),
            ok
        );
        for bad in [
            "../etc/passwd",
            "DCIM/../../x.jpg",
            "/etc/passwd",
            "DCIM/passwd.jpg",
            "",
        ] {
            assert!(StoragePath::from_user(&root, bad).is_err(), "{bad}");
        }
    }
}
