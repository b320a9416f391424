//! What makes a change of a file survive a power cut, beyond the file's own `fsync`: the
//! directory that names it synced too (a rename, a create or an unlink lives in the directory).

use std::path::Path;

/// Syncs the directory `dir`, so that a rename, create or unlink in it is on disk. Best
/// effort: a directory that cannot be opened or synced (some file systems refuse `fsync` on a
/// directory) leaves the change as durable as the file system makes it anyway.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
