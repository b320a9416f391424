//! A file's identity where its metadata cannot be trusted (migration 8, issue 23).
//!
//! A queue item is one (path, size, mtime). On FAT and exFAT that triple can lie both ways: a
//! reformatted card, or a second card of a camera without a clock, reuses names, sizes and the
//! 1980 floor stamp for other bytes; and a card mounted with another time zone, or read on
//! another device, shows the same bytes under other mtimes. Where a decision depends on it, the
//! caller (the scan, the watcher) fingerprints the file ([`crate::card::Fingerprint`]) and this
//! module settles it by content: [`judge`] is the rule, pure and table-tested;
//! [`Store::settle_contents`] applies it.
//!
//! Invariants: bytes sent from a path (`sent_contents`) are never queued from it again, whatever
//! their mtime; a row whose fingerprint differs from the bytes at its identity is a new version,
//! sent again, and never freed in the old one's place (its `done_url` goes); an open item whose
//! card is out waits for it (`waiting_for_card`), it is neither replaced nor deleted.

use rusqlite::{params, OptionalExtension};

use super::{count_inserted, Fact, FoundFile, ItemState, Result, Store, SUPERSEDE};
use crate::card::Fingerprint;
use crate::clock::now_unix;

/// A file the caller fingerprinted because its metadata could not settle what it is.
#[derive(Debug, Clone)]
pub struct Checked {
    pub file: FoundFile,
    pub fingerprint: Fingerprint,
    /// The watcher saw it written (an edit in place keeps name, size and, on FAT, the 2 s
    /// stamp): an item that cannot be compared by content is taken as changed.
    pub written: bool,
}

/// A row as [`Store::settle_contents`] reads it: id, state, fingerprint, card, and whether it
/// waits for its card.
type Row = (i64, String, Option<Vec<u8>>, Option<String>, bool);

/// What the bytes on the card are to the row holding their (path, size, mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentVerdict {
    /// The very bytes the row stands for, or nothing says otherwise.
    Same,
    /// Bytes already sent from this path (a card put back after another reused its names):
    /// nothing to send; the row, if open, waits for or gave way to them.
    SentBefore,
    /// The row is open with its own bytes, from another card that is out: it waits for that
    /// card. (One row per name, size and stamp: the file here goes up once that card's is
    /// sent, when it is seen next.)
    WaitsForItsCard,
    /// Other bytes: a new version, to be sent.
    New,
}

/// What the store knows of the row.
#[derive(Debug, Clone, Copy)]
pub struct RowFacts<'a> {
    /// Pending, uploading or failed.
    pub open: bool,
    pub fingerprint: Option<Fingerprint>,
    pub card: Option<&'a str>,
}

/// What was seen on the card.
#[derive(Debug, Clone, Copy)]
pub struct SeenFacts<'a> {
    pub fingerprint: Fingerprint,
    pub written: bool,
    /// These bytes were sent from this path before (`sent_contents`).
    pub sent_before: bool,
    pub card: Option<&'a str>,
}

/// Two cards known to be different ones.
pub fn other_card(a: Option<&str>, b: Option<&str>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a != b)
}

/// The rule: by content where the row knows its content, by the watcher's word where it does
/// not; metadata alone otherwise (an item from before fingerprints, or rebuilt without one).
pub fn judge(row: &RowFacts<'_>, seen: &SeenFacts<'_>) -> ContentVerdict {
    if row.fingerprint == Some(seen.fingerprint) {
        return ContentVerdict::Same;
    }
    if row.open && row.fingerprint.is_some() && other_card(row.card, seen.card) {
        return ContentVerdict::WaitsForItsCard;
    }
    if seen.sent_before {
        return ContentVerdict::SentBefore;
    }
    if row.fingerprint.is_none() && !seen.written {
        return ContentVerdict::Same;
    }
    ContentVerdict::New
}

impl Store {
    /// Settles files whose identity needed their content, in one transaction: each is the
    /// version its row stands for, a new version (queued, or its row queued again), bytes sent
    /// before (under another mtime: the done row takes it), or waits for its card. `card`: the
    /// card they are on. Returns how many items were queued.
    pub fn settle_contents(&self, files: &[Checked], card: Option<&str>) -> Result<usize> {
        if files.is_empty() {
            return Ok(0);
        }
        let now = now_unix();
        let mut facts = Vec::new();
        let added = self.tx(|tx| {
            let mut added = 0;
            for c in files {
                added += settle_one(tx, c, card, now, &mut facts)?;
            }
            Ok(added)
        })?;
        // A database rebuilt from the ledger must not take the new version for done, nor
        // resume an upload of the old bytes.
        for (id, fact) in facts {
            self.note_in_ledger(id, fact);
        }
        Ok(added)
    }

    /// Records the fingerprint of the bytes an item's upload is about to send, if it has none.
    pub fn set_fingerprint(&self, id: i64, fingerprint: &Fingerprint) -> Result<()> {
        self.exec(
            "UPDATE items SET fingerprint = ?2 WHERE id = ?1 AND fingerprint IS NULL",
            params![id, fingerprint.as_bytes()],
        )
    }

    /// Items waiting for a card that is out, per card: (serial, items, bytes). They count as
    /// not backed up.
    pub fn waiting_for_card(&self) -> Result<Vec<(Option<String>, u64, u64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT card, COUNT(*), COALESCE(SUM(size), 0) FROM items
                 WHERE state = 'skipped' AND last_error = ?1 GROUP BY card ORDER BY card",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([super::REASON_WAITING_FOR_CARD], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }
}

/// Settles one file by its content (see [`Store::settle_contents`]); returns how many items it
/// queued. `facts`: for the ledger, done or cancelled rows queued again (`Requeued`) and open
/// rows whose partial upload was of other bytes (`Forgotten`).
fn settle_one(
    tx: &rusqlite::Transaction<'_>,
    c: &Checked,
    card: Option<&str>,
    now: i64,
    facts: &mut Vec<(i64, Fact)>,
) -> rusqlite::Result<usize> {
    let f = &c.file;
    let fp = c.fingerprint.as_bytes();
    let row: Option<Row> = tx
        .prepare_cached(
            "SELECT id, state, fingerprint, card,
               COALESCE(state = 'skipped' AND last_error = ?4, 0)
             FROM items WHERE storage_path = ?1 AND size = ?2 AND mtime_ns = ?3",
        )?
        .query_row(
            params![
                f.path.as_str(),
                f.size as i64,
                f.mtime_ns,
                super::REASON_WAITING_FOR_CARD
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let sent_before: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sent_contents
             WHERE storage_path = ?1 AND fingerprint = ?2)",
        )?
        .query_row(params![f.path.as_str(), fp], |r| r.get(0))?;
    let Some((id, state, row_fp, row_card, waiting)) = row else {
        return settle_unknown(tx, c, card, now, sent_before);
    };
    let state = ItemState::parse(&state).unwrap_or(ItemState::Pending);
    // One waiting for its card is still to be sent: its bytes are not these.
    let open = state.is_open() || waiting;
    let verdict = judge(
        &RowFacts {
            open,
            fingerprint: row_fp.as_deref().and_then(Fingerprint::from_bytes),
            card: row_card.as_deref(),
        },
        &SeenFacts {
            fingerprint: c.fingerprint,
            written: c.written,
            sent_before,
            card,
        },
    );
    tracing::debug!(path = %f.path, ?verdict, "judged by content");
    let row = Judged {
        id,
        state,
        open,
        waiting,
        row_card: row_card.as_deref(),
    };
    write_verdict(tx, verdict, &row, c, card, facts)
}

/// A file whose version (path, size, mtime) no row has: bytes sent before from that path under
/// another mtime move the done row's mtime; other bytes are queued. Returns how many items it
/// queued.
fn settle_unknown(
    tx: &rusqlite::Transaction<'_>,
    c: &Checked,
    card: Option<&str>,
    now: i64,
    sent_before: bool,
) -> rusqlite::Result<usize> {
    let f = &c.file;
    let fp = c.fingerprint.as_bytes();
    if sent_before {
        // The same bytes under another mtime (a time zone, another reader):
        // the done row follows them, so the next scan knows them at once.
        tx.prepare_cached(
            "UPDATE OR IGNORE items SET mtime_ns = ?4, card = COALESCE(?5, card)
                 WHERE id = (SELECT id FROM items WHERE storage_path = ?1
                   AND size = ?2 AND fingerprint = ?3 AND state = 'done'
                   ORDER BY id DESC LIMIT 1)",
        )?
        .execute(params![
            f.path.as_str(),
            f.size as i64,
            fp,
            f.mtime_ns,
            card
        ])?;
        return Ok(0);
    }
    tx.prepare_cached(
        "INSERT INTO items (storage_path, kind, size, mtime_ns, queued_at,
               fingerprint, card) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        f.path.as_str(),
        f.kind.as_str(),
        f.size as i64,
        f.mtime_ns,
        now,
        fp,
        card
    ])?;
    let id = tx.last_insert_rowid();
    count_inserted(tx, ItemState::Pending, 1, f.size as i64)?;
    tx.execute(SUPERSEDE, params![f.path.as_str(), id, card])?;
    Ok(1)
}

/// The row of a file's version, as [`settle_one`] judged it.
struct Judged<'a> {
    id: i64,
    state: ItemState,
    /// Still to be sent (open, or waiting for its card).
    open: bool,
    waiting: bool,
    row_card: Option<&'a str>,
}

/// Writes `verdict` on the row; returns how many items it queued.
fn write_verdict(
    tx: &rusqlite::Transaction<'_>,
    verdict: ContentVerdict,
    row: &Judged<'_>,
    c: &Checked,
    card: Option<&str>,
    facts: &mut Vec<(i64, Fact)>,
) -> rusqlite::Result<usize> {
    let (f, fp) = (&c.file, c.fingerprint.as_bytes());
    let Judged {
        id,
        state,
        open,
        waiting,
        row_card,
    } = *row;
    let mut added = 0;
    match verdict {
        ContentVerdict::Same => {
            // An open item sends what is there now: its content is this.
            tx.execute(
                "UPDATE items SET card = COALESCE(?2, card),
                   fingerprint = CASE WHEN state IN ('pending', 'uploading', 'failed')
                     THEN ?3 ELSE fingerprint END
                 WHERE id = ?1",
                params![id, card, fp],
            )?;
            added += tx.execute(
                super::REVIVE,
                params![f.path.as_str(), f.size as i64, f.mtime_ns, card],
            )?;
        }
        ContentVerdict::SentBefore if open => {
            tx.execute(
                "UPDATE items SET state = 'skipped', last_error = ?2
                 WHERE id = ?1 AND state IN ('pending', 'failed')",
                params![id, super::REASON_REPLACED],
            )?;
        }
        ContentVerdict::SentBefore => {
            // The row now names these bytes; its upload URL was another's, so
            // freeing never confirms this file by it.
            tx.execute(
                "UPDATE items SET fingerprint = ?2, card = COALESCE(?3, card),
                   done_url = NULL
                 WHERE id = ?1 AND state = 'done'",
                params![id, fp, card],
            )?;
        }
        ContentVerdict::WaitsForItsCard => {
            tx.execute(
                "UPDATE items SET state = 'skipped', last_error = ?2
                 WHERE id = ?1 AND state IN ('pending', 'failed')",
                params![id, super::REASON_WAITING_FOR_CARD],
            )?;
            tracing::info!(path = %f.path, card = ?row_card,
                "another card's file reuses this name, size and stamp: it waits for its card");
        }
        ContentVerdict::New if open => {
            // Still to be sent: it sends these bytes (one that waited for its card,
            // which is this one or unknown, waits no more). A partial upload the row holds
            // was of the bytes it stood for before (an edit in place keeping size and
            // stamp, firmware writing a rating into the EXIF): resumed, the server would
            // hold the old bytes' head and the new bytes' tail, called done. It is
            // forgotten, and the file sent anew from its first byte.
            added += usize::from(waiting);
            let forgotten = tx.execute(
                "UPDATE items SET upload_url = NULL, upload_expires_at = NULL, bytes_sent = 0
                 WHERE id = ?1 AND (upload_url IS NOT NULL OR bytes_sent > 0)",
                params![id],
            )?;
            if forgotten > 0 {
                tx.execute("DELETE FROM sent_chunks WHERE item_id = ?1", [id])?;
                tx.execute("DELETE FROM sent_digest WHERE item_id = ?1", [id])?;
                facts.push((id, Fact::Forgotten));
                tracing::info!(path = %f.path,
                    "new bytes under the name, size and stamp of a file partly sent: sent anew");
            }
            tx.execute(
                "UPDATE items SET fingerprint = ?2, card = COALESCE(?3, card),
                   state = CASE WHEN state = 'skipped' THEN 'pending' ELSE state END,
                   last_error = CASE WHEN state = 'skipped' THEN NULL ELSE last_error END,
                   next_attempt_at = CASE WHEN state = 'skipped' THEN 0 ELSE next_attempt_at END
                 WHERE id = ?1",
                params![id, fp, card],
            )?;
        }
        ContentVerdict::New => {
            // A new version under the old one's name, size and stamp: the row is
            // queued again for it. The history keeps the old version's upload;
            // the old upload's URL and digests go, so it is never freed in its place.
            tx.execute(
                "UPDATE items SET state = 'pending', fingerprint = ?2,
                   card = COALESCE(?3, card), manual = 0, attempts = 0,
                   next_attempt_at = 0, last_error = NULL, bytes_sent = 0,
                   upload_url = NULL, upload_expires_at = NULL, done_url = NULL,
                   freed_at = NULL, completed_at = NULL, creations = 0
                 WHERE id = ?1",
                params![id, fp, card],
            )?;
            tx.execute("DELETE FROM sent_chunks WHERE item_id = ?1", [id])?;
            tx.execute("DELETE FROM sent_digest WHERE item_id = ?1", [id])?;
            tracing::info!(path = %f.path,
                "new bytes under a sent version's name, size and stamp: queued as a new version");
            if matches!(state, ItemState::Done | ItemState::Cancelled) {
                facts.push((id, Fact::Requeued));
            }
            added += 1;
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Kind, StoragePath};
    use ContentVerdict::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::from_bytes(&[b; 16]).unwrap()
    }

    fn found(size: u64, mtime_ns: i64) -> FoundFile {
        FoundFile {
            path: StoragePath::from_relative(std::path::Path::new("DCIM/DSC00001.JPG")).unwrap(),
            kind: Kind::Photo,
            size,
            mtime_ns,
        }
    }

    /// One photo sent with fingerprint `a` from card `C1`: queued, uploaded, done.
    fn sent(s: &Store, a: Fingerprint) -> i64 {
        let c = Checked {
            file: found(10, 1),
            fingerprint: a,
            written: true,
        };
        assert_eq!(s.settle_contents(&[c], Some("C1")).unwrap(), 1);
        let id = s.list(None, 10, 0).unwrap()[0].id;
        assert!(s.mark_uploading(id).unwrap());
        s.set_upload_url(
            id,
            "https://up.example/files/1",
            None,
            "https://up.example/files/",
        )
        .unwrap();
        s.mark_done(id).unwrap();
        id
    }

    #[test]
    fn a_version_rewritten_in_place_is_sent_again_and_never_freed_in_the_old_ones_place() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = sent(&s, fp(1));
        assert_eq!(
            s.free_candidates().unwrap().len(),
            1,
            "the sent version may be freed"
        );
        let edited = Checked {
            file: found(10, 1),
            fingerprint: fp(2),
            written: true,
        };
        assert_eq!(s.settle_contents(&[edited], Some("C1")).unwrap(), 1);
        let it = s.item(id).unwrap().unwrap();
        assert_eq!(
            (it.state, it.fingerprint),
            (ItemState::Pending, Some(fp(2)))
        );
        assert!(
            s.free_candidates().unwrap().is_empty(),
            "nothing to free in its place"
        );
        assert_eq!(
            s.history(10).unwrap().len(),
            1,
            "the old upload stays in the history"
        );
        // A database rebuilt from the ledger does not take the new version for done.
        drop(s);
        std::fs::write(dir.path().join(crate::store::DB_FILE), b"not a database").unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.was_rebuilt());
        assert_eq!(s.counts().unwrap().done, 0);
    }

    #[test]
    fn an_edit_in_place_of_a_partly_sent_file_forgets_the_partial_upload() {
        // Sent in part (the URL stored, 4 bytes acknowledged), then edited in place keeping
        // size and stamp: resuming would give the server the old head and the new tail.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = Checked {
            file: found(10, 1),
            fingerprint: fp(1),
            written: true,
        };
        s.settle_contents(std::slice::from_ref(&a), None).unwrap();
        let id = s.list(None, 10, 0).unwrap()[0].id;
        s.set_upload_url(
            id,
            "http://127.0.0.1:1/files/old",
            None,
            "http://127.0.0.1:1/files/",
        )
        .unwrap();
        s.set_progress(id, 4, None).unwrap();
        let edited = Checked {
            fingerprint: fp(2),
            ..a
        };
        s.settle_contents(&[edited], None).unwrap();
        let it = s.item(id).unwrap().unwrap();
        assert_eq!(it.fingerprint, Some(fp(2)));
        assert_eq!(it.state, ItemState::Pending);
        assert_eq!(
            (it.upload_url.as_deref(), it.bytes_sent),
            (None, 0),
            "sent anew from the first byte"
        );
        // Nor does a database rebuilt from the ledger resume the old upload.
        drop(s);
        std::fs::write(dir.path().join(crate::store::DB_FILE), b"not a database").unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.was_rebuilt());
        assert!(s
            .list(None, 10, 0)
            .unwrap()
            .iter()
            .all(|i| i.upload_url.is_none()));
    }

    #[test]
    fn an_item_waiting_for_its_card_keeps_waiting_when_another_reuses_its_identity() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = Checked {
            file: found(10, 1),
            fingerprint: fp(1),
            written: true,
        };
        s.settle_contents(std::slice::from_ref(&a), Some("A"))
            .unwrap();
        let id = s.list(None, 10, 0).unwrap()[0].id;
        s.mark_skipped_many(&[id], crate::store::REASON_WAITING_FOR_CARD)
            .unwrap();
        // Card C: the same name, size and floor stamp, other bytes.
        let c = Checked {
            file: found(10, 1),
            fingerprint: fp(3),
            written: false,
        };
        assert_eq!(s.settle_contents(&[c], Some("C")).unwrap(), 0);
        let it = s.item(id).unwrap().unwrap();
        assert_eq!(it.fingerprint, Some(fp(1)), "card A's bytes, still");
        assert_eq!(
            it.last_error.as_deref(),
            Some(crate::store::REASON_WAITING_FOR_CARD)
        );
        // Card A back: it waits no more.
        let back = Checked {
            written: false,
            ..a
        };
        assert_eq!(s.settle_contents(&[back], Some("A")).unwrap(), 1);
        assert_eq!(s.item(id).unwrap().unwrap().state, ItemState::Pending);
    }

    #[test]
    fn a_rebuilt_database_keeps_what_was_sent_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        sent(&s, fp(1));
        drop(s);
        std::fs::write(dir.path().join(crate::store::DB_FILE), b"not a database").unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.was_rebuilt());
        let it = &s.list(None, 10, 0).unwrap()[0];
        assert_eq!((it.state, it.fingerprint), (ItemState::Done, Some(fp(1))));
        // Other bytes under its name, size and stamp (a reformatted card): a new version.
        let other = Checked {
            file: found(10, 1),
            fingerprint: fp(2),
            written: false,
        };
        assert_eq!(s.settle_contents(&[other], None).unwrap(), 1);
        // The first bytes again under another stamp: sent before, not queued.
        let again = Checked {
            file: found(10, 7_200_000_000_000),
            fingerprint: fp(1),
            written: false,
        };
        assert_eq!(s.settle_contents(&[again], None).unwrap(), 0);
    }

    #[test]
    fn the_content_rule() {
        let (a, b) = (fp(1), fp(2));
        // (row open, row fingerprint, row card, seen fingerprint, written, sent before, card)
        type Row = (bool, Option<Fingerprint>, Option<&'static str>);
        type Seen = (Fingerprint, bool, bool, Option<&'static str>);
        let table: &[(&str, Row, Seen, ContentVerdict)] = &[
            (
                "same bytes after a remount",
                (false, Some(a), Some("C1")),
                (a, false, true, Some("C1")),
                Same,
            ),
            (
                "same bytes on a card read elsewhere",
                (false, Some(a), None),
                (a, false, true, Some("C2")),
                Same,
            ),
            (
                "a reformatted card reusing name, size and stamp",
                (false, Some(a), Some("C1")),
                (b, false, false, Some("C2")),
                New,
            ),
            (
                "the same without a readable serial",
                (false, Some(a), None),
                (b, false, false, None),
                New,
            ),
            (
                "an edit in place the watcher saw",
                (false, Some(a), Some("C1")),
                (b, true, false, Some("C1")),
                New,
            ),
            (
                "an edit in place of a row without a fingerprint, seen written",
                (false, None, None),
                (b, true, false, None),
                New,
            ),
            (
                "no fingerprint, not seen written: metadata decides",
                (false, None, None),
                (b, false, false, None),
                Same,
            ),
            (
                "a card put back after another reused its names",
                (false, Some(b), Some("C2")),
                (a, false, true, Some("C1")),
                SentBefore,
            ),
            (
                "an open item of the card that is out",
                (true, Some(b), Some("C2")),
                (a, false, true, Some("C1")),
                WaitsForItsCard,
            ),
            (
                "an open item of the card that is out, this card's file new",
                (true, Some(b), Some("C2")),
                (a, false, false, Some("C1")),
                WaitsForItsCard,
            ),
            (
                "an open item rewritten on its own card",
                (true, Some(b), Some("C1")),
                (a, true, false, Some("C1")),
                New,
            ),
            (
                "an open item whose card is unknown",
                (true, Some(b), None),
                (a, false, false, Some("C1")),
                New,
            ),
        ];
        for (name, (open, rf, rc), (sf, written, sent_before, card), want) in table {
            let got = judge(
                &RowFacts {
                    open: *open,
                    fingerprint: *rf,
                    card: *rc,
                },
                &SeenFacts {
                    fingerprint: *sf,
                    written: *written,
                    sent_before: *sent_before,
                    card: *card,
                },
            );
            assert_eq!(got, *want, "{name}");
        }
    }
}
