//! The database schema and its forward migrations.
//!
//! Invariant: `PRAGMA user_version` is the number of migrations applied; each runs once, in a
//! transaction with the version bump, so a power cut leaves either the old or the new schema.

/// Migrations in order; never edit a released one, append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the queue, the history of completed uploads, and small key/value state.
    r#"
    CREATE TABLE items (
        id                 INTEGER PRIMARY KEY,
        storage_path       TEXT    NOT NULL,
        kind               TEXT    NOT NULL,
        size               INTEGER NOT NULL,
        -- The file's identity is (storage_path, size, mtime_ns): inode numbers are not stable
        -- on FAT cards across remounts, so they would turn a re-inserted card into new files.
        mtime_ns           INTEGER NOT NULL,
        state              TEXT    NOT NULL DEFAULT 'pending',
        manual             INTEGER NOT NULL DEFAULT 0,
        attempts           INTEGER NOT NULL DEFAULT 0,
        next_attempt_at    INTEGER NOT NULL DEFAULT 0,
        last_error         TEXT,
        upload_url         TEXT,
        upload_expires_at  INTEGER,
        bytes_sent         INTEGER NOT NULL DEFAULT 0,
        creations          INTEGER NOT NULL DEFAULT 0,
        queued_at          INTEGER NOT NULL,
        completed_at       INTEGER,
        UNIQUE (storage_path, size, mtime_ns)
    );
    CREATE INDEX items_by_state ON items (state, next_attempt_at);
    CREATE INDEX items_by_path ON items (storage_path);
    CREATE TABLE history (
        id           INTEGER PRIMARY KEY,
        storage_path TEXT    NOT NULL,
        size         INTEGER NOT NULL,
        completed_at INTEGER NOT NULL
    );
    CREATE INDEX history_by_time ON history (completed_at);
    CREATE TABLE kv (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 2: `items_by_path` duplicated the unique index's prefix (storage_path, ...): dropping it
    // makes each insert update one b-tree fewer (a scan of 100,000 files is bound by this).
    "DROP INDEX IF EXISTS items_by_path;",
    // 3: the endpoint an upload URL was created at: a URL is only ever used against it.
    "ALTER TABLE items ADD COLUMN upload_endpoint TEXT;",
];
