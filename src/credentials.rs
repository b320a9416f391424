//! The account from pairing: user ID, bearer token, region. Kept in `state.dir/credentials.json`
//! (0600), apart from the database, so that unpairing can overwrite and unlink one small file and
//! no copy of the token lingers in database pages.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::sync_dir;
use crate::secret::Secret;

/// The credentials file's name inside `state.dir`.
pub const FILE: &str = "credentials.json";

/// A paired account. `Debug` never shows the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub user_id: String,
    pub token: Secret,
    pub region: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    user_id: String,
    token: String,
    region: Option<String>,
}

/// A user ID as pairing accepts it: 1 to 256 characters, not all spaces, no control
/// characters; kept trimmed. Checked once, here, for the API and the daemon alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserId(String);

impl UserId {
    /// What the app sent, or why it is refused.
    pub fn parse(s: &str) -> Result<UserId, &'static str> {
        let len = s.chars().count();
        if !(1..=256).contains(&len) || s.chars().any(char::is_control) || s.trim().is_empty() {
            return Err(
                "`user_id` must be 1 to 256 characters, not all spaces, without control characters",
            );
        }
        Ok(UserId(s.trim().to_string()))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A bearer token as pairing accepts it: 1 to 4096 visible ASCII characters. It goes into an
/// `Authorization: Bearer` header on every upload (RFC 6750's b64token is a subset), so
/// anything else could be stored but never sent, and would surface only as failed uploads.
pub fn parse_token(s: &str) -> Result<Secret, &'static str> {
    if !(1..=4096).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "`token` must be 1 to 4096 visible ASCII characters (no spaces or control characters)",
        );
    }
    Ok(Secret::new(s))
}

/// A pairing request, checked: what `App::pair` takes.
#[derive(Clone, Debug)]
pub struct Pairing {
    pub user_id: UserId,
    pub token: Secret,
    pub region: Option<String>,
}

/// What reading or writing the credentials can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("credentials file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl CredentialsError {
    /// The state directory's file system is full (a pairing is then refused with 507).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, CredentialsError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the account, `None` when not paired.
pub fn load(dir: &Path) -> Result<Option<Account>, CredentialsError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let d: OnDisk = serde_json::from_str(&text).map_err(|e| CredentialsError::Invalid {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(Some(Account {
        user_id: d.user_id,
        token: Secret::new(d.token),
        region: d.region,
    }))
}

/// Stores the account atomically (temp file 0600, fsync, rename), replacing any earlier one.
/// On failure (a full disk) the earlier account is as it was, and no temp file is left.
pub fn save(dir: &Path, account: &Account) -> Result<(), CredentialsError> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let body = serde_json::to_vec(&OnDisk {
        user_id: account.user_id.clone(),
        token: account.token.expose().to_string(),
        region: account.region.clone(),
    })
    .expect("plain strings serialize");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()
    };
    // The new file first: on a full disk this fails and the earlier account stays paired
    // (erased first, it would be lost with the pairing refused).
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    // Then the old file's bytes (best effort): the rename would leave them in a freed block.
    if let Ok(m) = std::fs::metadata(&path) {
        if let Err(e) = zero_fill(&path, m.len()) {
            tracing::warn!(file = %path.display(), error = %e, "cannot overwrite the earlier account file before replacing it");
        }
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir);
    Ok(())
}

/// Overwrites the credentials file with zeros, syncs, and unlinks it. Not paired afterwards.
///
/// The overwrite is best effort, the unlink is not: on a copy-on-write or log-structured file
/// system (UBIFS, f2fs, btrfs) writing over a file needs free blocks, so on a full disk the
/// overwrite fails; the file must go all the same, or the next start finds the camera paired
/// again. Removing a file needs no free space.
pub fn erase(dir: &Path) -> Result<(), CredentialsError> {
    for name in [FILE.to_string(), format!("{FILE}.tmp")] {
        let path = dir.join(name);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        if let Err(e) = zero_fill(&path, len) {
            tracing::warn!(file = %path.display(), error = %e, "cannot overwrite the account file before removing it (a full disk?): removing it all the same");
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Writes `len` zeros over the file at `path` and syncs them.
fn zero_fill(path: &Path, len: u64) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(&vec![0u8; len as usize])?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_erase_round_trip_leaves_no_token_bytes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let acct = Account {
            user_id: "u-1".into(),
            token: Secret::new("tok-SECRET-42"),
            region: Some("eu".into()),
        };
        save(dir.path(), &acct).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(dir.path()).unwrap(), Some(acct));
        erase(dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            assert!(!bytes.windows(13).any(|w| w == b"tok-SECRET-42"));
        }
    }

    /// On a copy-on-write or log-structured flash file system, writing zeros over the file
    /// needs free blocks. A tmpfs gives the same failure for a sparse file: filling its holes
    /// needs pages a full tmpfs does not have. The file must go all the same.
    #[test]
    fn erasing_removes_the_file_even_when_the_disk_has_no_room_to_overwrite_it() {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); this test needs one");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(self.0)
                    .status();
            }
        }
        let _unmount = Unmount(dir.path());
        let path = dir.path().join(FILE);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(128 << 10)
            .unwrap();
        let mut filler = std::fs::File::create(dir.path().join("filler")).unwrap();
        while filler.write_all(&[1u8; 4096]).is_ok() {}
        assert!(
            zero_fill(&path, 128 << 10).is_err(),
            "the test needs an overwrite that fails"
        );
        erase(dir.path()).unwrap();
        assert!(!path.exists(), "the account file is still there");
        assert_eq!(load(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_garbled_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("credentials.json"), "{e}");
    }
}
