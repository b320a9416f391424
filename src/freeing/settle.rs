//! Settlement after a crash: the deletions noted and never recorded (a power cut between the
//! deletion and its record, or a command that failed after deleting) are judged at the next pass
//! by what the card shows, and recorded or forgotten.

use std::path::Path;
use std::sync::Arc;

use super::at_dir::Seen;
use super::delete::version_at;
use crate::app::App;
#[cfg(test)]
use crate::store::Store;
use crate::store::{Item, StoreError};

/// Settles the deletions noted before a crash or power cut and never recorded: a noted file
/// gone from its path (or replaced by another inode) was deleted and is recorded as freed now;
/// one still there was not, and its note is dropped. Runs only with the card present.
pub(super) async fn settle_notes(app: &Arc<App>) {
    let notes = match app.freeing_notes() {
        Ok(n) if n.is_empty() => return,
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the notes of earlier deletions");
            return;
        }
    };
    let app2 = app.clone();
    let settled =
        tokio::task::spawn_blocking(move || settle(&*app2, &app2.config().media.root, &notes))
            .await;
    match settled {
        // Each recorded and announced by App as it was settled.
        Ok(Ok(_freed)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot settle the notes of earlier deletions"),
        Err(e) => tracing::warn!(error = %e, "the task settling earlier deletions failed"),
    }
}

/// [`settle_notes`]' work, on a blocking thread: the items recorded as freed, and when.
///
/// A noted file is judged by its version (size and mtime), not its inode: a FAT or exFAT
/// remount (the reboot after a power cut) gives every file a new inode number, and a file
/// still there must never be recorded as freed. Gone from its name, or another version there:
/// deleted. Its directory gone (a card pulled) or unreadable: decided at a later pass.
pub(super) fn settle(
    store: &impl Records,
    root: &Path,
    notes: &[(i64, u64)],
) -> Result<Vec<(Item, i64)>, StoreError> {
    let mut freed = Vec::new();
    for &(id, _) in notes {
        let Some(item) = store.item_if_any(id)? else {
            store.forget_freeing(id)?;
            continue;
        };
        let disk = item.storage_path.on_disk(root);
        let judged = Seen {
            ino: 0,
            size: item.size,
            mtime_ns: item.mtime_ns,
        };
        let gone = match version_at(root, &disk) {
            Ok(None) => true,
            Ok(Some(now)) => !now.same_version(&judged),
            Err(_) => continue,
        };
        if gone {
            let at = store.record_freed(&item)?;
            tracing::warn!(id, path = %item.storage_path, "a file deleted to free space before a crash, power cut or failed command is recorded as freed now");
            freed.push((item, at));
        } else {
            store.forget_freeing(id)?;
        }
    }
    Ok(freed)
}

/// Where settlement reads the noted items and writes what it found: App in the daemon (which
/// also announces each freed file), the store itself in the tests of settlement.
pub(super) trait Records {
    fn item_if_any(&self, id: i64) -> Result<Option<Item>, StoreError>;
    fn forget_freeing(&self, id: i64) -> Result<(), StoreError>;
    fn record_freed(&self, item: &Item) -> Result<i64, StoreError>;
}

impl Records for App {
    fn item_if_any(&self, id: i64) -> Result<Option<Item>, StoreError> {
        App::item_if_any(self, id)
    }
    fn forget_freeing(&self, id: i64) -> Result<(), StoreError> {
        App::forget_freeing(self, id)
    }
    fn record_freed(&self, item: &Item) -> Result<i64, StoreError> {
        App::record_freed(self, item)
    }
}

#[cfg(test)]
impl Records for Store {
    fn item_if_any(&self, id: i64) -> Result<Option<Item>, StoreError> {
        self.item(id)
    }
    fn forget_freeing(&self, id: i64) -> Result<(), StoreError> {
        Store::forget_freeing(self, id)
    }
    fn record_freed(&self, item: &Item) -> Result<i64, StoreError> {
        self.mark_freed(item.id, "checksum")
    }
}
