//! The freeing-space rules (INTERFACE.md section 8): which backed-up originals may be deleted
//! from the card, in which order, and why each other one is kept.
//!
//! [`decide`] is one pure function of plain facts, like the gate: the world (the user's
//! consent, the maker's policy, the card's space, pairing, the clock, recording) and, per file,
//! what the store recorded of its upload, what the card shows now, what a fresh `HEAD` said and
//! what a read-back found. The freeing loop (`freeing`) gathers the facts, and asks again with
//! the server's and the card's answers filled in just before each deletion.
//!
//! Invariants: a file is [`Verdict::Free`] only when every rule holds, with the server's
//! answer and the read-back known; anything unknown keeps it. Nothing here does I/O.
//!
//! Every file is read back from the card just before its deletion, in every verification mode,
//! and freed only if every chunk hashes like what was sent (the bytes the server verified, or,
//! under `length`, the bytes as they went out). Size, modification time and inode never vouch
//! for the bytes: an edit in place (`exiftool -overwrite_original_in_place -P`) keeps all
//! three. Nor does the inode alone keep a file: on FAT and exFAT cards Linux numbers inodes
//! anew at each mount and whenever it drops one from its cache, so a camera that was switched
//! off would otherwise never free anything; it only names the reason when the bytes differ
//! (another inode: another file put in its place, [`Keep::Changed`]; the same inode:
//! [`Keep::ReadBackDiffers`]).
//!
//! Under `free_space_verify = "receipt"` the server's own word about what it stored decides
//! too: its receipt (the SHA-256 of the stored object, from the confirming `HEAD`) must equal
//! the camera's SHA-256 of the file as sent ([`FileFacts::digest`]), and the read-back the
//! same digest. No receipt keeps the file ([`Keep::NoReceipt`]); another digest keeps it and
//! has it sent again ([`Keep::ServerDigestMismatch`]).

use serde::Serialize;

use crate::config::FreeSpaceVerify;
use crate::settings::FreeSpace;
use crate::store::SentSummary;

/// Percentage points above `free_space_below_percent` freeing goes on to, so that one new
/// photo does not start another pass at once: the card is freed in a batch, then left alone.
pub const MARGIN_PERCENT: u64 = 5;

/// The card's space, as statvfs gives it to an unprivileged writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Card {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// The maker's side of the rules (`[media]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `free_space_below_percent`; `None`: this camera never frees space.
    pub below_percent: Option<u8>,
    pub keep_days: u32,
    pub verify: FreeSpaceVerify,
    /// `settle_secs`: a file modified more recently may still be being written.
    pub settle_secs: u64,
}

/// What holds for the whole card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    pub consent: FreeSpace,
    pub policy: Policy,
    /// `None`: the card's space could not be read.
    pub card: Option<Card>,
    pub media_available: bool,
    pub paired: bool,
    pub clock_set: bool,
    pub recording: bool,
    /// The card is mounted read-only (a write-protect switch, or the driver's choice after an
    /// error): nothing can be deleted, so nothing is tried.
    pub card_read_only: bool,
    /// Unix seconds.
    pub now: i64,
}

/// Why nothing is freed now. The variants are in the order [`decide`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// The maker did not configure freeing space (`media.free_space_below_percent` unset).
    NotConfigured,
    /// The user's `free_space` is `off`.
    FreeSpaceOff,
    /// No account: no server to confirm an upload with.
    Unpaired,
    /// The card is missing.
    MediaUnavailable,
    /// The wall clock is not set: no file's age can be told.
    ClockNotSet,
    /// The camera records: the card is left alone.
    Recording,
    /// The card is read-only (write-protected): uploads go on, nothing is deleted.
    CardReadOnly,
    /// The card's free space could not be read.
    CardUnknown,
    /// The card has more free space than the threshold: nothing needs freeing.
    NotLow,
}

/// What the card shows of a file now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCard {
    Missing,
    /// A directory, a symbolic link or another non-file at its path.
    NotRegular,
    Present {
        size: u64,
        mtime_ns: i64,
        ino: u64,
    },
}

/// What a `HEAD` on the completed upload said, made just before deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    NotAsked,
    /// `Upload-Offset` equals `Upload-Length` equals the file's size.
    Complete,
    Incomplete {
        offset: u64,
        length: Option<u64>,
    },
    /// 404 or 410: the server lost it (the file is queued again).
    Lost,
    /// Anything else: an error, a timeout, an answer that does not add up.
    Doubt(String),
}

/// The server's receipt, from the `HEAD` made just before deletion under `receipt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    NotAsked,
    /// The server gave none (no `Repr-Digest` with `sha-256`, or one that could not be read).
    None,
    /// Its SHA-256 of the object it stored.
    Sha256([u8; 32]),
}

/// What reading the file back from the card found, compared chunk by chunk with what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadBack {
    NotDone,
    /// Every chunk hashes like what was sent; `ino` is the inode of the file that was read
    /// (the file at the path at the last look must be that one).
    Same {
        ino: u64,
    },
    /// The first chunk that differs starts here.
    Differs {
        at: u64,
    },
    Failed(String),
}

/// The facts about one backed-up file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub id: i64,
    /// The uploaded version's size and modification time.
    pub size: u64,
    pub mtime_ns: i64,
    /// What was recorded of the bytes sent.
    pub sent: SentSummary,
    /// The camera's SHA-256 of the whole file as it was sent (kept under `receipt` only).
    pub digest: Option<[u8; 32]>,
    /// The completed upload was made at the endpoint in use now (a `HEAD` elsewhere would send
    /// the token to the old host).
    pub endpoint_ok: bool,
    pub on_card: OnCard,
    pub server: Server,
    /// The server's receipt (asked under `receipt` only).
    pub receipt: Receipt,
    pub read_back: ReadBack,
}

/// Why a file is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Keep {
    /// Younger than `keep_days` (or dated in the future).
    TooYoung,
    /// Modified within `settle_secs`: it may be being written.
    BeingWritten,
    /// Not a regular file any more.
    NotRegular,
    /// Its size or modification time is not the uploaded version's; or its inode is another
    /// and it reads back differently (another file put in its place).
    Changed,
    /// Uploaded to another endpoint than the one in use.
    OtherEndpoint,
    /// No record of what was sent (uploaded before freeing space was configured, or the record
    /// was lost): its bytes cannot be verified.
    NoSentRecord,
    /// The record of what was sent has a gap (a restart between a chunk and its record, a
    /// PATCH the server took only in part).
    SentIncomplete,
    /// The server did not check checksums and `free_space_verify` is `checksum`.
    NoChecksum,
    /// `free_space_verify` is `receipt` and the server gave no receipt for the upload.
    NoReceipt,
    /// The server's receipt differs from the camera's digest: the server lost or changed
    /// bytes. The file is sent again once.
    ServerDigestMismatch,
    /// The server's upload is not complete.
    ServerIncomplete { offset: u64, length: Option<u64> },
    /// The server lost the upload; the file is queued again.
    ServerLost,
    /// The server's answer left a doubt.
    ServerDoubt { detail: String },
    /// Read back from the card, the file (same inode, size and mtime) differs from what was
    /// sent: edited in place with its date kept, or the card reads back other bytes.
    ReadBackDiffers { at: u64 },
    /// The file could not be read back.
    ReadBackFailed { detail: String },
}

impl Keep {
    /// The reason's name (`reason` on the wire).
    pub fn code(&self) -> &'static str {
        match self {
            Keep::TooYoung => "too_young",
            Keep::BeingWritten => "being_written",
            Keep::NotRegular => "not_regular",
            Keep::Changed => "changed",
            Keep::OtherEndpoint => "other_endpoint",
            Keep::NoSentRecord => "no_sent_record",
            Keep::SentIncomplete => "sent_incomplete",
            Keep::NoChecksum => "no_checksum",
            Keep::NoReceipt => "no_receipt",
            Keep::ServerDigestMismatch => "server_digest_mismatch",
            Keep::ServerIncomplete { .. } => "server_incomplete",
            Keep::ServerLost => "server_lost",
            Keep::ServerDoubt { .. } => "server_doubt",
            Keep::ReadBackDiffers { .. } => "read_back_differs",
            Keep::ReadBackFailed { .. } => "read_back_failed",
        }
    }

    /// Kept because its bytes cannot be verified (what `status` warns about).
    pub fn is_unverified(&self) -> bool {
        matches!(
            self,
            Keep::NoSentRecord | Keep::SentIncomplete | Keep::NoChecksum | Keep::NoReceipt
        )
    }
}

/// One file's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every rule holds: delete it.
    Free,
    /// Every rule that can be told now holds, and the space is needed: ask the server and read
    /// the file back just before deleting it.
    Confirm,
    /// It could be freed, but older files free enough.
    NotNeeded,
    /// Gone from the card already: nothing to free.
    Gone,
    Keep(Keep),
}

/// The answer: what stops freeing now, how much is needed, and each file's verdict in the
/// order files are freed (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub holds: Vec<Hold>,
    /// Free bytes the card should have when done (the threshold plus [`MARGIN_PERCENT`]).
    pub target_free_bytes: Option<u64>,
    /// Bytes still to free to reach the target (0 when not low).
    pub need_bytes: u64,
    pub files: Vec<(i64, Verdict)>,
}

impl Decision {
    /// Whether the daemon may delete now.
    pub fn may_free(&self) -> bool {
        self.holds.is_empty()
    }
}

/// What stops a deletion at its last look, just before the file goes: the holds that may
/// come between a file's confirmation and its deletion (consent withdrawn, unpairing, the card
/// leaving, the camera starting to record), judged by [`decide`] with the world of that moment.
/// The card's space is not asked again: the pass judged it before the confirmation.
pub fn last_look(w: &World) -> Option<Hold> {
    decide(w, &[]).holds.into_iter().find(|h| {
        matches!(
            h,
            Hold::FreeSpaceOff | Hold::Unpaired | Hold::MediaUnavailable | Hold::Recording
        )
    })
}

/// Decides from the world and the files' facts. Files are taken oldest first (modification
/// time, then id); each file that could be freed counts towards the bytes needed until they
/// are covered, and the rest are [`Verdict::NotNeeded`].
pub fn decide(w: &World, files: &[FileFacts]) -> Decision {
    let mut holds = Vec::new();
    let below = w.policy.below_percent;
    if below.is_none() {
        holds.push(Hold::NotConfigured);
    }
    if w.consent != FreeSpace::WhenLow {
        holds.push(Hold::FreeSpaceOff);
    }
    if !w.paired {
        holds.push(Hold::Unpaired);
    }
    if !w.media_available {
        holds.push(Hold::MediaUnavailable);
    }
    if !w.clock_set {
        holds.push(Hold::ClockNotSet);
    }
    if w.recording {
        holds.push(Hold::Recording);
    }
    if w.card_read_only {
        holds.push(Hold::CardReadOnly);
    }
    let (target, need) = match (w.card, below) {
        (None, _) => {
            holds.push(Hold::CardUnknown);
            (None, 0)
        }
        (Some(_), None) => (None, 0),
        (Some(c), Some(p)) => {
            let total = u128::from(c.total_bytes);
            let low = u128::from(c.free_bytes) * 100 < total * u128::from(p);
            let pct = (u64::from(p) + MARGIN_PERCENT).min(100);
            let target = (total * u128::from(pct)).div_ceil(100) as u64;
            if low {
                (Some(target), target.saturating_sub(c.free_bytes))
            } else {
                holds.push(Hold::NotLow);
                (Some(target), 0)
            }
        }
    };

    let mut order: Vec<&FileFacts> = files.iter().collect();
    order.sort_by_key(|f| (f.mtime_ns, f.id));
    let mut selection = Selection::new(w, need);
    let out = order
        .into_iter()
        .map(|f| (f.id, selection.offer(f)))
        .collect();
    Decision {
        holds,
        target_free_bytes: target,
        need_bytes: need,
        files: out,
    }
}

/// [`decide`]'s verdicts one file at a time, for files offered oldest first (modification
/// time, then id): each file that could be freed counts towards the bytes needed until they
/// are covered, and the rest are [`Verdict::NotNeeded`]. A look over the whole card this way
/// holds one file's facts at a time.
pub struct Selection<'a> {
    w: &'a World,
    need: u64,
    counted: u64,
}

impl<'a> Selection<'a> {
    pub fn new(w: &'a World, need: u64) -> Selection<'a> {
        Selection {
            w,
            need,
            counted: 0,
        }
    }

    pub fn offer(&mut self, f: &FileFacts) -> Verdict {
        match judge(self.w, f) {
            v @ (Verdict::Free | Verdict::Confirm) if self.counted < self.need => {
                self.counted = self.counted.saturating_add(f.size);
                v
            }
            Verdict::Free | Verdict::Confirm => Verdict::NotNeeded,
            v => v,
        }
    }
}

/// The rules for one file, in the order their reasons are reported; whether the space is
/// needed is [`decide`]'s (or [`Selection`]'s) to say.
pub fn judge(w: &World, f: &FileFacts) -> Verdict {
    let (size, mtime_ns, ino) = match f.on_card {
        OnCard::Missing => return Verdict::Gone,
        OnCard::NotRegular => return Verdict::Keep(Keep::NotRegular),
        OnCard::Present {
            size,
            mtime_ns,
            ino,
        } => (size, mtime_ns, ino),
    };
    let age = w.now.saturating_sub(f.mtime_ns.div_euclid(1_000_000_000));
    if age < 0 || age < i64::from(w.policy.keep_days) * 86_400 {
        return Verdict::Keep(Keep::TooYoung);
    }
    if age < w.policy.settle_secs as i64 {
        return Verdict::Keep(Keep::BeingWritten);
    }
    if size != f.size || mtime_ns != f.mtime_ns {
        return Verdict::Keep(Keep::Changed);
    }
    if !f.endpoint_ok {
        return Verdict::Keep(Keep::OtherEndpoint);
    }
    let on_receipt = w.policy.verify == FreeSpaceVerify::Receipt;
    if on_receipt {
        // The whole file's digest stands for the chunks' record (none is kept): without it
        // (sent before the mode was set, or its record lost) nothing compares with a receipt.
        if f.digest.is_none() {
            return Verdict::Keep(Keep::NoSentRecord);
        }
    } else {
        if f.sent.chunks == 0 {
            return Verdict::Keep(Keep::NoSentRecord);
        }
        if !f.sent.covers(f.size) {
            return Verdict::Keep(Keep::SentIncomplete);
        }
        if !f.sent.all_checksummed && w.policy.verify == FreeSpaceVerify::Checksum {
            return Verdict::Keep(Keep::NoChecksum);
        }
    }
    match &f.server {
        Server::NotAsked => return Verdict::Confirm,
        Server::Complete => {}
        Server::Incomplete { offset, length } => {
            return Verdict::Keep(Keep::ServerIncomplete {
                offset: *offset,
                length: *length,
            })
        }
        Server::Lost => return Verdict::Keep(Keep::ServerLost),
        Server::Doubt(d) => return Verdict::Keep(Keep::ServerDoubt { detail: d.clone() }),
    }
    if on_receipt {
        match &f.receipt {
            Receipt::NotAsked => return Verdict::Confirm,
            Receipt::None => return Verdict::Keep(Keep::NoReceipt),
            Receipt::Sha256(d) if Some(*d) != f.digest => {
                return Verdict::Keep(Keep::ServerDigestMismatch)
            }
            Receipt::Sha256(_) => {}
        }
    }
    // Not the inode the bytes were sent from (or they were sent from several): on FAT and
    // exFAT a remount or a dropped cache entry does that. It only names the reason when the
    // bytes differ; the read-back decides in every case.
    // Under `receipt` no chunk records the inode: other bytes are `read_back_differs`.
    let inode_differs = !on_receipt && f.sent.ino != Some(ino);
    match &f.read_back {
        ReadBack::NotDone => Verdict::Confirm,
        // The bytes read back are those of the file at the path now.
        ReadBack::Same { ino: read } if *read == ino => Verdict::Free,
        // Another file was put at the path after the read-back.
        ReadBack::Same { .. } => Verdict::Keep(Keep::Changed),
        // Another inode and other bytes: another file in its place.
        ReadBack::Differs { .. } if inode_differs => Verdict::Keep(Keep::Changed),
        // The same inode, size and mtime, and other bytes: edited in place, or bit rot.
        ReadBack::Differs { at } => Verdict::Keep(Keep::ReadBackDiffers { at: *at }),
        ReadBack::Failed(d) => Verdict::Keep(Keep::ReadBackFailed { detail: d.clone() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;
    const MIB: u64 = 1 << 20;

    /// A 100 MiB card with 10 MiB free, 15 % threshold: 10 MiB to free to reach 20 %.
    fn world() -> World {
        World {
            consent: FreeSpace::WhenLow,
            policy: Policy {
                below_percent: Some(15),
                keep_days: 7,
                verify: FreeSpaceVerify::Checksum,
                settle_secs: 10,
            },
            card: Some(Card {
                total_bytes: 100 * MIB,
                free_bytes: 10 * MIB,
            }),
            media_available: true,
            paired: true,
            clock_set: true,
            recording: false,
            card_read_only: false,
            now: NOW,
        }
    }

    /// A 4 MiB file uploaded 30 days ago with every chunk checksummed, unchanged, the
    /// server's HEAD confirming it, and read back the same from the card.
    fn file(id: i64) -> FileFacts {
        let mtime_ns = (NOW - 30 * DAY + id) * 1_000_000_000;
        FileFacts {
            id,
            size: 4 * MIB,
            mtime_ns,
            sent: SentSummary {
                chunks: 4,
                bytes: 4 * MIB,
                end: 4 * MIB,
                all_checksummed: true,
                ino: Some(100 + id as u64),
            },
            digest: Some([id as u8; 32]),
            endpoint_ok: true,
            on_card: OnCard::Present {
                size: 4 * MIB,
                mtime_ns,
                ino: 100 + id as u64,
            },
            server: Server::Complete,
            receipt: Receipt::NotAsked,
            read_back: ReadBack::Same {
                ino: 100 + id as u64,
            },
        }
    }

    fn not_read_back(f: &mut FileFacts) {
        f.read_back = ReadBack::NotDone;
    }

    fn present(f: &mut FileFacts, size: u64, mtime_ns: i64, ino: u64) {
        f.on_card = OnCard::Present {
            size,
            mtime_ns,
            ino,
        };
    }

    struct Row {
        name: &'static str,
        world: fn(&mut World),
        file: fn(&mut FileFacts),
        holds: &'static [Hold],
        verdict: Verdict,
    }

    fn same<T>(_: &mut T) {}

    fn length(w: &mut World) {
        w.policy.verify = FreeSpaceVerify::Length;
    }

    fn no_checksum(f: &mut FileFacts) {
        f.sent.all_checksummed = false;
    }

    fn receipt(w: &mut World) {
        w.policy.verify = FreeSpaceVerify::Receipt;
    }

    /// The server's receipt equals the camera's digest of the file (`file`'s digest); no
    /// chunk records under `receipt`.
    fn receipt_matches(f: &mut FileFacts) {
        f.sent = SentSummary::default();
        f.receipt = Receipt::Sha256(f.digest.unwrap());
    }

    fn rows() -> Vec<Row> {
        vec![
            Row {
                name: "every rule holds",
                world: same,
                file: same,
                holds: &[],
                verdict: Verdict::Free,
            },
            Row {
                name:
                    "receipt: the server's receipt equals the camera's digest, read back the same",
                world: receipt,
                file: receipt_matches,
                holds: &[],
                verdict: Verdict::Free,
            },
            Row {
                name: "receipt: not asked yet (no chunk records needed): confirm first",
                world: receipt,
                file: |f| {
                    f.sent = SentSummary::default();
                    f.receipt = Receipt::NotAsked;
                    not_read_back(f);
                },
                holds: &[],
                verdict: Verdict::Confirm,
            },
            Row {
                name: "receipt: the server gives none",
                world: receipt,
                file: |f| f.receipt = Receipt::None,
                holds: &[],
                verdict: Verdict::Keep(Keep::NoReceipt),
            },
            Row {
                name: "receipt: the server's digest differs (it lost or changed bytes)",
                world: receipt,
                file: |f| f.receipt = Receipt::Sha256([0xee; 32]),
                holds: &[],
                verdict: Verdict::Keep(Keep::ServerDigestMismatch),
            },
            Row {
                name: "receipt: no camera digest to compare with (sent before the mode was set)",
                world: receipt,
                file: |f| {
                    receipt_matches(f);
                    f.digest = None;
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::NoSentRecord),
            },
            Row {
                name: "receipt: matching, but the card's file reads back other bytes",
                world: receipt,
                file: |f| {
                    receipt_matches(f);
                    present(f, 4 * MIB, f.mtime_ns, 999);
                    f.read_back = ReadBack::Differs { at: 0 };
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::ReadBackDiffers { at: 0 }),
            },
            Row {
                name: "receipt: matching, but the file changed on the card since (size, mtime)",
                world: receipt,
                file: |f| {
                    receipt_matches(f);
                    present(f, 4 * MIB, f.mtime_ns + 1, 101);
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::Changed),
            },
            Row {
                name: "receipt: the server's upload is not complete",
                world: receipt,
                file: |f| {
                    receipt_matches(f);
                    f.server = Server::Incomplete {
                        offset: 1,
                        length: Some(4 * MIB),
                    };
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::ServerIncomplete {
                    offset: 1,
                    length: Some(4 * MIB),
                }),
            },
            Row {
                name: "the server not asked yet: confirm first",
                world: same,
                file: |f| {
                    f.server = Server::NotAsked;
                    not_read_back(f);
                },
                holds: &[],
                verdict: Verdict::Confirm,
            },
            Row {
                name: "the same inode, size and mtime, not read back yet: read it back first",
                world: same,
                file: not_read_back,
                holds: &[],
                verdict: Verdict::Confirm,
            },
            Row {
                name: "edited in place (same inode, size and mtime), other bytes: kept",
                world: same,
                file: |f| f.read_back = ReadBack::Differs { at: MIB },
                holds: &[],
                verdict: Verdict::Keep(Keep::ReadBackDiffers { at: MIB }),
            },
            Row {
                name: "the user's consent off holds everything",
                world: |w| w.consent = FreeSpace::Off,
                file: same,
                holds: &[Hold::FreeSpaceOff],
                verdict: Verdict::Free,
            },
            Row {
                name: "the maker did not configure it",
                world: |w| w.policy.below_percent = None,
                file: same,
                holds: &[Hold::NotConfigured],
                verdict: Verdict::NotNeeded,
            },
            Row {
                name: "unpaired, no card, clock unset, recording: each named",
                world: |w| {
                    w.paired = false;
                    w.media_available = false;
                    w.clock_set = false;
                    w.recording = true;
                },
                file: same,
                holds: &[
                    Hold::Unpaired,
                    Hold::MediaUnavailable,
                    Hold::ClockNotSet,
                    Hold::Recording,
                ],
                verdict: Verdict::Free,
            },
            Row {
                name: "a read-only card: nothing is tried",
                world: |w| w.card_read_only = true,
                file: same,
                holds: &[Hold::CardReadOnly],
                verdict: Verdict::Free,
            },
            Row {
                name: "the card's space unknown",
                world: |w| w.card = None,
                file: same,
                holds: &[Hold::CardUnknown],
                verdict: Verdict::NotNeeded,
            },
            Row {
                name: "at the threshold exactly is not below it",
                world: |w| w.card.as_mut().unwrap().free_bytes = 15 * MIB,
                file: same,
                holds: &[Hold::NotLow],
                verdict: Verdict::NotNeeded,
            },
            Row {
                name: "younger than keep_days",
                world: same,
                file: |f| {
                    f.mtime_ns = (NOW - 6 * DAY) * 1_000_000_000;
                    present(f, 4 * MIB, f.mtime_ns, 101);
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::TooYoung),
            },
            Row {
                name: "dated in the future",
                world: same,
                file: |f| {
                    f.mtime_ns = (NOW + DAY) * 1_000_000_000;
                    present(f, 4 * MIB, f.mtime_ns, 101);
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::TooYoung),
            },
            Row {
                name: "keep_days 0 still keeps a file being written",
                world: |w| w.policy.keep_days = 0,
                file: |f| {
                    f.mtime_ns = (NOW - 3) * 1_000_000_000;
                    present(f, 4 * MIB, f.mtime_ns, 101);
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::BeingWritten),
            },
            Row {
                name: "rewritten: another size",
                world: same,
                file: |f| present(f, 5 * MIB, f.mtime_ns, 101),
                holds: &[],
                verdict: Verdict::Keep(Keep::Changed),
            },
            Row {
                name: "rewritten: another mtime",
                world: same,
                file: |f| present(f, 4 * MIB, f.mtime_ns + 1, 101),
                holds: &[],
                verdict: Verdict::Keep(Keep::Changed),
            },
            Row {
                name: "another inode (a FAT remount) under checksum: read it back first",
                world: same,
                file: |f| {
                    present(f, 4 * MIB, f.mtime_ns, 999);
                    not_read_back(f);
                },
                holds: &[],
                verdict: Verdict::Confirm,
            },
            Row {
                name: "another inode, the server not asked yet: both confirmations",
                world: same,
                file: |f| {
                    present(f, 4 * MIB, f.mtime_ns, 999);
                    f.server = Server::NotAsked;
                    not_read_back(f);
                },
                holds: &[],
                verdict: Verdict::Confirm,
            },
            Row {
                name: "another inode, read back the same: the bytes the server verified",
                world: same,
                file: |f| {
                    present(f, 4 * MIB, f.mtime_ns, 999);
                    f.read_back = ReadBack::Same { ino: 999 };
                },
                holds: &[],
                verdict: Verdict::Free,
            },
            Row {
                name: "another inode, read back different: replaced by another file",
                world: same,
                file: |f| {
                    present(f, 4 * MIB, f.mtime_ns, 999);
                    f.read_back = ReadBack::Differs { at: 0 };
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::Changed),
            },
            Row {
                name: "another inode, unreadable",
                world: same,
                file: |f| {
                    present(f, 4 * MIB, f.mtime_ns, 999);
                    f.read_back = ReadBack::Failed("EIO".into());
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::ReadBackFailed {
                    detail: "EIO".into(),
                }),
            },
            Row {
                name: "read back the same, but another file is at the path now",
                world: same,
                file: |f| {
                    present(f, 4 * MIB, f.mtime_ns, 999);
                    f.read_back = ReadBack::Same { ino: 998 };
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::Changed),
            },
            Row {
                name: "another inode under length without checksums: read it back first",
                world: length,
                file: |f| {
                    no_checksum(f);
                    present(f, 4 * MIB, f.mtime_ns, 999);
                    not_read_back(f);
                },
                holds: &[],
                verdict: Verdict::Confirm,
            },
            Row {
                name: "another inode and another mtime: changed, no read-back",
                world: same,
                file: |f| present(f, 4 * MIB, f.mtime_ns + 1, 999),
                holds: &[],
                verdict: Verdict::Keep(Keep::Changed),
            },
            Row {
                name: "another inode, no record of what was sent",
                world: length,
                file: |f| {
                    f.sent = SentSummary::default();
                    present(f, 4 * MIB, f.mtime_ns, 999);
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::NoSentRecord),
            },
            Row {
                name: "chunks read from two inodes (a remount mid-upload): read it back",
                world: same,
                file: |f| {
                    f.sent.ino = None;
                    not_read_back(f);
                },
                holds: &[],
                verdict: Verdict::Confirm,
            },
            Row {
                name: "not a regular file",
                world: same,
                file: |f| f.on_card = OnCard::NotRegular,
                holds: &[],
                verdict: Verdict::Keep(Keep::NotRegular),
            },
            Row {
                name: "gone already",
                world: same,
                file: |f| f.on_card = OnCard::Missing,
                holds: &[],
                verdict: Verdict::Gone,
            },
            Row {
                name: "uploaded to another endpoint",
                world: same,
                file: |f| f.endpoint_ok = false,
                holds: &[],
                verdict: Verdict::Keep(Keep::OtherEndpoint),
            },
            Row {
                name: "nothing recorded of what was sent",
                world: length,
                file: |f| f.sent = SentSummary::default(),
                holds: &[],
                verdict: Verdict::Keep(Keep::NoSentRecord),
            },
            Row {
                name: "a gap in what was sent (a restart mid-upload)",
                world: length,
                file: |f| f.sent.bytes -= MIB,
                holds: &[],
                verdict: Verdict::Keep(Keep::SentIncomplete),
            },
            Row {
                name: "no checksum under checksum",
                world: same,
                file: no_checksum,
                holds: &[],
                verdict: Verdict::Keep(Keep::NoChecksum),
            },
            Row {
                name: "no checksum under length: read it back first",
                world: length,
                file: |f| {
                    no_checksum(f);
                    not_read_back(f);
                },
                holds: &[],
                verdict: Verdict::Confirm,
            },
            Row {
                name: "no checksum under length, read back the same",
                world: length,
                file: |f| {
                    no_checksum(f);
                    f.read_back = ReadBack::Same { ino: 101 };
                },
                holds: &[],
                verdict: Verdict::Free,
            },
            Row {
                name: "no checksum under length, read back different",
                world: length,
                file: |f| {
                    no_checksum(f);
                    f.read_back = ReadBack::Differs { at: MIB };
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::ReadBackDiffers { at: MIB }),
            },
            Row {
                name: "no checksum under length, unreadable",
                world: length,
                file: |f| {
                    no_checksum(f);
                    f.read_back = ReadBack::Failed("EIO".into());
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::ReadBackFailed {
                    detail: "EIO".into(),
                }),
            },
            Row {
                name: "checksummed under length is read back too",
                world: length,
                file: not_read_back,
                holds: &[],
                verdict: Verdict::Confirm,
            },
            Row {
                name: "the server's upload is short",
                world: same,
                file: |f| {
                    f.server = Server::Incomplete {
                        offset: MIB,
                        length: Some(4 * MIB),
                    }
                },
                holds: &[],
                verdict: Verdict::Keep(Keep::ServerIncomplete {
                    offset: MIB,
                    length: Some(4 * MIB),
                }),
            },
            Row {
                name: "the server lost it",
                world: same,
                file: |f| f.server = Server::Lost,
                holds: &[],
                verdict: Verdict::Keep(Keep::ServerLost),
            },
            Row {
                name: "the server's answer is doubtful",
                world: same,
                file: |f| f.server = Server::Doubt("503".into()),
                holds: &[],
                verdict: Verdict::Keep(Keep::ServerDoubt {
                    detail: "503".into(),
                }),
            },
        ]
    }

    #[test]
    fn each_rule_decides_as_the_table_says() {
        for row in rows() {
            let mut w = world();
            (row.world)(&mut w);
            let mut f = file(1);
            (row.file)(&mut f);
            let d = decide(&w, &[f]);
            assert_eq!(d.holds, row.holds, "{}: holds", row.name);
            assert_eq!(d.files, vec![(1, row.verdict)], "{}: verdict", row.name);
        }
    }

    #[test]
    fn oldest_first_until_the_threshold_plus_the_margin_is_reached() {
        // 10 MiB free of 100, target 20 %: 10 MiB to free, i.e. three 4 MiB files.
        let files: Vec<FileFacts> = (1..=5).rev().map(file).collect();
        let d = decide(&world(), &files);
        assert_eq!(d.need_bytes, 10 * MIB);
        assert_eq!(d.target_free_bytes, Some(20 * MIB));
        let v: Vec<(i64, Verdict)> = d.files;
        assert_eq!(
            v,
            vec![
                (1, Verdict::Free),
                (2, Verdict::Free),
                (3, Verdict::Free),
                (4, Verdict::NotNeeded),
                (5, Verdict::NotNeeded),
            ]
        );
    }

    #[test]
    fn a_kept_file_does_not_count_and_the_next_one_takes_its_place() {
        let mut files: Vec<FileFacts> = (1..=5).map(file).collect();
        files[1].server = Server::Lost;
        let d = decide(&world(), &files);
        let freed: Vec<i64> = d
            .files
            .iter()
            .filter(|(_, v)| *v == Verdict::Free)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(freed, vec![1, 3, 4]);
    }

    #[test]
    fn just_below_the_threshold_frees_up_to_the_margin() {
        let mut w = world();
        // 14.9 MiB free: below 15 %, 5.1 MiB to reach 20 %: two files.
        w.card.as_mut().unwrap().free_bytes = 15 * MIB - MIB / 10;
        let files: Vec<FileFacts> = (1..=3).map(file).collect();
        let d = decide(&w, &files);
        assert!(d.may_free());
        assert_eq!(d.need_bytes, 5 * MIB + MIB / 10);
        let n = d.files.iter().filter(|(_, v)| *v == Verdict::Free).count();
        assert_eq!(n, 2);
    }
}
