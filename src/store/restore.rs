//! The ledger's side of the database: the facts noted in it as they happen, its compaction,
//! and the rebuild of a lost or corrupt database from it (never with consent turned on).

use std::path::Path;

use super::*;

impl Store {
    /// Refills a rebuilt database from the ledger: done versions as done (never sent again),
    /// unfinished uploads as pending with their URL (resumed after a `HEAD`).
    pub(super) fn restore_from_ledger(&self) -> Result<()> {
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
    pub(super) fn compact_ledger_if_large(&self) -> Result<()> {
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
    pub(super) fn rewrite_ledger(&self) -> Result<()> {
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
    pub(super) fn note_in_ledger(&self, id: i64, fact: Fact<'_>) {
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
}

/// A fact the ledger records about an item.
pub(super) enum Fact<'a> {
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

pub(super) fn count_lines(path: &Path) -> usize {
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
