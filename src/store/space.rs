//! What the store keeps for freeing space (migration 5): the digests of what was sent, the
//! completed upload's URL, and which files were freed.
//!
//! Invariants: a chunk is recorded only after the server accepted all of it, and a recorded
//! chunk replaces every row that reaches past its start, so rows never overlap and a gap (a
//! chunk whose digest was lost to a crash, a PATCH the server took only in part) stays a gap:
//! the upload is then not verified, never wrongly verified. A new or forgotten server upload
//! drops the item's rows (`set_upload_url`, `clear_upload_url`). A freed item stays `done`, so
//! no scan queues it again and no reconcile reports it deleted before upload.

use rusqlite::params;

use super::{read_item, Fact, Item, Result, Store, ITEM_COLUMNS};
use crate::clock::now_unix;

/// One accepted PATCH, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentChunk {
    pub start: u64,
    pub len: u64,
    /// SHA-1 of the bytes as they went out.
    pub sha1: [u8; 20],
    /// The server checked them against an `Upload-Checksum` it accepted.
    pub checksum: bool,
    /// The inode they were read from.
    pub ino: u64,
}

/// What the rows of one item add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SentSummary {
    pub chunks: u64,
    /// Sum of the rows' lengths.
    pub bytes: u64,
    /// Where the last row ends.
    pub end: u64,
    /// Every row went with an accepted `Upload-Checksum`.
    pub all_checksummed: bool,
    /// The inode every row was read from; `None` when they differ or there are none.
    pub ino: Option<u64>,
}

impl SentSummary {
    /// The rows tile `[0, size)`: every byte of the upload has a digest of what was sent.
    pub fn covers(&self, size: u64) -> bool {
        self.chunks > 0 && self.bytes == size && self.end == size
    }
}

/// The camera's SHA-256 of a file as far as the server accepted it (`free_space_verify =
/// "receipt"`): the state of `digest::FileDigest` after `at` bytes, and the digest once every
/// byte was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentDigest {
    pub at: u64,
    pub state: Vec<u8>,
    pub sha256: Option<[u8; 32]>,
}

/// A done item that may be freed, with what the store knows of its upload.
#[derive(Debug, Clone)]
pub struct FreeCandidate {
    pub item: Item,
    /// The completed upload's URL (for the HEAD just before deletion).
    pub done_url: String,
    pub sent: SentSummary,
    /// The camera's SHA-256 of the whole file, where it was computed as it was sent.
    pub sha256: Option<[u8; 32]>,
}

impl Store {
    /// Saves the camera's digest of item `id` as far as the server accepted it (at each
    /// accepted chunk, so a resume after a restart goes on from here).
    pub fn record_sent_digest(&self, id: i64, d: &SentDigest) -> Result<()> {
        self.exec(
            "INSERT INTO sent_digest (item_id, at, state, sha256) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (item_id) DO UPDATE SET at = excluded.at, state = excluded.state,
               sha256 = excluded.sha256",
            params![id, d.at as i64, &d.state, d.sha256.as_ref().map(|h| &h[..])],
        )
    }

    /// The saved digest of item `id`, if any.
    pub fn sent_digest(&self, id: i64) -> Result<Option<SentDigest>> {
        use rusqlite::OptionalExtension as _;
        self.conn()
            .query_row(
                "SELECT at, state, sha256 FROM sent_digest WHERE item_id = ?1",
                [id],
                |r| {
                    let sha256: Option<Vec<u8>> = r.get(2)?;
                    Ok(SentDigest {
                        at: r.get::<_, i64>(0)? as u64,
                        state: r.get(1)?,
                        sha256: sha256.and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok()),
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The server's receipt for item `id` (whose file is at `path`) differed from the camera's
    /// digest: noted until a later receipt matches ([`Store::clear_digest_mismatch`]), for
    /// `attention`'s `server_digest_mismatch`.
    pub fn note_digest_mismatch(&self, id: i64, path: &str) -> Result<()> {
        self.set_kv(&format!("{MISMATCH_PREFIX}{id}"), Some(path))
    }

    /// A receipt for item `id` matched: its mismatch, if one was noted, is over.
    pub fn clear_digest_mismatch(&self, id: i64) -> Result<()> {
        self.set_kv(&format!("{MISMATCH_PREFIX}{id}"), None)
    }

    /// The items (and their files' paths) whose receipt differed and has not matched since.
    pub fn digest_mismatches(&self) -> Result<Vec<(i64, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT key, value FROM kv WHERE key LIKE 'space.mismatch.%' ORDER BY key",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, path) = row.map_err(|e| self.err(e))?;
            if let Some(id) = key
                .strip_prefix(MISMATCH_PREFIX)
                .and_then(|k| k.parse().ok())
            {
                out.push((id, path));
            }
        }
        Ok(out)
    }

    /// Records a chunk the server accepted whole. Rows reaching past its start are dropped
    /// first: the server's upload no longer holds what they describe beyond this point.
    pub fn record_sent_chunk(&self, id: i64, c: &SentChunk) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "DELETE FROM sent_chunks WHERE item_id = ?1 AND start + len > ?2",
                params![id, c.start as i64],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO sent_chunks (item_id, start, len, sha1, checksum, ino)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id,
                    c.start as i64,
                    c.len as i64,
                    &c.sha1[..],
                    c.checksum,
                    c.ino as i64
                ],
            )?;
            Ok(())
        })
    }

    /// The rows of one item, in offset order (the read-back compares the card with them).
    pub fn sent_chunks(&self, id: i64) -> Result<Vec<SentChunk>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT start, len, sha1, checksum, ino FROM sent_chunks
                 WHERE item_id = ?1 ORDER BY start",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([id], |r| {
                let digest: Vec<u8> = r.get(2)?;
                let mut sha1 = [0u8; 20];
                // A row of another length cannot match any read-back: all zeros never does.
                if digest.len() == 20 {
                    sha1.copy_from_slice(&digest);
                }
                Ok(SentChunk {
                    start: r.get::<_, i64>(0)? as u64,
                    len: r.get::<_, i64>(1)? as u64,
                    sha1,
                    checksum: r.get(3)?,
                    ino: r.get::<_, i64>(4)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// Done items not freed yet whose upload URL is known, oldest capture first, with a
    /// summary of what was sent: every one, for tests ([`Store::free_candidates_after`] pages).
    #[cfg(test)]
    pub fn free_candidates(&self) -> Result<Vec<FreeCandidate>> {
        let mut all: Vec<FreeCandidate> = Vec::new();
        loop {
            let after = all.last().map(|c| (c.item.mtime_ns, c.item.id));
            let page = self.free_candidates_after(after, 2)?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// A page of the done items not freed yet whose upload URL is known, oldest capture first
    /// (modification time, then id), from after `after` (the last one of the page before):
    /// seeks in `items_freeable` (migration 5: capture time, then id as the rowid) and `limit` rows, so freeing holds a page, never the whole
    /// card's backed-up files (1.3 KiB each as the pass held them; issue 29).
    pub fn free_candidates_after(
        &self,
        after: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<Vec<FreeCandidate>> {
        // Seeks only. Past (m, i): the rest of time m after id i, then what follows m; a row
        // value `(mtime_ns, id) > (m, i)` seeks on m alone and walks the rows of time m from
        // the first, which on a card of one time (a camera without a clock) made the pages
        // quadratic (170 s for 1,000,000 files).
        let page = free_page_sql(after.is_some());
        let conn = self.conn();
        let cols: String = ITEM_COLUMNS
            .split(", ")
            .map(|c| format!("i.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {cols}, i.done_url, COUNT(c.start), COALESCE(SUM(c.len), 0),
                   COALESCE(MAX(c.start + c.len), 0), COALESCE(MIN(c.checksum), 0),
                   MIN(c.ino), MAX(c.ino),
                   (SELECT d.sha256 FROM sent_digest d WHERE d.item_id = i.id)
                 FROM ({page}) AS p
                 JOIN items i ON i.id = p.id
                 LEFT JOIN sent_chunks c ON c.item_id = i.id
                 GROUP BY i.id ORDER BY i.mtime_ns, i.id"
            ))
            .map_err(|e| self.err(e))?;
        let (mtime, id) = (after.map(|a| a.0), after.map_or(0, |a| a.1));
        let rows = stmt
            .query_map(params![mtime, id, limit as i64], |r| {
                let item = read_item(r)?;
                let n = ITEM_COLUMNS.split(", ").count();
                let chunks = r.get::<_, i64>(n + 1)? as u64;
                let (lo, hi): (Option<i64>, Option<i64>) = (r.get(n + 5)?, r.get(n + 6)?);
                let sha256: Option<Vec<u8>> = r.get(n + 7)?;
                Ok(FreeCandidate {
                    sha256: sha256.and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok()),
                    done_url: r.get(n)?,
                    sent: SentSummary {
                        chunks,
                        bytes: r.get::<_, i64>(n + 2)? as u64,
                        end: r.get::<_, i64>(n + 3)? as u64,
                        all_checksummed: chunks > 0 && r.get::<_, bool>(n + 4)?,
                        ino: match (lo, hi) {
                            (Some(a), Some(b)) if a == b => Some(a as u64),
                            _ => None,
                        },
                    },
                    item,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// The file of a done item was deleted to free space: recorded on the item and its history
    /// entry, durably (a freed file must never look like one deleted before upload).
    pub fn mark_freed(&self, id: i64, freed_on: &str) -> Result<i64> {
        let now = now_unix();
        self.durable(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE items SET freed_at = ?2 WHERE id = ?1 AND state = 'done'",
                params![id, now],
            )?;
            tx.execute(
                "UPDATE history SET freed_at = ?2, freed_on = ?3 WHERE id = (
                   SELECT h.id FROM history h JOIN items i
                     ON h.storage_path = i.storage_path AND h.size = i.size
                        AND h.completed_at = i.completed_at
                   WHERE i.id = ?1 ORDER BY h.id DESC LIMIT 1)",
                params![id, now, freed_on],
            )?;
            tx.execute("DELETE FROM sent_chunks WHERE item_id = ?1", [id])?;
            tx.execute("DELETE FROM sent_digest WHERE item_id = ?1", [id])?;
            tx.execute(
                "DELETE FROM kv WHERE key = ?1",
                [format!("{MISMATCH_PREFIX}{id}")],
            )?;
            tx.execute("DELETE FROM kv WHERE key = ?1", [freeing_key(id)])?;
            tx.commit()
        })?;
        Ok(now)
    }

    /// Just before a backed-up file is deleted to free space: a durable note that it is about
    /// to go, and which inode the rules freed. A power cut between the deletion and
    /// [`Store::mark_freed`] would otherwise leave the file gone and its record missing; the
    /// next pass settles each note ([`Store::freeing_notes`]).
    pub fn note_freeing(&self, id: i64, ino: u64) -> Result<()> {
        self.durable(|conn| {
            conn.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![freeing_key(id), ino.to_string()],
            )
            .map(drop)
        })
    }

    /// The deletions noted and not yet recorded or forgotten: item ids and the inodes noted.
    pub fn freeing_notes(&self) -> Result<Vec<(i64, u64)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT key, value FROM kv WHERE key LIKE 'space.freeing.%'")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut notes = Vec::new();
        let mut bad = Vec::new();
        for row in rows {
            let (key, value) = row.map_err(|e| self.err(e))?;
            let id = key
                .strip_prefix(FREEING_PREFIX)
                .and_then(|k| k.parse().ok());
            match (id, value.parse()) {
                (Some(id), Ok(ino)) => notes.push((id, ino)),
                // Never written by this code: dropped rather than kept forever.
                _ => bad.push(key),
            }
        }
        // Through the same connection: the store's lock is held here, and taking it again
        // (`set_kv`) would wait for itself.
        drop(stmt);
        for key in bad {
            conn.execute("DELETE FROM kv WHERE key = ?1", [&key])
                .map_err(|e| self.err(e))?;
        }
        Ok(notes)
    }

    /// A noted deletion that did not happen (it failed, or the file is still there).
    pub fn forget_freeing(&self, id: i64) -> Result<()> {
        self.set_kv(&freeing_key(id), None)
    }

    /// The server no longer has a done item's upload (404/410 on its HEAD): it is queued again,
    /// from the start, and nothing of the lost upload is kept. Returns whether it was.
    ///
    /// Once per version: a server that loses a file again after it was sent again (one whose
    /// post-finish hook moves or ends completed uploads, say) would otherwise have the card
    /// sent to it over and over; the file is then kept on the card and not sent a third time.
    pub fn requeue_lost(&self, id: i64) -> Result<bool> {
        self.requeue_done(
            id,
            "the server no longer has the completed upload: sending it again",
        )
    }

    /// A done item whose upload cannot be trusted (lost by the server, or its receipt differs
    /// from the camera's digest) is queued again from the start, `why` its last error; once
    /// per version, whatever the reason, as [`Store::requeue_lost`] says.
    pub fn requeue_done(&self, id: i64, why: &str) -> Result<bool> {
        self.durable(|conn| {
            let tx = conn.transaction()?;
            let marker = format!("space.requeued.{id}");
            let before: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM kv WHERE key = ?1)",
                [&marker],
                |r| r.get(0),
            )?;
            if before {
                return Ok(false);
            }
            let n = tx.execute(
                "UPDATE items SET state = 'pending', done_url = NULL, completed_at = NULL,
                   bytes_sent = 0, attempts = 0, next_attempt_at = 0, upload_url = NULL,
                   upload_expires_at = NULL, last_error = ?2
                 WHERE id = ?1 AND state = 'done' AND freed_at IS NULL",
                params![id, why],
            )?;
            tx.execute("DELETE FROM sent_chunks WHERE item_id = ?1", [id])?;
            tx.execute("DELETE FROM sent_digest WHERE item_id = ?1", [id])?;
            if n == 1 {
                tx.execute("INSERT INTO kv (key, value) VALUES (?1, '1')", [&marker])?;
            }
            tx.commit()?;
            Ok(n == 1)
        })
        .inspect(|requeued| {
            // A database rebuilt from the ledger must not take it for done again.
            if *requeued {
                self.note_in_ledger(id, Fact::Requeued);
            }
        })
    }

    /// Items freed so far, newest first (for `GET /v1/space`).
    pub fn freed(&self, limit: u32) -> Result<Vec<(Item, i64)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}, freed_at FROM items WHERE freed_at IS NOT NULL
                 ORDER BY freed_at DESC, id DESC LIMIT ?1"
            ))
            .map_err(|e| self.err(e))?;
        let n = ITEM_COLUMNS.split(", ").count();
        let rows = stmt
            .query_map([limit], |r| Ok((read_item(r)?, r.get(n)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }
}

const FREEING_PREFIX: &str = "space.freeing.";
/// A receipt that differed, per item (`space.mismatch.ID` = the file's storage path).
const MISMATCH_PREFIX: &str = "space.mismatch.";

/// The ids of a page of freeing's candidates ([`Store::free_candidates_after`]): `?1`, `?2`
/// the last one's time and id (`past`; NULL and 0 for the first page), `?3` the page's size.
fn free_page_sql(past: bool) -> String {
    const FREEABLE: &str = "FROM items INDEXED BY items_freeable
        WHERE state = 'done' AND freed_at IS NULL AND done_url IS NOT NULL";
    if past {
        format!(
            "SELECT id, mtime_ns FROM (SELECT id, mtime_ns {FREEABLE}
               AND mtime_ns = ?1 AND id > ?2 ORDER BY id LIMIT ?3)
             UNION ALL
             SELECT id, mtime_ns FROM (SELECT id, mtime_ns {FREEABLE}
               AND mtime_ns > ?1 ORDER BY mtime_ns, id LIMIT ?3)
             ORDER BY 2, 1 LIMIT ?3"
        )
    } else {
        format!("SELECT id {FREEABLE} AND ?1 IS NULL AND ?2 = 0 ORDER BY mtime_ns, id LIMIT ?3")
    }
}

fn freeing_key(id: i64) -> String {
    format!("{FREEING_PREFIX}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Kind, StoragePath};
    use crate::store::{FoundFile, ItemState};

    fn done_item(s: &Store, name: &str, size: u64) -> i64 {
        let f = FoundFile {
            path: StoragePath::from_stored(name.into()),
            kind: Kind::Photo,
            size,
            mtime_ns: 1,
        };
        s.upsert_files(&[f]).unwrap();
        let id = s.max_item_id().unwrap();
        assert!(s.mark_uploading(id).unwrap());
        s.set_upload_url(
            id,
            "http://127.0.0.1:1/files/a",
            None,
            "http://127.0.0.1:1/files/",
        )
        .unwrap();
        id
    }

    #[test]
    fn freeing_candidates_come_oldest_first_a_page_at_a_time_by_a_seek() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // Captured in another order than queued; two at the same time (then by id); one
        // freed, one still open: neither is a candidate.
        let mut ids = Vec::new();
        for (name, mtime) in [
            ("A", 50),
            ("B", 10),
            ("C", 30),
            ("D", 30),
            ("E", 20),
            ("F", 5),
        ] {
            let f = FoundFile {
                path: StoragePath::from_stored(format!("DCIM/{name}.JPG")),
                kind: Kind::Photo,
                size: 10,
                mtime_ns: mtime,
            };
            s.upsert_files(&[f]).unwrap();
            let id = s.max_item_id().unwrap();
            ids.push((name, id));
            if name == "F" {
                continue;
            }
            assert!(s.mark_uploading(id).unwrap());
            s.set_upload_url(
                id,
                &format!("http://127.0.0.1:1/files/{name}"),
                None,
                "http://127.0.0.1:1/files/",
            )
            .unwrap();
            s.mark_done(id).unwrap();
        }
        let id = |n| ids.iter().find(|(m, _)| *m == n).unwrap().1;
        s.mark_freed(id("E"), "length").unwrap();
        let names = |page: &[FreeCandidate]| -> Vec<String> {
            page.iter()
                .map(|c| c.item.storage_path.as_str()[5..6].to_string())
                .collect()
        };
        let first = s.free_candidates_after(None, 2).unwrap();
        assert_eq!(names(&first), ["B", "C"]);
        let last = first.last().map(|c| (c.item.mtime_ns, c.item.id));
        let second = s.free_candidates_after(last, 2).unwrap();
        assert_eq!(names(&second), ["D", "A"]);
        let last = second.last().map(|c| (c.item.mtime_ns, c.item.id));
        assert!(s.free_candidates_after(last, 2).unwrap().is_empty());
        assert_eq!(names(&s.free_candidates().unwrap()), ["B", "C", "D", "A"]);
        // Many files of one time (a camera without a clock): pages go on past the first.
        for n in 0..7 {
            let f = FoundFile {
                path: StoragePath::from_stored(format!("DCIM/SAME{n}.JPG")),
                kind: Kind::Photo,
                size: 10,
                mtime_ns: 40,
            };
            s.upsert_files(&[f]).unwrap();
            let id = s.max_item_id().unwrap();
            assert!(s.mark_uploading(id).unwrap());
            let (url, ep) = ("http://127.0.0.1:1/files/s", "http://127.0.0.1:1/files/");
            s.set_upload_url(id, url, None, ep).unwrap();
            s.mark_done(id).unwrap();
        }
        let all = s.free_candidates().unwrap();
        let times: Vec<i64> = all.iter().map(|c| c.item.mtime_ns).collect();
        assert_eq!(times, [10, 30, 30, 40, 40, 40, 40, 40, 40, 40, 50]);
        let keys: Vec<(i64, i64)> = all.iter().map(|c| (c.item.mtime_ns, c.item.id)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        // Each page is seeks in the partial index, never a walk of a time's rows from the
        // first (which made a card of one time quadratic): the seek names the id too.
        let conn = s.conn();
        let mut plan = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", free_page_sql(true)))
            .unwrap();
        let plan: Vec<String> = plan
            .query_map(params![40, keys[4].1, 2], |r| r.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let seeks: Vec<&String> = plan
            .iter()
            .filter(|p| p.contains("items_freeable"))
            .collect();
        assert_eq!(seeks.len(), 2, "{plan:?}");
        assert!(seeks[0].contains("mtime_ns=? AND rowid>?"), "{plan:?}");
        assert!(seeks[1].contains("mtime_ns>?"), "{plan:?}");
    }

    #[test]
    fn freeing_notes_round_trip_and_a_note_this_release_cannot_read_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = done_item(&s, "DCIM/A.JPG", 30);
        s.note_freeing(id, 77).unwrap();
        s.set_kv("space.freeing.x", Some("1")).unwrap();
        s.set_kv("space.freeing.9", Some("not an inode")).unwrap();
        assert_eq!(s.freeing_notes().unwrap(), vec![(id, 77)]);
        assert_eq!(s.get_kv("space.freeing.x").unwrap(), None);
        assert_eq!(s.get_kv("space.freeing.9").unwrap(), None);
        s.forget_freeing(id).unwrap();
        assert!(s.freeing_notes().unwrap().is_empty());
    }

    fn chunk(start: u64, len: u64, checksum: bool) -> SentChunk {
        SentChunk {
            start,
            len,
            sha1: [start as u8; 20],
            checksum,
            ino: 7,
        }
    }

    #[test]
    fn chunks_tile_the_file_only_without_gaps_and_a_new_upload_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = done_item(&s, "DCIM/A.JPG", 30);
        s.record_sent_chunk(id, &chunk(0, 10, true)).unwrap();
        s.record_sent_chunk(id, &chunk(20, 10, true)).unwrap();
        s.mark_done(id).unwrap();
        let c = &s.free_candidates().unwrap()[0];
        assert_eq!(c.done_url, "http://127.0.0.1:1/files/a");
        assert!(!c.sent.covers(30), "a gap at 10..20: {:?}", c.sent);

        // A resend from 5 replaces what reached past it: 0..10 goes, the gap stays a gap.
        s.record_sent_chunk(id, &chunk(5, 25, true)).unwrap();
        let c = &s.free_candidates().unwrap()[0];
        assert!(!c.sent.covers(30), "{:?}", c.sent);
        // A resend from 0 starts over: 5..30 goes too, and comes again after it.
        s.record_sent_chunk(id, &chunk(0, 5, false)).unwrap();
        assert_eq!(s.sent_chunks(id).unwrap().len(), 1);
        s.record_sent_chunk(id, &chunk(5, 25, true)).unwrap();
        let c = &s.free_candidates().unwrap()[0];
        assert!(c.sent.covers(30), "{:?}", c.sent);
        assert!(!c.sent.all_checksummed, "0..5 went without a checksum");
        assert_eq!(c.sent.ino, Some(7));
        assert_eq!(s.sent_chunks(id).unwrap().len(), 2);

        s.set_upload_url(id, "http://127.0.0.1:1/files/b", None, "x")
            .unwrap();
        assert!(s.sent_chunks(id).unwrap().is_empty());
    }

    #[test]
    fn a_freed_item_stays_done_is_never_requeued_and_its_history_says_when() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = done_item(&s, "DCIM/A.JPG", 30);
        s.mark_done(id).unwrap();
        let at = s.mark_freed(id, "length").unwrap();
        let it = s.item(id).unwrap().unwrap();
        assert_eq!(it.state, ItemState::Done);
        assert!(s.free_candidates().unwrap().is_empty());
        assert_eq!(s.history(10).unwrap()[0].freed_at, Some(at));
        assert_eq!(
            s.history(10).unwrap()[0].freed_on.as_deref(),
            Some("length")
        );
        // The watcher's "deleted" and a scan's re-find leave it alone.
        assert_eq!(s.skip_deleted(&it.storage_path).unwrap(), 0);
        let again = FoundFile {
            path: it.storage_path.clone(),
            kind: Kind::Photo,
            size: 30,
            mtime_ns: 1,
        };
        assert_eq!(s.upsert_files(&[again]).unwrap(), 0);
        assert!(
            !s.requeue_lost(id).unwrap(),
            "a freed file cannot be sent again"
        );
        assert!(s.open_items().unwrap().is_empty());
        assert_eq!(s.freed(10).unwrap()[0].1, at);
    }

    #[test]
    fn a_done_upload_the_server_lost_is_queued_again_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = done_item(&s, "DCIM/A.JPG", 30);
        s.record_sent_chunk(id, &chunk(0, 30, true)).unwrap();
        s.mark_done(id).unwrap();
        assert!(s.requeue_lost(id).unwrap());
        let it = s.item(id).unwrap().unwrap();
        assert_eq!((it.state, it.bytes_sent), (ItemState::Pending, 0));
        assert!(it.upload_url.is_none());
        assert!(s.sent_chunks(id).unwrap().is_empty());
        assert!(s.free_candidates().unwrap().is_empty());
        // The ledger says so too: a rebuilt database does not take it for done.
        let (known, _) = crate::store::ledger::replay(dir.path());
        assert!(known.values().all(|k| !k.done), "{known:?}");

        // Sent again and lost again: kept, not sent a third time.
        s.mark_uploading(id).unwrap();
        s.mark_done(id).unwrap();
        assert!(!s.requeue_lost(id).unwrap(), "a version is sent again once");
        assert_eq!(s.item(id).unwrap().unwrap().state, ItemState::Done);
    }

    #[test]
    fn the_digest_state_is_kept_per_accepted_chunk_reaches_the_history_and_goes_with_the_upload() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = done_item(&s, "DCIM/A.JPG", 30);
        let data = [7u8; 30];
        // Two chunks accepted, the state saved at each; a restart reads the last one back.
        let mut h = crate::digest::FileDigest::default();
        h.update(&data[..13]);
        let save = |h: &crate::digest::FileDigest, whole: bool| {
            s.record_sent_digest(
                id,
                &SentDigest {
                    at: h.len(),
                    state: h.to_bytes(),
                    sha256: whole.then(|| h.finish()),
                },
            )
            .unwrap()
        };
        save(&h, false);
        let back = s.sent_digest(id).unwrap().unwrap();
        assert_eq!(back.at, 13);
        let mut resumed = crate::digest::FileDigest::from_bytes(&back.state).unwrap();
        resumed.update(&data[13..]);
        save(&resumed, true);
        let want = <[u8; 32]>::from(sha2::Sha256::digest(data));
        assert_eq!(s.sent_digest(id).unwrap().unwrap().sha256, Some(want));
        s.mark_done(id).unwrap();
        assert_eq!(s.free_candidates().unwrap()[0].sha256, Some(want));
        let sha: Vec<u8> = s
            .conn()
            .query_row("SELECT sha256 FROM history", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            sha,
            want.to_vec(),
            "the history keeps the digest of the bytes sent"
        );

        // A mismatch is noted until a receipt matches; sending again drops the digest.
        s.note_digest_mismatch(id, "DCIM/A.JPG").unwrap();
        assert_eq!(
            s.digest_mismatches().unwrap(),
            vec![(id, "DCIM/A.JPG".to_string())]
        );
        assert!(s.requeue_done(id, "the receipt differs").unwrap());
        assert_eq!(s.sent_digest(id).unwrap(), None);
        assert_eq!(s.digest_mismatches().unwrap().len(), 1);
        s.clear_digest_mismatch(id).unwrap();
        assert!(s.digest_mismatches().unwrap().is_empty());
    }

    #[test]
    fn unpairing_forgets_the_completed_uploads_urls() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = done_item(&s, "DCIM/A.JPG", 30);
        s.mark_done(id).unwrap();
        assert_eq!(s.free_candidates().unwrap().len(), 1);
        s.erase_account_data().unwrap();
        assert!(s.free_candidates().unwrap().is_empty());
    }
}
