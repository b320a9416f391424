//! The history of completed uploads, and the erasure of an account's data at unpairing.

use super::*;

impl Store {
    /// Completed uploads, newest first.
    pub fn history(&self, limit: u32) -> Result<Vec<HistoryEntry>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT storage_path, size, completed_at, freed_at, card, freed_on FROM history
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
                    freed_on: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// The whole history in figures, however long it is (one aggregate query: nothing is
    /// loaded row by row).
    pub fn history_summary(&self) -> Result<HistorySummary> {
        self.reader()
            .query_row(
                "SELECT count(*), coalesce(sum(size), 0), count(freed_at), min(completed_at),
                        max(completed_at)
                 FROM history",
                [],
                |r| {
                    Ok(HistorySummary {
                        uploads: r.get::<_, i64>(0)? as u64,
                        bytes: r.get::<_, i64>(1)? as u64,
                        freed: r.get::<_, i64>(2)? as u64,
                        first_completed_at: r.get(3)?,
                        last_completed_at: r.get(4)?,
                    })
                },
            )
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
            tx.execute("DELETE FROM sent_digest", [])?;
            tx.execute("DELETE FROM kv WHERE key LIKE 'space.mismatch.%'", [])?;
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
}
