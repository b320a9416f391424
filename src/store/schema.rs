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
    // 4: per-state counts and byte sums kept by triggers, so `GET /v1/status` reads a handful
    // of rows instead of counting a queue of 100,000 items (22 ms on the only runtime thread,
    // benches/status.sh) every time the app asks.
    r#"
    CREATE TABLE queue_counts (
        state TEXT PRIMARY KEY,
        n     INTEGER NOT NULL,
        size  INTEGER NOT NULL,
        sent  INTEGER NOT NULL
    );
    INSERT INTO queue_counts (state, n, size, sent)
        SELECT state, COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(bytes_sent), 0)
        FROM items GROUP BY state;
    CREATE TRIGGER queue_counts_insert AFTER INSERT ON items BEGIN
        INSERT INTO queue_counts (state, n, size, sent) VALUES (NEW.state, 1, NEW.size, NEW.bytes_sent)
            ON CONFLICT (state) DO UPDATE SET n = n + 1, size = size + excluded.size,
                sent = sent + excluded.sent;
    END;
    CREATE TRIGGER queue_counts_delete AFTER DELETE ON items BEGIN
        UPDATE queue_counts SET n = n - 1, size = size - OLD.size, sent = sent - OLD.bytes_sent
            WHERE state = OLD.state;
    END;
    CREATE TRIGGER queue_counts_update AFTER UPDATE OF state, size, bytes_sent ON items BEGIN
        UPDATE queue_counts SET n = n - 1, size = size - OLD.size, sent = sent - OLD.bytes_sent
            WHERE state = OLD.state;
        INSERT INTO queue_counts (state, n, size, sent) VALUES (NEW.state, 1, NEW.size, NEW.bytes_sent)
            ON CONFLICT (state) DO UPDATE SET n = n + 1, size = size + excluded.size,
                sent = sent + excluded.sent;
    END;
    "#,
    // 5: freeing space (INTERFACE.md section 8). `done_url`: the completed upload's URL, kept
    // for the HEAD that confirms it before its file is deleted (`upload_url` is cleared when
    // done). `freed_at`: when the file was deleted from the card, on the item and its history
    // entry. `sent_chunks`: what each accepted PATCH carried (offset, length, SHA-1 of the bytes
    // as sent, whether the server checked an Upload-Checksum, the inode they were read from);
    // kept only where the maker configured freeing space. Rows never overlap (a chunk recorded
    // at an offset replaces every row reaching past it), so rows whose lengths sum to the size
    // and that end at it tile the file.
    r#"
    ALTER TABLE items ADD COLUMN done_url TEXT;
    ALTER TABLE items ADD COLUMN freed_at INTEGER;
    ALTER TABLE history ADD COLUMN freed_at INTEGER;
    CREATE TABLE sent_chunks (
        item_id  INTEGER NOT NULL,
        start    INTEGER NOT NULL,
        len      INTEGER NOT NULL,
        sha1     BLOB    NOT NULL,
        checksum INTEGER NOT NULL,
        ino      INTEGER NOT NULL,
        PRIMARY KEY (item_id, start)
    ) WITHOUT ROWID;
    CREATE INDEX items_freeable ON items (mtime_ns)
        WHERE state = 'done' AND freed_at IS NULL AND done_url IS NOT NULL;
    "#,
    // 6: an insert into `items` no longer counts itself row by row: the trigger's upsert of
    // `queue_counts` was ≈ 80 ms of a first scan's 100,000 inserts. Every insert adds its rows
    // to the counts in the same transaction instead (`count_inserted` in store/mod.rs; the
    // scan once per statement of 64 rows). Updates and deletes keep their triggers.
    "DROP TRIGGER queue_counts_insert;",
    // 7: the cellular count per local day (`Store::add_cellular_use`), instead of one
    // (day, bytes) pair in `kv` that any other day zeroed: a time-zone change west and back, or
    // a clock stepped back, gave a day its budget twice. The pair in use is carried over.
    r#"
    CREATE TABLE cellular_use (
        day   INTEGER PRIMARY KEY,
        bytes INTEGER NOT NULL
    );
    INSERT INTO cellular_use (day, bytes)
        SELECT CAST(d.value AS INTEGER), CAST(b.value AS INTEGER)
        FROM kv d JOIN kv b ON d.key = 'cellular.day' AND b.key = 'cellular.bytes';
    DELETE FROM kv WHERE key IN ('cellular.day', 'cellular.bytes');
    "#,
    // 8: a file's identity where its metadata cannot be trusted (issue 23, store/identity.rs).
    // `fingerprint`: the content fingerprint (card.rs) of the bytes an item stands for, set
    // when a decision needed it or its upload started; `card`: the serial of the card it was
    // found on (NULL: unknown), on the item and its history entry; `sent_contents`: every
    // content sent from a path, so bytes seen again under another mtime, or on a card put
    // back after another that reused its names, are never sent twice.
    r#"
    ALTER TABLE items ADD COLUMN fingerprint BLOB;
    ALTER TABLE items ADD COLUMN card TEXT;
    ALTER TABLE history ADD COLUMN card TEXT;
    CREATE TABLE sent_contents (
        storage_path TEXT NOT NULL,
        fingerprint  BLOB NOT NULL,
        PRIMARY KEY (storage_path, fingerprint)
    ) WITHOUT ROWID;
    "#,
    // 9: receipts (issue 28, `free_space_verify = "receipt"`). `sent_digest`: the camera's
    // SHA-256 of the file as far as the server accepted it (`digest::FileDigest`'s saved state
    // at `at` bytes, saved at each accepted chunk so a resume goes on from it), and once every
    // byte is accepted the digest itself; dropped with the item's `sent_chunks`. On the history
    // entry: the digest of the bytes sent, and what the freeing rested on (`freed_on`:
    // `receipt`, `checksum` or `length`).
    r#"
    CREATE TABLE sent_digest (
        item_id INTEGER PRIMARY KEY,
        at      INTEGER NOT NULL,
        state   BLOB    NOT NULL,
        sha256  BLOB
    );
    ALTER TABLE history ADD COLUMN sha256 BLOB;
    ALTER TABLE history ADD COLUMN freed_on TEXT;
    "#,
    // 10: a page of one state's items (`GET /v1/queue?state=failed`) in id order: a seek and
    // the page's rows, where the `(state, next_attempt_at)` index gives no id order and the
    // table's was read until a page was found (185 ms at 1,000,000 done items and no failed
    // one; benches/scale.sh, issue 29).
    "CREATE INDEX items_by_state_id ON items (state, id);",
];
