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
mod identity;
mod kv;
pub mod ledger;
mod lock;
mod schema;
mod space;

pub use identity::{other_card, Checked};
pub use lock::DirLock;
pub use space::{FreeCandidate, SentChunk, SentSummary};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

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

/// One item's identity and whether the scan may touch it ([`Store::for_each_identity`]).
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

/// Per-state counts and bytes (what `GET /v1/status` shows of them is `app`'s business).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub pending: u64,
    pub uploading: u64,
    pub done: u64,
    pub failed: u64,
    pub skipped: u64,
    pub cancelled: u64,
    /// Bytes still to send for pending, uploading and failed items.
    pub bytes_remaining: u64,
    /// Bytes of completed uploads.
    pub bytes_done: u64,
    /// Bytes of pending, uploading and failed items, whole (sent or not).
    pub bytes_open: u64,
}

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

    /// Refills a rebuilt database from the ledger: done versions as done (never sent again),
    /// unfinished uploads as pending with their URL (resumed after a `HEAD`).
    fn restore_from_ledger(&self) -> Result<()> {
        let (known, _) = ledger::replay(&self.dir);
        let now = now_unix();
        let (mut done, mut open) = (0, 0);
        self.tx(|tx| {
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO items (storage_path, kind, size, mtime_ns, queued_at, state,
                   bytes_sent, completed_at, upload_url, upload_endpoint, creations, fingerprint)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut sent_content = tx.prepare(
                "INSERT OR IGNORE INTO sent_contents (storage_path, fingerprint) VALUES (?1, ?2)",
            )?;
            for ((p, s, m), k) in &known {
                let (state, sent, completed) = if k.done {
                    done += 1;
                    ("done", *s as i64, Some(now))
                } else if k.cancelled {
                    // The user's cancel stands: the scan must not queue it again.
                    ("cancelled", 0, None)
                } else if k.upload.is_some() {
                    open += 1;
                    ("pending", 0, None)
                } else {
                    continue;
                };
                let (url, endpoint) = k.upload.clone().unzip();
                let fingerprint = k
                    .fingerprint
                    .as_deref()
                    .and_then(Fingerprint::from_hex)
                    .filter(|_| k.done);
                if let Some(f) = fingerprint {
                    sent_content.execute(params![p, f.as_bytes()])?;
                }
                insert.execute(params![
                    p,
                    k.kind.as_str(),
                    *s as i64,
                    *m,
                    now,
                    state,
                    sent,
                    completed,
                    url,
                    endpoint.flatten(),
                    i64::from(url.is_some()),
                    fingerprint.as_ref().map(Fingerprint::as_bytes),
                ])?;
            }
            // Inserts do not count themselves (migration 6): the rebuilt queue is counted whole.
            tx.execute_batch(RECOUNT)?;
            Ok(())
        })?;
        tracing::warn!(
            done,
            unfinished = open,
            "rebuilt the queue from the ledger: uploaded files stay uploaded, unfinished ones resume"
        );
        Ok(())
    }

    /// Rewrites the ledger from the database when it has grown to many times what the
    /// database knows (each file adds two lines; only the last word on each counts).
    fn compact_ledger_if_large(&self) -> Result<()> {
        // A stat first: most starts have a small ledger, and reading a large one to count its
        // lines is start-up work only worth doing when it may need rewriting (a line is
        // about 100 bytes).
        let path = self.dir.join(ledger::LEDGER_FILE);
        if std::fs::metadata(&path).map_or(0, |m| m.len()) < 4096 * 64 {
            return Ok(());
        }
        let lines = count_lines(&path);
        let facts: i64 = self
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM items
                 WHERE state IN ('done', 'cancelled') OR upload_url IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if (lines as i64) < 2 * facts + 4096 {
            return Ok(());
        }
        self.rewrite_ledger()
    }

    /// Replaces the ledger with the database's facts (done versions, unfinished uploads,
    /// cancels).
    fn rewrite_ledger(&self) -> Result<()> {
        let _serial = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let entries = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare(
                    "SELECT storage_path, size, mtime_ns, kind, state = 'done', upload_url,
                       upload_endpoint, state = 'cancelled', fingerprint
                     FROM items
                     WHERE state IN ('done', 'cancelled') OR upload_url IS NOT NULL",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| {
                    let kind: String = r.get(3)?;
                    let done: bool = r.get(4)?;
                    let cancelled: bool = r.get(7)?;
                    let open = !done && !cancelled;
                    Ok(ledger::Entry {
                        p: r.get(0)?,
                        s: r.get::<_, i64>(1)? as u64,
                        m: r.get(2)?,
                        k: Kind::parse(&kind).unwrap_or(Kind::Photo),
                        u: if open { r.get(5)? } else { None },
                        e: if open { r.get(6)? } else { None },
                        d: done,
                        x: cancelled,
                        f: false,
                        r: false,
                        g: if done {
                            r.get::<_, Option<Vec<u8>>>(8)?
                                .and_then(|b| Fingerprint::from_bytes(&b))
                                .map(|f| f.to_hex())
                        } else {
                            None
                        },
                    })
                })
                .map_err(|e| self.err(e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| self.err(e))?
        };
        ledger::rewrite(&self.dir, entries.into_iter()).map_err(|source| StoreError::Io {
            path: self.dir.join(ledger::LEDGER_FILE),
            source,
        })
    }

    /// Appends a fact about item `id` to the ledger after the database committed it. A
    /// failure is logged: the database holds the fact; only a later loss of it would miss
    /// this line.
    fn note_in_ledger(&self, id: i64, fact: Fact<'_>) {
        let Some(it) = self.item(id).ok().flatten() else {
            return;
        };
        let mut entry = ledger::Entry {
            p: it.storage_path.as_str().to_string(),
            s: it.size,
            m: it.mtime_ns,
            k: it.kind,
            u: None,
            e: None,
            d: false,
            x: false,
            f: false,
            r: false,
            g: None,
        };
        match fact {
            Fact::Created { url, endpoint } => {
                entry.u = Some(url.to_string());
                entry.e = Some(endpoint.to_string());
            }
            Fact::Done => {
                entry.d = true;
                entry.g = it.fingerprint.map(|f| f.to_hex());
            }
            Fact::Cancelled => entry.x = true,
            Fact::Forgotten => entry.f = true,
            Fact::Requeued => entry.r = true,
        }
        let _serial = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = ledger::append(&self.dir, &entry) {
            tracing::warn!(error = %e, item = id, "cannot append to the ledger");
        }
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

    // ----- the queue -----

    /// Crash recovery at start: an item left `uploading` by a crash goes back to `pending`; its
    /// upload URL is kept so the upload resumes from the server's offset.
    pub fn recover_interrupted(&self) -> Result<usize> {
        self.conn()
            .execute(
                "UPDATE items SET state = 'pending' WHERE state = 'uploading'",
                [],
            )
            .map_err(|e| self.err(e))
    }

    /// Queues files found on the card, in one transaction. A file already known with the same
    /// identity is left alone (so a done file is never queued twice); a new version of a queued
    /// file replaces the old item. Returns how many items were added or revived.
    pub fn upsert_files(&self, files: &[FoundFile]) -> Result<usize> {
        self.upsert_with_hint(files, None, |_| true)
    }

    /// [`Store::upsert_files`] for the scan, which knows which paths the queue has never seen:
    /// for those (`path_known` false) the check for an older version to replace is skipped.
    /// One plain insert per new file is what keeps a scan of 100,000 files quick. `card` is the
    /// serial of the card they were found on, if known: an older item at the same path from
    /// another card waits for its card rather than being taken as replaced.
    pub fn upsert_with_hint(
        &self,
        files: &[FoundFile],
        card: Option<&str>,
        path_known: impl Fn(&FoundFile) -> bool,
    ) -> Result<usize> {
        if files.is_empty() {
            return Ok(0);
        }
        let now = now_unix();
        self.tx(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO items (storage_path, kind, size, mtime_ns, queued_at, card)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            // A version that comes back after it was dropped as deleted or replaced (a false
            // alarm, the user restored it, or its card is back after another card that reuses
            // the same names) is queued again: its exact bytes were never sent.
            let mut revive = tx.prepare_cached(REVIVE)?;
            let mut supersede = tx.prepare_cached(SUPERSEDE)?;
            let mut added = 0;
            // Files at paths the queue has never held go in `INSERT_ROWS` to a statement: one
            // statement's overhead per row is most of a first scan's write time. A row the
            // insert ignored (that very version was queued since the caller looked) gets the
            // one-by-one treatment below: revived if it had been dropped.
            let (new, known): (Vec<&FoundFile>, Vec<&FoundFile>) =
                files.iter().partition(|f| !path_known(f));
            // What the inserts added to the pending count (migration 6: once, at the end).
            let (mut inserted, mut inserted_size) = (0i64, 0i64);
            // The full statement's text is built once: formatting its 320 parameter numbers
            // for every 64 rows was ≈ 2 % of a first scan's CPU.
            static FULL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            let full = FULL.get_or_init(|| insert_rows_sql(INSERT_ROWS));
            for rows in new.chunks(INSERT_ROWS) {
                let mut many = if rows.len() == INSERT_ROWS {
                    tx.prepare_cached(full)?
                } else {
                    tx.prepare_cached(&insert_rows_sql(rows.len()))?
                };
                for (i, f) in rows.iter().enumerate() {
                    let at = i * 6;
                    many.raw_bind_parameter(at + 1, f.path.as_str())?;
                    many.raw_bind_parameter(at + 2, f.kind.as_str())?;
                    many.raw_bind_parameter(at + 3, f.size as i64)?;
                    many.raw_bind_parameter(at + 4, f.mtime_ns)?;
                    many.raw_bind_parameter(at + 5, now)?;
                    many.raw_bind_parameter(at + 6, card)?;
                }
                // `RETURNING size` yields the rows inserted, not those the insert ignored.
                let mut returned = many.raw_query();
                let mut n = 0;
                while let Some(row) = returned.next()? {
                    n += 1;
                    inserted_size += row.get::<_, i64>(0)?;
                }
                inserted += n as i64;
                added += n;
                if n < rows.len() {
                    for f in rows {
                        added += revive.execute(params![
                            f.path.as_str(),
                            f.size as i64,
                            f.mtime_ns,
                            card
                        ])?;
                    }
                }
            }
            for f in known {
                let n = insert.execute(params![
                    f.path.as_str(),
                    f.kind.as_str(),
                    f.size as i64,
                    f.mtime_ns,
                    now,
                    card
                ])?;
                if n == 1 {
                    added += 1;
                    inserted += 1;
                    inserted_size += f.size as i64;
                    let id = tx.last_insert_rowid();
                    supersede.execute(params![f.path.as_str(), id, card])?;
                } else {
                    added += revive.execute(params![
                        f.path.as_str(),
                        f.size as i64,
                        f.mtime_ns,
                        card
                    ])?;
                }
            }
            count_inserted(tx, ItemState::Pending, inserted, inserted_size)?;
            Ok(added)
        })
    }

    /// Spaces checkpoints wider ([`SCAN_CHECKPOINT_PAGES`]) until the guard is dropped: for a
    /// scan's run of write batches. The WAL grows to 16 MiB at most meanwhile; dropping the
    /// guard checkpoints it (it is truncated to 1 MiB when it next starts over).
    pub fn wide_checkpoints(&self) -> WideCheckpoints<'_> {
        self.set_checkpoint_pages(SCAN_CHECKPOINT_PAGES);
        WideCheckpoints(self)
    }

    fn set_checkpoint_pages(&self, pages: i64) {
        // Only a pace: if it cannot be set, checkpoints keep the pace they had.
        if let Err(e) = self.conn().pragma_update(None, "wal_autocheckpoint", pages) {
            tracing::warn!(error = %e, pages, "cannot set the checkpoint interval");
        }
    }

    /// Every item's identity, for the scan to tell known files from new ones without a
    /// database write, and to know which open items to look for on the card.
    pub fn for_each_identity(&self, mut f: impl FnMut(Identity<'_>)) -> Result<()> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, storage_path, size, mtime_ns,
                   state IN ('pending', 'uploading', 'failed'),
                   COALESCE(state = 'skipped' AND last_error IN (?1, ?2, ?3), 0),
                   state = 'done', fingerprint IS NOT NULL, card
                 FROM items",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query([REASON_DELETED, REASON_REPLACED, REASON_WAITING_FOR_CARD])
            .map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let text = |i| {
                r.get_ref(i)
                    .and_then(|v| v.as_str_or_null().map_err(Into::into))
                    .map_err(|e| self.err(e))
            };
            let id: i64 = r.get(0).map_err(|e| self.err(e))?;
            let path = text(1)?.unwrap_or_default();
            let size: i64 = r.get(2).map_err(|e| self.err(e))?;
            let mtime_ns: i64 = r.get(3).map_err(|e| self.err(e))?;
            let open: bool = r.get(4).map_err(|e| self.err(e))?;
            let revivable: bool = r.get(5).map_err(|e| self.err(e))?;
            let done: bool = r.get(6).map_err(|e| self.err(e))?;
            let fingerprinted: bool = r.get(7).map_err(|e| self.err(e))?;
            let card = text(8)?;
            f(Identity {
                id,
                path,
                size: size as u64,
                mtime_ns,
                open,
                revivable,
                done,
                fingerprinted,
                card,
            });
        }
        Ok(())
    }

    /// Queues a file the user asked for. An open item for the same version becomes manual (and
    /// is retried now if it had failed); a version already uploaded is not sent again.
    /// `card`: the card it is on, if known.
    pub fn enqueue_manual(&self, f: &FoundFile, card: Option<&str>) -> Result<ManualOutcome> {
        let now = now_unix();
        self.tx(|tx| {
            let existing: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, state FROM items WHERE storage_path = ?1 AND size = ?2 AND mtime_ns = ?3",
                    params![f.path.as_str(), f.size as i64, f.mtime_ns],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match existing {
                Some((id, state)) if state == "done" => Ok(ManualOutcome::AlreadyUploaded(id)),
                Some((id, _)) => {
                    tx.execute(
                        "UPDATE items SET manual = 1, next_attempt_at = 0,
                           state = CASE WHEN state = 'uploading' THEN 'uploading' ELSE 'pending' END
                         WHERE id = ?1",
                        [id],
                    )?;
                    Ok(ManualOutcome::Queued(id))
                }
                None => {
                    tx.execute(
                        "INSERT INTO items (storage_path, kind, size, mtime_ns, queued_at, manual,
                           card) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
                        params![
                            f.path.as_str(),
                            f.kind.as_str(),
                            f.size as i64,
                            f.mtime_ns,
                            now,
                            card
                        ],
                    )?;
                    let id = tx.last_insert_rowid();
                    count_inserted(tx, ItemState::Pending, 1, f.size as i64)?;
                    tx.execute(SUPERSEDE, params![f.path.as_str(), id, card])?;
                    Ok(ManualOutcome::Queued(id))
                }
            }
        })
    }

    /// The next item to upload under `pick`: manual requests first, then the items that failed
    /// least, then oldest capture first.
    ///
    /// Fewest failures before capture time: items that keep failing (a server refusing some
    /// paths, a card with bad sectors) come due again and again as their back-off runs out,
    /// and ordered by capture alone a thousand old ones would go before every new photo on
    /// each round. A file that never failed never waits behind one that did.
    pub fn next_item(&self, pick: &Pick<'_>) -> Result<Option<Item>> {
        let (sql, args) = pick_sql(
            pick,
            "SELECT ".to_string() + ITEM_COLUMNS,
            "ORDER BY manual DESC, attempts ASC, mtime_ns ASC, id ASC LIMIT 1",
        );
        let conn = self.reader();
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
        stmt.query_row(rusqlite::params_from_iter(args), read_item)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// When the earliest backed-off item under `pick` (ignoring `pick.now`) becomes due.
    pub fn next_due(&self, pick: &Pick<'_>) -> Result<Option<i64>> {
        let later = Pick {
            now: i64::MAX,
            ..pick.clone()
        };
        let (sql, args) = pick_sql(&later, "SELECT MIN(next_attempt_at)".into(), "");
        let conn = self.reader();
        conn.query_row(&sql, rusqlite::params_from_iter(args), |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// The highest item id so far (0 for an empty queue): what tests just queued. (The scan
    /// no longer needs it: it judges the open items of the snapshot it takes.)
    #[cfg(test)]
    pub(crate) fn max_item_id(&self) -> Result<i64> {
        self.conn()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM items", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Forgets every unfinished server upload (the account changed: the next attempts create
    /// new uploads under the new account).
    /// Manual requests were the previous account's, so they are dropped too.
    pub fn forget_upload_urls(&self) -> Result<()> {
        self.exec(
            "UPDATE items SET upload_url = NULL, upload_expires_at = NULL, bytes_sent = 0
             WHERE state != 'done' AND upload_url IS NOT NULL",
            [],
        )?;
        self.exec("UPDATE items SET manual = 0 WHERE manual = 1", [])?;
        // The new account cannot vouch for the old one's uploads: none of them is freed.
        self.exec(
            "UPDATE items SET done_url = NULL WHERE done_url IS NOT NULL",
            [],
        )?;
        if let Err(e) = self.rewrite_ledger() {
            tracing::error!(error = %e, "cannot rewrite the ledger without the old upload URLs");
        }
        Ok(())
    }

    /// Whether any item waits to be uploaded (cheap: one index probe).
    pub fn has_pending(&self) -> Result<bool> {
        self.reader()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM items WHERE state = 'pending')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// One item by id.
    pub fn item(&self, id: i64) -> Result<Option<Item>> {
        self.reader()
            .query_row(
                &format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1"),
                [id],
                read_item,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Lists items, optionally of one state, in id order after `after`.
    pub fn list(&self, state: Option<ItemState>, limit: u32, after: i64) -> Result<Vec<Item>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM items
                 WHERE (?1 IS NULL OR state = ?1) AND id > ?2 ORDER BY id LIMIT ?3"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![state.map(|s| s.as_str()), after, limit], read_item)
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// Open items (pending, uploading, failed): the scanner checks they still exist.
    pub fn open_items(&self) -> Result<Vec<Item>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE state IN ('pending', 'uploading', 'failed')"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], read_item).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// Counts and bytes per state: a few rows kept current by the writes themselves (triggers
    /// on update and delete, [`count_inserted`] on insert), not a count of the whole queue.
    pub fn counts(&self) -> Result<QueueCounts> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT state, n, size - sent, size FROM queue_counts")
            .map_err(|e| self.err(e))?;
        let mut c = QueueCounts::default();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (state, n, remaining, total) = row.map_err(|e| self.err(e))?;
            match ItemState::parse(&state) {
                Some(ItemState::Pending) => c.pending = n,
                Some(ItemState::Uploading) => c.uploading = n,
                Some(ItemState::Done) => c.done = n,
                Some(ItemState::Failed) => c.failed = n,
                Some(ItemState::Skipped) => c.skipped = n,
                Some(ItemState::Cancelled) => c.cancelled = n,
                None => {}
            }
            match ItemState::parse(&state) {
                Some(s) if s.is_open() => {
                    c.bytes_remaining += remaining;
                    c.bytes_open += total;
                }
                Some(ItemState::Done) => c.bytes_done += total,
                _ => {}
            }
        }
        Ok(c)
    }

    /// When the last upload completed (unix seconds), from the history: one probe of its
    /// time index. `None` when nothing was uploaded (or the history was erased by unpairing).
    pub fn last_success_at(&self) -> Result<Option<i64>> {
        self.reader()
            .prepare_cached("SELECT MAX(completed_at) FROM history")
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(|e| self.err(e))
    }

    /// The earliest time a pending item waiting on a back-off becomes due (later than `now`):
    /// one seek in the `(state, next_attempt_at)` index, never a scan of the queue.
    pub fn next_backoff_at(&self, now: i64) -> Result<Option<i64>> {
        self.reader()
            .prepare_cached(
                "SELECT MIN(next_attempt_at) FROM items
                 WHERE state = 'pending' AND next_attempt_at > ?1",
            )
            .and_then(|mut st| st.query_row([now], |r| r.get(0)))
            .map_err(|e| self.err(e))
    }

    /// Marks an item as in flight.
    ///
    /// Returns false when the item is no longer pending (cancelled or replaced since it was
    /// picked): then it must not be uploaded.
    pub fn mark_uploading(&self, id: i64) -> Result<bool> {
        self.conn()
            .prepare_cached(
                "UPDATE items SET state = 'uploading' WHERE id = ?1 AND state = 'pending'",
            )
            .and_then(|mut st| st.execute(params![id]))
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// Records a new tus upload for the item, created at `endpoint`: written (durably, and to
    /// the ledger) before any data is sent.
    pub fn set_upload_url(
        &self,
        id: i64,
        url: &str,
        expires_at: Option<i64>,
        endpoint: &str,
    ) -> Result<()> {
        self.durable(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE items SET upload_url = ?2, upload_expires_at = ?3, bytes_sent = 0,
                   upload_endpoint = ?4, creations = creations + 1 WHERE id = ?1",
                params![id, url, expires_at, endpoint],
            )?;
            // What was sent to an earlier upload says nothing about this one.
            tx.execute("DELETE FROM sent_chunks WHERE item_id = ?1", [id])?;
            tx.commit()
        })?;
        self.note_in_ledger(id, Fact::Created { url, endpoint });
        Ok(())
    }

    /// Forgets every unfinished upload created at another endpoint than `endpoint` (the config
    /// moved to a new host, or the account to another region): its URL, and the bearer token
    /// that would go with it, are never sent to the old host again. A URL from before
    /// endpoints were recorded is kept only if it is on the endpoint's own origin.
    pub fn forget_urls_not_for(&self, endpoint: &str) -> Result<usize> {
        let origin = origin_of(endpoint);
        let stale: Vec<i64> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare(
                    "SELECT id, upload_url, upload_endpoint FROM items
                     WHERE upload_url IS NOT NULL AND state != 'done'",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            let mut stale = Vec::new();
            let mut adopted = Vec::new();
            for row in rows {
                let (id, url, at) = row.map_err(|e| self.err(e))?;
                match at {
                    Some(at) if at == endpoint => {}
                    None if origin.is_some() && origin_of(&url) == origin => adopted.push(id),
                    _ => stale.push(id),
                }
            }
            drop(stmt);
            drop(conn);
            // A URL from before endpoints were recorded, on the endpoint's own host, is taken
            // as created there: it resumes instead of starting over.
            for id in adopted {
                self.exec(
                    "UPDATE items SET upload_endpoint = ?2 WHERE id = ?1",
                    params![id, endpoint],
                )?;
            }
            stale
        };
        for id in &stale {
            self.clear_upload_url(*id)?;
        }
        Ok(stale.len())
    }

    /// Forgets the item's server upload (expired or gone): the next attempt creates a new one.
    pub fn clear_upload_url(&self, id: i64) -> Result<()> {
        self.exec(
            "UPDATE items SET upload_url = NULL, upload_expires_at = NULL, bytes_sent = 0 WHERE id = ?1",
            params![id],
        )?;
        self.exec("DELETE FROM sent_chunks WHERE item_id = ?1", params![id])?;
        self.note_in_ledger(id, Fact::Forgotten);
        Ok(())
    }

    /// Records how far the server has the item (and a refreshed expiry, if it sent one).
    pub fn set_progress(&self, id: i64, bytes_sent: u64, expires_at: Option<i64>) -> Result<()> {
        self.exec(
            "UPDATE items SET bytes_sent = ?2, upload_expires_at = COALESCE(?3, upload_expires_at)
             WHERE id = ?1",
            params![id, bytes_sent as i64, expires_at],
        )
    }

    /// The server has every byte: the item is done and joins the history.
    pub fn mark_done(&self, id: i64) -> Result<()> {
        let now = now_unix();
        self.durable(|conn| {
            let tx = conn.transaction()?;
            // Only an item still uploading becomes done: one the user cancelled meanwhile stays
            // cancelled, and gets no history entry.
            let n = tx.execute(
                "UPDATE items SET state = 'done', bytes_sent = size, completed_at = ?2,
                   last_error = NULL, done_url = upload_url, upload_url = NULL,
                   upload_expires_at = NULL
                 WHERE id = ?1 AND state = 'uploading'",
                params![id, now],
            )?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO history (storage_path, size, completed_at, card)
                     SELECT storage_path, size, ?2, card FROM items WHERE id = ?1",
                    params![id, now],
                )?;
                // What was sent from this path, by content (store/identity.rs).
                tx.execute(
                    "INSERT OR IGNORE INTO sent_contents (storage_path, fingerprint)
                     SELECT storage_path, fingerprint FROM items
                     WHERE id = ?1 AND fingerprint IS NOT NULL",
                    [id],
                )?;
            }
            tx.commit()?;
            Ok(n == 1)
        })
        .map(|done| {
            if done {
                self.note_in_ledger(id, Fact::Done);
            }
        })
    }

    /// Items left `uploading` though no transfer runs them (recording their outcome failed,
    /// e.g. the state disk was full) go back to pending. Returns how many.
    pub fn recover_stray_uploading(&self, in_flight: &[i64]) -> Result<usize> {
        let ids: Vec<String> = in_flight.iter().map(i64::to_string).collect();
        self.conn()
            .execute(
                &format!(
                    "UPDATE items SET state = 'pending' WHERE state = 'uploading' AND id NOT IN ({})",
                    ids.join(", ")
                ),
                [],
            )
            .map_err(|e| self.err(e))
    }

    /// A transient failure: back to pending, retried at `next_attempt_at` (unix seconds).
    pub fn mark_retry(&self, id: i64, error: &str, next_attempt_at: i64) -> Result<()> {
        self.exec(
            "UPDATE items SET state = 'pending', attempts = attempts + 1, last_error = ?2,
               next_attempt_at = ?3 WHERE id = ?1 AND state IN ('pending', 'uploading')",
            params![id, error, next_attempt_at],
        )
    }

    /// Stopped by a condition or by the user, not by a failure: back to pending, no attempt
    /// counted, no back-off.
    pub fn mark_interrupted(&self, id: i64) -> Result<()> {
        self.exec(
            "UPDATE items SET state = 'pending' WHERE id = ?1 AND state = 'uploading'",
            params![id],
        )
    }

    /// A permanent failure: the item waits for the user's retry.
    pub fn mark_failed(&self, id: i64, error: &str) -> Result<()> {
        self.exec(
            "UPDATE items SET state = 'failed', attempts = attempts + 1, last_error = ?2
             WHERE id = ?1 AND state IN ('pending', 'uploading')",
            params![id, error],
        )
    }

    /// Not uploaded for a reason that needs nobody (deleted, replaced, changed).
    pub fn mark_skipped(&self, id: i64, reason: &str) -> Result<()> {
        self.exec(
            "UPDATE items SET state = 'skipped', last_error = ?2
             WHERE id = ?1 AND state IN ('pending', 'uploading', 'failed')",
            params![id, reason],
        )
    }

    /// Marks many items skipped with one reason, in one transaction (the scan's reconcile).
    pub fn mark_skipped_many(&self, ids: &[i64], reason: &str) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE items SET state = 'skipped', last_error = ?2
                 WHERE id = ?1 AND state IN ('pending', 'failed')",
            )?;
            let mut n = 0;
            for id in ids {
                n += stmt.execute(params![id, reason])?;
            }
            Ok(n)
        })
    }

    /// A file was deleted from the card: its queued (not uploaded, not in flight) items are
    /// dropped with [`REASON_DELETED`]. Returns how many.
    pub fn skip_deleted(&self, path: &StoragePath) -> Result<usize> {
        self.conn()
            .execute(
                "UPDATE items SET state = 'skipped', last_error = ?2
                 WHERE storage_path = ?1 AND state IN ('pending', 'failed')",
                params![path.as_str(), REASON_DELETED],
            )
            .map_err(|e| self.err(e))
    }

    /// The user's retry of a failed item: pending again, at once, with a fresh back-off.
    pub fn retry(&self, id: i64) -> Result<()> {
        let item = self.item(id)?.ok_or(StoreError::NoSuchItem(id))?;
        if item.state != ItemState::Failed {
            return Err(StoreError::WrongState {
                id,
                state: item.state.as_str(),
                wanted: "failed",
            });
        }
        self.exec(
            "UPDATE items SET state = 'pending', attempts = 0, next_attempt_at = 0 WHERE id = ?1",
            params![id],
        )
    }

    /// The user's cancel of an open item. Returns the server upload URL to terminate, if any.
    pub fn cancel(&self, id: i64) -> Result<Option<String>> {
        let item = self.item(id)?.ok_or(StoreError::NoSuchItem(id))?;
        if !item.state.is_open() {
            return Err(StoreError::WrongState {
                id,
                state: item.state.as_str(),
                wanted: "pending, uploading or failed",
            });
        }
        self.durable(|c| {
            c.execute(
                "UPDATE items SET state = 'cancelled', last_error = 'cancelled by the user',
                   upload_url = NULL, upload_expires_at = NULL WHERE id = ?1",
                params![id],
            )
        })?;
        self.note_in_ledger(id, Fact::Cancelled);
        Ok(item.upload_url)
    }

    /// Upload URLs of unfinished items (for termination when the user unpairs).
    pub fn unfinished_upload_urls(&self) -> Result<Vec<(i64, String)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, upload_url FROM items WHERE upload_url IS NOT NULL")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    fn exec(&self, sql: &str, args: impl rusqlite::Params) -> Result<()> {
        self.conn()
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(args))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    // ----- history -----

    /// Completed uploads, newest first.
    pub fn history(&self, limit: u32) -> Result<Vec<HistoryEntry>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT storage_path, size, completed_at, freed_at, card FROM history
                 ORDER BY completed_at DESC, id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(HistoryEntry {
                    storage_path: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    completed_at: r.get(2)?,
                    freed_at: r.get(3)?,
                    card: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// Deletes history older than `days` (the retention the privacy policy promises).
    pub fn purge_history(&self, days: u32) -> Result<usize> {
        let cutoff = now_unix() - i64::from(days) * 86_400;
        self.conn()
            .execute("DELETE FROM history WHERE completed_at < ?1", [cutoff])
            .map_err(|e| self.err(e))
    }

    /// Erases what the account left behind: the history and every server upload URL, then
    /// checkpoints the WAL so no copy stays in the log (`secure_delete` zeroes freed pages).
    pub fn erase_account_data(&self) -> Result<()> {
        self.durable(|conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM history", [])?;
            // A manual request was the unpaired user's: it must not go up under the next
            // account, nor bypass that account's consent.
            tx.execute(
                "UPDATE items SET upload_url = NULL, upload_expires_at = NULL, manual = 0,
                   done_url = NULL,
                   bytes_sent = CASE WHEN state = 'done' THEN bytes_sent ELSE 0 END",
                [],
            )?;
            // Nothing is freed without the account's uploads to confirm it by.
            tx.execute("DELETE FROM sent_chunks", [])?;
            tx.execute("DELETE FROM kv WHERE key LIKE 'account.%'", [])?;
            tx.commit()
        })?;
        self.checkpoint()?;
        // The ledger's copies of the upload URLs go too (best effort: the database, which the
        // daemon reads, no longer has them).
        if let Err(e) = self.rewrite_ledger() {
            tracing::error!(error = %e, "cannot rewrite the ledger without the upload URLs");
        }
        Ok(())
    }

    /// Moves the WAL's content into the database file and truncates the WAL.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }
}

/// A fact the ledger records about an item.
enum Fact<'a> {
    Created {
        url: &'a str,
        endpoint: &'a str,
    },
    Done,
    Cancelled,
    Forgotten,
    /// A done version whose completed upload the server lost: to be sent again.
    Requeued,
}

/// The result of a manual upload request for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualOutcome {
    Queued(i64),
    AlreadyUploaded(i64),
}

const ITEM_COLUMNS: &str = "id, storage_path, kind, size, mtime_ns, state, manual, bytes_sent, \
    attempts, next_attempt_at, last_error, upload_url, upload_expires_at, creations, queued_at, \
    completed_at, upload_endpoint, fingerprint, card";

fn read_item(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    let kind: String = r.get(2)?;
    let state: String = r.get(5)?;
    Ok(Item {
        id: r.get(0)?,
        storage_path: StoragePath::from_stored(r.get(1)?),
        kind: Kind::parse(&kind).unwrap_or(Kind::Photo),
        size: r.get::<_, i64>(3)? as u64,
        mtime_ns: r.get(4)?,
        state: ItemState::parse(&state).unwrap_or(ItemState::Pending),
        manual: r.get(6)?,
        bytes_sent: r.get::<_, i64>(7)? as u64,
        attempts: r.get(8)?,
        next_attempt_at: r.get(9)?,
        last_error: r.get(10)?,
        upload_url: r.get(11)?,
        upload_expires_at: r.get(12)?,
        creations: r.get(13)?,
        queued_at: r.get(14)?,
        completed_at: r.get(15)?,
        upload_endpoint: r.get(16)?,
        fingerprint: r
            .get::<_, Option<Vec<u8>>>(17)?
            .and_then(|b| Fingerprint::from_bytes(&b)),
        card: r.get(18)?,
    })
}

fn pick_sql(pick: &Pick<'_>, select: String, tail: &str) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut args: Vec<Value> = vec![Value::Integer(pick.now)];
    let mut who = Vec::new();
    if pick.allow_manual {
        who.push("manual = 1".to_string());
    }
    if pick.allow_auto && !pick.auto_kinds.is_empty() {
        let kinds: Vec<String> = pick
            .auto_kinds
            .iter()
            .map(|k| format!("'{}'", k.as_str()))
            .collect();
        who.push(format!("kind IN ({})", kinds.join(", ")));
    }
    if who.is_empty() {
        who.push("0".into());
    }
    let mut sql = format!(
        "{select} FROM items WHERE state = 'pending' AND next_attempt_at <= ?1 AND ({})",
        who.join(" OR ")
    );
    for id in pick.exclude {
        args.push(Value::Integer(*id));
        sql.push_str(&format!(" AND id != ?{}", args.len()));
    }
    sql.push(' ');
    sql.push_str(tail);
    (sql, args)
}

/// WAL pages between automatic checkpoints (1 MiB).
const CHECKPOINT_PAGES: i64 = 256;

/// WAL pages between checkpoints while a scan writes its batches (16 MiB): each checkpoint
/// costs two `fsync`s and rewrites the pages every batch touches again, so a first scan of
/// 100,000 files made twenty of them at 1 MiB.
const SCAN_CHECKPOINT_PAGES: i64 = 4096;

/// Adds `n` rows of `state` and `size` bytes in all, just inserted with nothing sent, to
/// `queue_counts`. Since migration 6 an insert into `items` does not count itself: every insert
/// calls this in its transaction (updates and deletes are still counted by triggers).
pub(crate) fn count_inserted(
    tx: &Connection,
    state: ItemState,
    n: i64,
    size: i64,
) -> rusqlite::Result<()> {
    if n == 0 {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO queue_counts (state, n, size, sent) VALUES (?1, ?2, ?3, 0)
         ON CONFLICT (state) DO UPDATE SET n = n + excluded.n, size = size + excluded.size",
    )?
    .execute(params![state.as_str(), n, size])?;
    Ok(())
}

/// `queue_counts` made again from a count of the queue (after a rebuild from the ledger).
const RECOUNT: &str = "DELETE FROM queue_counts;
    INSERT INTO queue_counts (state, n, size, sent)
        SELECT state, COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(bytes_sent), 0)
        FROM items GROUP BY state;";

/// A version seen again after it was dropped as deleted, replaced or waiting for its card is
/// queued again (`?1..?3`: its identity; `?4`: the card it is on now, if known).
const REVIVE: &str = "UPDATE items SET state = 'pending', last_error = NULL, next_attempt_at = 0,
       card = COALESCE(?4, card)
     WHERE storage_path = ?1 AND size = ?2 AND mtime_ns = ?3 AND state = 'skipped'
       AND last_error IN ('file deleted before upload', 'replaced by a newer version of the file',
                          'waiting_for_card')";

/// A new version at a path (`?1`, item `?2`, found on card `?3`) sets the older open items
/// there aside: replaced, unless they came from another card (both known), which they wait for.
/// One that waited for this very card is replaced too: its card is back with another version.
const SUPERSEDE: &str = "UPDATE items SET state = 'skipped',
       last_error = CASE WHEN card IS NOT NULL AND ?3 IS NOT NULL AND card != ?3
                         THEN 'waiting_for_card'
                         ELSE 'replaced by a newer version of the file' END
     WHERE storage_path = ?1 AND id < ?2
       AND (state IN ('pending', 'failed')
            OR (state = 'skipped' AND last_error = 'waiting_for_card' AND card = ?3))";

/// Rows per `INSERT` statement when the scan queues new files.
const INSERT_ROWS: usize = 64;

/// `INSERT OR IGNORE` of `rows` new items, six parameters each (path, kind, size, mtime,
/// queued at, card), returning the size of each row inserted (for [`count_inserted`]).
fn insert_rows_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT OR IGNORE INTO items (storage_path, kind, size, mtime_ns, queued_at, card) VALUES ",
    );
    for i in 0..rows {
        let at = i * 6;
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
            at + 1,
            at + 2,
            at + 3,
            at + 4,
            at + 5,
            at + 6
        ));
    }
    sql.push_str(" RETURNING size");
    sql
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

fn count_lines(path: &Path) -> usize {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    while let Ok(k) = f.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += buf[..k].iter().filter(|b| **b == b'\n').count();
    }
    n
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
