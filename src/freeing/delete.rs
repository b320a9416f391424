//! Deletion of the one file the rules judged: a durable note first, then the maker's command or
//! an unlink relative to the file's directory, only while its name holds the version judged.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::at_dir::{self, Seen};
use super::gather::world;
use super::{command, FreeingError, DELETE_TIMEOUT};
use crate::app::App;
use crate::space;
use crate::store::FreeCandidate;

/// Deletes the file the rules freed, `seen` being what they judged at the last look; first a
/// durable note that it is about to go ([`Store::note_freeing`]), which the next pass settles
/// if the camera dies before the deletion is recorded, or if the deletion failed with the file
/// gone all the same (a command that deleted it and then failed).
pub(super) async fn delete(
    app: &Arc<App>,
    stop: &CancellationToken,
    c: &FreeCandidate,
    seen: Seen,
) -> Result<(), FreeingError> {
    // The last look: consent, pairing, the card and recording may have changed during the
    // HEAD and the read-back.
    if stop.is_cancelled() || space::last_look(&world(app)).is_some() {
        return Err(FreeingError::Stopped);
    }
    let id = c.item.id;
    app.note_freeing(id, seen.ino).map_err(FreeingError::Note)?;
    let root = app.config().media.root.clone();
    let path = c.item.storage_path.on_disk(&root);
    let command = app.config().media.delete_command.clone();
    let stop = stop.clone();
    let done = tokio::task::spawn_blocking(move || {
        let done = delete_file(&root, &path, seen, command.as_deref(), &stop);
        // Whether the file the rules judged is still at its name after a failure: only then is
        // the note dropped (otherwise the next pass records what happened).
        let still_there = done.is_err()
            && matches!(version_at(&root, &path), Ok(Some(now)) if now.same_version(&seen));
        (done, still_there)
    })
    .await;
    let (done, still_there) = match done {
        Ok(d) => d,
        Err(e) => (Err(FreeingError::DeleteTask(e)), false),
    };
    if still_there {
        if let Err(e) = app.forget_freeing(id) {
            tracing::warn!(error = %e, id, "cannot drop the note of a deletion that did not happen");
        }
    }
    done
}

/// Deletes the file at `path`, and only while it is the version the rules judged (`seen`:
/// the same inode, size and mtime): the directories down to it are opened one by one without
/// following a link, and the name is checked and unlinked in its directory, so a file put in
/// its place or rewritten since the last look (or a link swapped into the path) is never
/// deleted. With the firmware's command (the path as its one argument, no shell) the same check
/// comes first, but the command resolves the path itself, milliseconds later; success is its
/// exit 0 and that version gone from the name. The command is killed after [`DELETE_TIMEOUT`]
/// or when `stop` is cancelled; one that failed, timed out or was stopped after the file went
/// has deleted it all the same, and that is what is recorded.
pub(super) fn delete_file(
    root: &Path,
    path: &Path,
    seen: Seen,
    command: Option<&Path>,
    stop: &CancellationToken,
) -> Result<(), FreeingError> {
    let at = |source: std::io::Error| FreeingError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (dir, name) = at_dir::open_parent(root, path).map_err(at)?;
    match at_dir::regular_file(&dir, &name).map_err(at)? {
        Some(now) if now == seen => {}
        Some(_) => {
            return Err(FreeingError::Replaced {
                path: path.to_path_buf(),
            })
        }
        None => {
            return Err(FreeingError::Gone {
                path: path.to_path_buf(),
            })
        }
    }
    let Some(cmd) = command else {
        return at_dir::unlink(&dir, &name).map_err(|source| FreeingError::Unlink {
            path: path.to_path_buf(),
            source,
        });
    };
    if let Err(failure) = command::run(cmd, path, DELETE_TIMEOUT, stop) {
        let gone = || {
            let why = failure.describe(cmd);
            tracing::warn!(path = %path.display(), reason = %why, "the delete command did not succeed, but the file is gone: recorded as freed");
            Ok(())
        };
        return match at_dir::regular_file(&dir, &name) {
            // Gone from its name (or another file took it since): deleted.
            Ok(None) => gone(),
            // Another version under its name: deleted. A new inode alone proves nothing: FAT
            // and exFAT renumber inodes (a remount during the command), so the same size and
            // mtime is the same file, still there.
            Ok(Some(now)) if !now.same_version(&seen) => gone(),
            Ok(Some(_)) => Err(FreeingError::Command {
                cmd: cmd.to_path_buf(),
                failure,
            }),
            // Not to be told now (the card pulled): the note of the deletion settles it later.
            Err(source) => Err(FreeingError::CommandThen {
                cmd: cmd.to_path_buf(),
                failure,
                path: path.to_path_buf(),
                source,
            }),
        };
    }
    match at_dir::regular_file(&dir, &name) {
        Ok(Some(now)) if now == seen => Err(FreeingError::StillThere {
            cmd: cmd.to_path_buf(),
            path: path.to_path_buf(),
        }),
        Ok(_) => Ok(()),
        Err(source) => Err(FreeingError::AfterCommand {
            cmd: cmd.to_path_buf(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The regular file at `path` under `root` (no link followed on the way), `None` when the name
/// is free; an error when its directory cannot be opened (gone: a card pulled) or the name
/// holds something else than a regular file.
pub(super) fn version_at(root: &Path, path: &Path) -> std::io::Result<Option<Seen>> {
    let (dir, name) = at_dir::open_parent(root, path)?;
    at_dir::regular_file(&dir, &name)
}
