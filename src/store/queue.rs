//! The queue: one row per file version, its state (`pending → uploading → done`, or
//! `failed`, `skipped`, `cancelled`), attempts, the next attempt's time, and the tus upload URL
//! and offset; the picks of the scheduler and the counts of the status.
//!
//! Invariant: every state change is one statement or one transaction; the "never twice"
//! writes (an upload URL stored, an upload done, a cancel) are durable and in the ledger; a
//! done version is never queued again.

use rusqlite::{params, Connection, OptionalExtension};

use super::*;

impl Store {
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

    pub(super) fn set_checkpoint_pages(&self, pages: i64) {
        // Only a pace: if it cannot be set, checkpoints keep the pace they had.
        if let Err(e) = self.conn().pragma_update(None, "wal_autocheckpoint", pages) {
            tracing::warn!(error = %e, pages, "cannot set the checkpoint interval");
        }
    }

    /// The identities of the open items (pending, uploading, failed): the ones a scan looks
    /// for on the card.
    /// A seek in the state index: a card whose files are all sent costs nothing here.
    pub fn for_each_open_identity(&self, f: impl FnMut(Identity<'_>)) -> Result<()> {
        self.identities("WHERE state IN ('pending', 'uploading', 'failed')", [], f)
    }

    /// The lowest and highest ids of the open items (`None`: none is open), and how many are
    /// open: seeks in `items_by_state_id` and the kept counts, for the scan to size the set of
    /// their ids before reading them in the state index's order.
    pub fn open_id_span(&self) -> Result<(Option<(i64, i64)>, usize)> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT min(lo), max(hi), (SELECT COALESCE(sum(n), 0) FROM queue_counts
                                            WHERE state IN ('pending', 'uploading', 'failed'))
                 FROM (SELECT (SELECT id FROM items WHERE state = s ORDER BY id LIMIT 1) AS lo,
                              (SELECT id FROM items WHERE state = s ORDER BY id DESC LIMIT 1) AS hi
                       FROM (SELECT 'pending' AS s UNION ALL SELECT 'uploading' UNION ALL SELECT 'failed'))",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_row([], |r| {
            let lo: Option<i64> = r.get(0)?;
            let hi: Option<i64> = r.get(1)?;
            let n: i64 = r.get(2)?;
            Ok((lo.zip(hi), usize::try_from(n).unwrap_or(0)))
        })
        .map_err(|e| self.err(e))
    }

    /// The identities of the items in the directory `dir` (`None`: the media root), not in its
    /// subdirectories, for the scan to tell known files from new ones without a database
    /// write: a range of the path index, so a scan holds one directory's rows at a
    /// time, never the whole queue's (issue 29). A directory's range holds its subdirectories'
    /// rows too, which are read and passed over: cheap for a camera's folders, which have none.
    pub fn for_each_identity_in(
        &self,
        dir: Option<&StoragePath>,
        mut f: impl FnMut(Identity<'_>),
    ) -> Result<()> {
        let Some(dir) = dir else {
            return self.identities("", [], |it| {
                if !it.path.contains('/') {
                    f(it)
                }
            });
        };
        // Paths under `dir/` sort between `dir/` and `dir0` ('0' follows '/'), bytewise.
        let (from, to) = (format!("{}/", dir.as_str()), format!("{}0", dir.as_str()));
        self.identities(
            "WHERE storage_path >= ?4 AND storage_path < ?5",
            [from.as_str(), to.as_str()],
            |it| {
                if it
                    .path
                    .get(from.len()..)
                    .is_some_and(|name| !name.contains('/'))
                {
                    f(it)
                }
            },
        )
    }

    fn identities<const N: usize>(
        &self,
        filter: &str,
        range: [&str; N],
        mut f: impl FnMut(Identity<'_>),
    ) -> Result<()> {
        // The writer's connection, as the scan's writes: the reader's serves the API, which
        // must not wait for a scan reading a folder's rows.
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT id, storage_path, size, mtime_ns,
                   state IN ('pending', 'uploading', 'failed'),
                   COALESCE(state = 'skipped' AND last_error IN (?1, ?2, ?3), 0),
                   state = 'done', fingerprint IS NOT NULL, card
                 FROM items {filter}"
            ))
            .map_err(|e| self.err(e))?;
        let reasons = [REASON_DELETED, REASON_REPLACED, REASON_WAITING_FOR_CARD];
        let mut rows = stmt
            .query(rusqlite::params_from_iter(
                reasons.iter().chain(range.iter()),
            ))
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

    /// The item that speaks for the file at `path` (`GET /v1/files`): the one of its version
    /// `(size, mtime_ns)` where that is given and queued, else the newest; with when it was
    /// freed (deleted from the card to free space). A few rows at most: the unique index
    /// starts with the path.
    pub fn item_for_path(
        &self,
        path: &StoragePath,
        version: Option<(u64, i64)>,
    ) -> Result<Option<(Item, Option<i64>)>> {
        let (size, mtime_ns) = version.map_or((-1, 0), |(s, m)| (s as i64, m));
        self.reader()
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}, freed_at FROM items WHERE storage_path = ?1
                 ORDER BY (size = ?2 AND mtime_ns = ?3) DESC, id DESC LIMIT 1"
            ))
            .and_then(|mut st| {
                st.query_row(params![path.as_str(), size, mtime_ns], |r| {
                    Ok((read_item(r)?, r.get::<_, Option<i64>>(19)?))
                })
                .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Lists items, optionally of one state, in id order after `after`.
    pub fn list(&self, state: Option<ItemState>, limit: u32, after: i64) -> Result<Vec<Item>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&list_sql(state.is_some()))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![state.map(|s| s.as_str()), after, limit], read_item)
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// Open items (pending, uploading, failed), whole: for tests only, as at 1,000,000 items
    /// this is hundreds of MiB (the scan keeps their ids only, `scan::IdSet`).
    #[cfg(test)]
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
            tx.execute("DELETE FROM sent_digest WHERE item_id = ?1", [id])?;
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
        self.exec("DELETE FROM sent_digest WHERE item_id = ?1", params![id])?;
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
                    "INSERT INTO history (storage_path, size, completed_at, card, sha256)
                     SELECT i.storage_path, i.size, ?2, i.card, d.sha256 FROM items i
                     LEFT JOIN sent_digest d ON d.item_id = i.id WHERE i.id = ?1",
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

    /// Marks many items skipped with one reason, in one transaction (the scan's drops).
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
}

/// The result of a manual upload request for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualOutcome {
    Queued(i64),
    AlreadyUploaded(i64),
}

pub(super) const ITEM_COLUMNS: &str =
    "id, storage_path, kind, size, mtime_ns, state, manual, bytes_sent, \
    attempts, next_attempt_at, last_error, upload_url, upload_expires_at, creations, queued_at, \
    completed_at, upload_endpoint, fingerprint, card";

/// A page of the queue (`?1`: the state, `?2`: after this id, `?3`: how many). Two statements,
/// not `?1 IS NULL OR state = ?1`, which no index can serve: a page of one state is a seek in
/// `items_by_state_id`, whatever the rest of the queue holds.
pub(super) fn list_sql(one_state: bool) -> String {
    let filter = if one_state { "state = ?1 AND" } else { "" };
    format!("SELECT {ITEM_COLUMNS} FROM items WHERE {filter} id > ?2 ORDER BY id LIMIT ?3")
}

pub(super) fn read_item(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
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

pub(super) fn pick_sql(
    pick: &Pick<'_>,
    select: String,
    tail: &str,
) -> (String, Vec<rusqlite::types::Value>) {
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
pub(super) const CHECKPOINT_PAGES: i64 = 256;

/// WAL pages between checkpoints while a scan writes its batches (16 MiB): each checkpoint
/// costs two `fsync`s and rewrites the pages every batch touches again, so a first scan of
/// 100,000 files made twenty of them at 1 MiB.
pub(super) const SCAN_CHECKPOINT_PAGES: i64 = 4096;

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
pub(super) const RECOUNT: &str = "DELETE FROM queue_counts;
    INSERT INTO queue_counts (state, n, size, sent)
        SELECT state, COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(bytes_sent), 0)
        FROM items GROUP BY state;";

/// A version seen again after it was dropped as deleted, replaced or waiting for its card is
/// queued again (`?1..?3`: its identity; `?4`: the card it is on now, if known).
pub(super) const REVIVE: &str =
    "UPDATE items SET state = 'pending', last_error = NULL, next_attempt_at = 0,
       card = COALESCE(?4, card)
     WHERE storage_path = ?1 AND size = ?2 AND mtime_ns = ?3 AND state = 'skipped'
       AND last_error IN ('file deleted before upload', 'replaced by a newer version of the file',
                          'waiting_for_card')";

/// A new version at a path (`?1`, item `?2`, found on card `?3`) sets the older open items
/// there aside: replaced, unless they came from another card (both known), which they wait for.
/// One that waited for this very card is replaced too: its card is back with another version.
pub(super) const SUPERSEDE: &str = "UPDATE items SET state = 'skipped',
       last_error = CASE WHEN card IS NOT NULL AND ?3 IS NOT NULL AND card != ?3
                         THEN 'waiting_for_card'
                         ELSE 'replaced by a newer version of the file' END
     WHERE storage_path = ?1 AND id < ?2
       AND (state IN ('pending', 'failed')
            OR (state = 'skipped' AND last_error = 'waiting_for_card' AND card = ?3))";

/// Rows per `INSERT` statement when the scan queues new files.
pub(super) const INSERT_ROWS: usize = 64;

/// `INSERT OR IGNORE` of `rows` new items, six parameters each (path, kind, size, mtime,
/// queued at, card), returning the size of each row inserted (for [`count_inserted`]).
pub(super) fn insert_rows_sql(rows: usize) -> String {
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
