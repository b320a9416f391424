//! The upload queue, user settings and history in one SQLite database in `state.dir`.
//!
//! Invariants:
//! - the database is the single source of truth for what was found, sent and finished; an item's
//!   upload URL is written before any of its data is sent, so a crash can always resume;
//! - an item is `done` only after the server acknowledged its whole length;
//! - writes from the scanner are batched (one transaction per [`Store::upsert_files`] call);
//! - the writes that promise "never twice" (an upload URL stored, an upload done, a cancel,
//!   unpairing) are durable when the call returns: they run at `synchronous = FULL`, so a
//!   power cut cannot roll them back (docs/PERFORMANCE.md has what that costs per file);
//! - a corrupt file is moved aside and a fresh database built from the [`ledger`]: what was
//!   sent stays sent, unfinished uploads resume by asking the server, and the user's choices
//!   (consent above all) are kept; without a record of them consent is off, never the maker's
//!   default. The daemon keeps running, and the next scan refills the rest of the queue.

mod cellular;
mod choices;
mod history;
mod identity;
mod kv;
pub mod ledger;
mod lock;
mod queue;
mod restore;
mod schema;
mod space;

pub use identity::{other_card, Checked};
pub use lock::DirLock;
pub use queue::ManualOutcome;
use queue::*;
use restore::*;
pub use space::{FreeCandidate, SentChunk, SentDigest, SentSummary};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection};

use crate::card::Fingerprint;
use crate::clock::now_unix;
use crate::media::{Kind, StoragePath};
#[cfg(test)]
use crate::settings::Settings;

/// The database file's name inside `state.dir`.
pub const DB_FILE: &str = "cambackup.db";

/// An item's place in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemState {
    /// Waiting to be uploaded (possibly after a back-off).
    Pending,
    /// An upload is in flight.
    Uploading,
    /// The server has every byte.
    Done,
    /// Stopped for good until the user retries (e.g. 413, the file became unreadable).
    Failed,
    /// Not uploaded, for a reason that needs nobody (deleted before upload, replaced).
    Skipped,
    /// The user cancelled it.
    Cancelled,
}

impl ItemState {
    pub const ALL: [ItemState; 6] = [
        ItemState::Pending,
        ItemState::Uploading,
        ItemState::Done,
        ItemState::Failed,
        ItemState::Skipped,
        ItemState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Uploading => "uploading",
            ItemState::Done => "done",
            ItemState::Failed => "failed",
            ItemState::Skipped => "skipped",
            ItemState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ItemState> {
        ItemState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Still to be uploaded.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ItemState::Pending | ItemState::Uploading | ItemState::Failed
        )
    }
}

/// The reason recorded when a file vanishes before its upload.
pub const REASON_DELETED: &str = "file deleted before upload";
/// The reason recorded when a newer version of a file replaces a queued one.
pub const REASON_REPLACED: &str = "replaced by a newer version of the file";
/// The reason an item of a card that is out is set aside (not replaced, not deleted): the
/// card in the slot is another, which reuses its name. It is queued again when its card, and
/// so its very file, is back; until then it counts as not backed up.
pub const REASON_WAITING_FOR_CARD: &str = "waiting_for_card";

/// A file found on the card, ready to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    pub path: StoragePath,
    pub kind: Kind,
    pub size: u64,
    pub mtime_ns: i64,
}

/// Checkpoints spaced wider while it lives ([`Store::wide_checkpoints`]).
pub struct WideCheckpoints<'a>(&'a Store);

impl Drop for WideCheckpoints<'_> {
    /// Folds the WAL back now, on the scan's thread: left to the next commit, a checkpoint of
    /// up to 16 MiB (two `fsync`s) could fall on the runtime thread, which answers the API. It
    /// runs on a connection of its own, so that neither the writer's nor the reader's lock is
    /// held meanwhile (a passive checkpoint waits for no reader or writer).
    fn drop(&mut self) {
        self.0.set_checkpoint_pages(CHECKPOINT_PAGES);
        let done = Connection::open(&self.0.path).and_then(|c| {
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        });
        if let Err(e) = done {
            tracing::warn!(error = %e, "cannot checkpoint after the scan's writes");
        }
    }
}

/// One item's identity and whether the scan may touch it ([`Store::for_each_identity_in`]).
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub id: i64,
    pub path: &'a str,
    pub size: u64,
    pub mtime_ns: i64,
    /// Pending, uploading or failed: still to be sent, so dropped if its file is gone.
    pub open: bool,
    /// Dropped as deleted, replaced or waiting for its card: queued again if its very file
    /// is seen.
    pub revivable: bool,
    /// Uploaded.
    pub done: bool,
    /// Its content's fingerprint is known: a file with its identity can be checked by content.
    pub fingerprinted: bool,
    /// The serial of the card it was found on.
    pub card: Option<&'a str>,
}

/// One queue item, as the database holds it (the API's copy is `control::views::ItemView`).
#[derive(Debug, Clone)]
pub struct Item {
    pub id: i64,
    pub storage_path: StoragePath,
    pub kind: Kind,
    pub size: u64,
    pub mtime_ns: i64,
    pub state: ItemState,
    pub manual: bool,
    pub bytes_sent: u64,
    pub attempts: u32,
    /// Unix seconds before which no retry is made (0: now).
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub upload_url: Option<String>,
    pub upload_expires_at: Option<i64>,
    /// The endpoint the upload URL was created at: a URL is only used against it.
    pub upload_endpoint: Option<String>,
    /// How many tus creations this item has made (1 in the normal case).
    pub creations: u32,
    pub queued_at: i64,
    pub completed_at: Option<i64>,
    /// The fingerprint of the bytes it stands for, once a decision or its upload needed it.
    pub fingerprint: Option<Fingerprint>,
    /// The serial of the card it was found on (`None`: unknown).
    pub card: Option<String>,
}

/// Per-state counts and bytes: one type with `status.queue` (its definition is the API's).
pub use crate::wire::QueueCounts;

/// A completed upload.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub storage_path: String,
    pub size: u64,
    pub completed_at: i64,
    /// When the file was deleted from the card to free space (unix seconds).
    pub freed_at: Option<i64>,
    /// The serial of the card it was sent from (`None`: unknown).
    pub card: Option<String>,
    /// What its freeing rested on: `receipt`, `checksum` or `length` (`None`: not freed).
    pub freed_on: Option<String>,
}

/// The history in figures (the support bundle's `history.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistorySummary {
    pub uploads: u64,
    pub bytes: u64,
    /// Of them, deleted from the card to free space.
    pub freed: u64,
    pub first_completed_at: Option<i64>,
    pub last_completed_at: Option<i64>,
}

/// Which pending items the scheduler may take now.
#[derive(Debug, Clone)]
pub struct Pick<'a> {
    pub now: i64,
    /// Automatic uploads allowed, of these kinds.
    pub auto_kinds: &'a [Kind],
    pub allow_auto: bool,
    /// Manual uploads (asked for by the app) allowed.
    pub allow_manual: bool,
    /// Items already in flight.
    pub exclude: &'a [i64],
}

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no queue item with id {0}")]
    NoSuchItem(i64),
    #[error("queue item {id} is {state}, not {wanted}")]
    WrongState {
        id: i64,
        state: &'static str,
        wanted: &'static str,
    },
}

/// The store: a cheap handle, shared between tasks.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// A second connection, read-only, for the reads the runtime thread makes (what the
    /// control API shows, what the scheduler picks). In WAL mode a reader never waits for a
    /// writer, so a scan's write batch or an upload's durable write does not hold up
    /// `GET /v1/status` (benches/scan_api.sh); it sees every committed write.
    read: Arc<Mutex<Connection>>,
    path: PathBuf,
    dir: PathBuf,
    /// The database was found corrupt (or lost) at open and rebuilt.
    rebuilt: bool,
    /// Serialises ledger appends with ledger rewrites: an append to the file a rewrite is
    /// about to replace would be lost.
    ledger: Arc<Mutex<()>>,
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// The state directory's file system is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DiskFull)
            ),
            StoreError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir`, migrating it forward. A corrupt file is
    /// moved aside as `cambackup.db.corrupt-UNIXTIME` and replaced by one rebuilt from the
    /// ledger; so is one a newer release wrote (firmware rolled back), as
    /// `cambackup.db.newer-UNIXTIME`: its schema is one this release cannot read correctly.
    /// The copy is kept for inspection only (no release reads it back); like the corrupt one,
    /// the rebuild keeps what the ledger holds (what was sent, what is unfinished, the user's
    /// choices), not the history.
    pub fn open(dir: &Path) -> Result<Store> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        // Before anything reads or appends to it: a torn last line would swallow the next one.
        if let Err(e) = ledger::mend(dir) {
            tracing::error!(error = %e, "cannot mend the ledger's torn last line");
        }
        let path = dir.join(DB_FILE);
        // A database that is gone or empty (a power cut before its first checkpoint, an fsck)
        // while the ledger holds facts is a lost one, not a first start: rebuild it from them.
        let lost = std::fs::metadata(&path).map_or(true, |m| m.len() == 0)
            && std::fs::metadata(dir.join(ledger::LEDGER_FILE)).is_ok_and(|m| m.len() > 0);
        if lost {
            tracing::error!(database = %path.display(), "the database is missing or empty but the ledger is not: rebuilding it from the ledger");
        }
        let mut rebuilt = lost;
        let conn = match open_checked(&path) {
            Ok(c) => c,
            Err(e) if is_corruption(&e) || is_newer(&e) => {
                rebuilt = true;
                let what = if is_newer(&e) { "newer" } else { "corrupt" };
                let aside = dir.join(format!("{DB_FILE}.{what}-{}", now_unix()));
                tracing::error!(
                    database = %path.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "database is {what}: moved it aside and rebuilding it from the ledger; \
                     the next scan refills the rest of the queue"
                );
                std::fs::rename(&path, &aside).map_err(io)?;
                for ext in ["-wal", "-shm"] {
                    let side = dir.join(format!("{DB_FILE}{ext}"));
                    if side.exists() {
                        let _ =
                            std::fs::rename(&side, dir.join(format!("{}{ext}", aside.display())));
                    }
                }
                open_checked(&path).map_err(|source| StoreError::Sqlite {
                    path: path.clone(),
                    source,
                })?
            }
            Err(source) => {
                return Err(StoreError::Sqlite {
                    path: path.clone(),
                    source,
                })
            }
        };
        for ext in ["", "-wal", "-shm"] {
            let f = dir.join(format!("{DB_FILE}{ext}"));
            if f.exists() {
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            }
        }
        let read = open_reader(&path).map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let store = Store {
            conn: Arc::new(Mutex::new(conn)),
            read: Arc::new(Mutex::new(read)),
            path,
            dir: dir.to_path_buf(),
            rebuilt,
            ledger: Arc::new(Mutex::new(())),
        };
        // Best effort: the database is usable without them (a full state disk must not keep
        // the daemon from starting); what went wrong is logged.
        let ledger_work = if rebuilt {
            store.restore_from_ledger()
        } else {
            store.compact_ledger_if_large()
        };
        if let Err(e) = ledger_work {
            tracing::error!(error = %e, "cannot use the ledger");
        }
        Ok(store)
    }

    /// Whether the database was found corrupt at open and rebuilt.
    pub fn was_rebuilt(&self) -> bool {
        self.rebuilt
    }

    /// Runs one write with `synchronous = FULL`, so it is on the flash when this returns: the
    /// writes that promise "never twice" (an upload URL stored, an upload done, a cancel,
    /// unpairing). The connection's other writes (progress, states) run at `NORMAL`, which in
    /// WAL mode keeps the database consistent across power loss and whose frames the next
    /// FULL commit syncs too.
    fn durable<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut conn = self.conn();
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err(e))?;
        let out = f(&mut conn);
        let back = conn.pragma_update(None, "synchronous", "NORMAL");
        let out = out.map_err(|e| self.err(e))?;
        back.map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each call is one
        // statement or one transaction), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The read-only connection (see [`Store::read`]'s field): for single reads whose answer
    /// needs no transaction with a write.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in one transaction.
    fn tx<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let out = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn exec(&self, sql: &str, args: impl rusqlite::Params) -> Result<()> {
        self.conn()
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(args))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Moves the WAL's content into the database file and truncates the WAL.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }
}

fn open_checked(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    // NORMAL in WAL mode keeps the database consistent across power loss but may roll back the
    // last commits; among them could be the one that stored an upload URL (a second creation:
    // the file goes up twice) or recorded "done" (sent again). Those writes run at FULL
    // ([`Store::durable`]); progress and state changes stay at NORMAL (docs/PERFORMANCE.md,
    // durability, has the cost per file).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The WAL is truncated back to 1 MiB after each checkpoint instead of keeping its largest
    // size: on a small state partition a WAL that only grows is what fills it.
    // A checkpoint every 256 pages (1 MiB) rather than SQLite's 1,000 bounds the WAL's size.
    conn.pragma_update(None, "journal_size_limit", 1024 * 1024)?;
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    // 4 MiB of page cache (SQLite's default is 2): enough for the hot index pages of a
    // 100,000-item queue, still well inside the daemon's memory budget.
    conn.pragma_update(None, "cache_size", -4096)?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(check),
        ));
    }
    migrate(&mut conn)?;
    Ok(conn)
}

/// The read-only second connection, opened after [`open_checked`] made the file sound and
/// current. `query_only` makes a write through it an error rather than a second writer.
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "query_only", "ON")?;
    // Its reads are small (counts, a page of the queue): SQLite's default cache is plenty.
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > schema::MIGRATIONS.len() {
        // rusqlite has no variant for an application's own error without its `functions`
        // feature; this one carries any boxed error, and [`is_newer`] finds it by type.
        return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(
            NewerSchema {
                found: version,
                known: schema::MIGRATIONS.len(),
            },
        )));
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database migrated");
    }
    Ok(())
}

/// `scheme://host:port` of a URL, for comparing an old upload URL with the endpoint.
fn origin_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(u.origin().ascii_serialization())
}

/// A database at a schema version past this release's migrations: written by a newer release.
#[derive(Debug, thiserror::Error)]
#[error("the database is at schema version {found}, newer than this release's {known}")]
struct NewerSchema {
    found: usize,
    known: usize,
}

fn is_newer(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::ToSqlConversionFailure(b) if b.is::<NewerSchema>())
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase)
    )
}

#[cfg(test)]
mod tests;
