//! How many bytes each PATCH carries (`cloud.chunk_sizing`, `cloud.chunk_size_mib`).
//!
//! Every PATCH waits one round trip for its answer before the next can start, so on a fast,
//! distant link fixed small chunks leave the link idle at every boundary (8 MiB at 100 Mbit/s
//! and 80 ms RTT: 11 % of the time). With `chunk_sizing = "auto"` a chunk is sized from the
//! rate the previous ones reached so that it lasts about [`TARGET`]: the boundary then costs a
//! few percent at most, whatever the link.
//!
//! Invariants:
//! - a chunk is never longer than `chunk_size_mib` (the maker's upper bound in "auto", the
//!   size itself in "fixed"), nor shorter than [`MIN`] (or the bound, if that is smaller);
//! - a chunk lasts at most half of `stall_secs`: a failed PATCH to a server that verifies
//!   checksums loses the whole chunk (it discards a body it cannot verify), and that loss is
//!   kept below what the maker already accepts as a stall;
//! - the rule is a pure function of the measured rate ([`chunk_len`]); memory does not depend
//!   on it: bodies stream from the file and checksums are computed by reading the chunk a
//!   second time (`upload/source`), so a large chunk costs no buffer;
//! - a chunk is never longer than what the path to the server was seen to refuse
//!   ([`BodyLimit`]): a proxy before the tus server (nginx's `client_max_body_size`, a CDN's
//!   request limit, a balancer's rule) refuses a body over its limit, every time.
//!
//! ## A proxy's limit on request bodies
//! Such a proxy answers 413 as soon as it reads `Content-Length`, and closes. The answer is
//! rarely seen: the client is still writing the body, the close (or the reset that follows
//! it) fails the write, and the client reports a broken pipe (every client alike: hyper,
//! Python's http.client, node's, curl without `Expect`). Told nothing, a client retries the
//! same body forever. So the limit is learnt from what is seen:
//! - a 413 answer to a PATCH: the limit is below that body, at once, for the daemon's run;
//! - two PATCHes of one upload in a row, at the same offset, that broke (broken pipe, reset)
//!   and after each of which the server reported none of their bytes: the limit is below the
//!   shorter one, for an hour ([`CUT_CAP_LASTS`]). Once is a link that dropped, or an instance
//!   that died before it kept anything; two at the same offset of the same upload is the same
//!   body refused twice. (Where the cut came, within the body or after it, is not told: the
//!   kernel's and hyper's buffers hold megabytes, so a refused 2 MiB body may be "sent".) The
//!   hour bounds what a false reading costs (shorter PATCHes; a fast, distant link loses a few
//!   percent); a true one is learnt again then, with two refused bodies a halving.
//!
//! Either halves the cap on bodies (whole MiB, not below [`MIN`]) for every upload of the
//! daemon. It is not kept across restarts: learning it again costs a few refused bodies, each
//! cut after its first megabytes, and a maker who knows the limit sets `cloud.chunk_size_mib`
//! below it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{self, ChunkSizing};

const MIB: u64 = 1024 * 1024;

/// How long an automatically sized PATCH should last.
pub const TARGET: Duration = Duration::from_secs(5);

/// The first chunk of an attempt, before any rate is known: short enough to cost little on a
/// slow link (1.7 s at 20 Mbit/s), long enough to measure a fast one.
pub const FIRST: u64 = 4 * MIB;

/// No automatically sized chunk is shorter: below this the per-request cost dominates.
pub const MIN: u64 = MIB;

/// What the rule needs from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Auto or fixed.
    pub sizing: ChunkSizing,
    /// `chunk_size_mib` in bytes: the upper bound (auto) or every chunk's size (fixed).
    pub bound: u64,
    /// The longest a chunk may last (half of `stall_secs`, at most [`TARGET`]).
    pub secs: Duration,
}

impl Rule {
    /// The rule `[cloud]` sets.
    pub fn of(cloud: &config::Cloud) -> Rule {
        Rule {
            sizing: cloud.chunk_sizing,
            bound: cloud.chunk_size().max(1),
            secs: TARGET.min(Duration::from_secs(cloud.stall_secs.max(1)) / 2),
        }
    }
}

/// The length of the next chunk, given the rate (bytes per second) the last acknowledged
/// chunk of this attempt reached, if any. Whole MiB where the rule sizes it.
pub fn chunk_len(rule: &Rule, rate: Option<u64>) -> u64 {
    let auto = match (rule.sizing, rate) {
        (ChunkSizing::Fixed, _) => return rule.bound,
        (ChunkSizing::Auto, None) => FIRST,
        (ChunkSizing::Auto, Some(r)) => {
            let bytes = (r as f64 * rule.secs.as_secs_f64()) as u64;
            (bytes / MIB * MIB).max(MIN)
        }
    };
    auto.min(rule.bound)
}

/// Measures the rate of acknowledged chunks for [`chunk_len`].
#[derive(Debug, Default)]
pub struct Pacer {
    rate: Option<u64>,
}

impl Pacer {
    /// A chunk of `len` bytes was acknowledged `took` after its PATCH started (its answer's
    /// round trip included: that is the rate the link gave this upload).
    pub fn acknowledged(&mut self, len: u64, took: Duration) {
        let secs = took.as_secs_f64().max(1e-3);
        self.rate = Some((len as f64 / secs) as u64);
    }

    /// Whether a chunk of this attempt was acknowledged yet (until then `next_len` is a guess).
    pub fn knows_rate(&self) -> bool {
        self.rate.is_some()
    }

    /// The next chunk's length under `rule`.
    pub fn next_len(&self, rule: &Rule) -> u64 {
        chunk_len(rule, self.rate)
    }
}

/// How long a cap learnt from broken PATCHes holds (module docs).
pub const CUT_CAP_LASTS: Duration = Duration::from_secs(3600);

/// The longest PATCH body the path to the server accepts, learnt from its refusals (module
/// docs, "A proxy's limit on request bodies"). One per daemon, shared by every upload.
#[derive(Debug, Default)]
pub struct BodyLimit {
    state: Mutex<LimitState>,
}

#[derive(Debug, Default)]
struct LimitState {
    /// From a 413: for the daemon's run.
    seen: Option<u64>,
    /// From two broken PATCHes, and when: for [`CUT_CAP_LASTS`].
    cut: Option<(u64, Instant)>,
    /// Per upload URL, the newest last.
    uploads: std::collections::VecDeque<(String, Track)>,
}

/// How a cap was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A 413 answer to the PATCH.
    Answered413,
    /// Two PATCHes of one upload in a row at one offset broke with nothing kept.
    BrokeTwice,
}

impl BodyLimit {
    /// The cap on bodies at `now`, if one was learnt.
    pub fn cap(&self, now: Instant) -> Option<u64> {
        self.lock().cap(now)
    }

    /// `rule` with its bound under the cap at `now`.
    pub fn apply(&self, rule: &Rule, now: Instant) -> Rule {
        let mut r = *rule;
        if let Some(cap) = self.cap(now) {
            r.bound = r.bound.min(cap);
        }
        r
    }

    /// A body of `len` bytes was refused (`how`) at `now`. Returns the new cap when that
    /// lowered it: half of `len` in whole MiB, at least [`MIN`] (`None`: at [`MIN`] already,
    /// and nothing shorter is sent, or the cap is that low already).
    pub fn refused(&self, len: u64, how: Refusal, now: Instant) -> Option<u64> {
        let mut st = self.lock();
        if len <= MIN {
            return None;
        }
        let new = (len / 2 / MIB * MIB).max(MIN);
        let before = st.cap(now);
        // A 413 is kept for the run even under a lower cap from cuts, which expires.
        match how {
            Refusal::Answered413 => st.seen = Some(st.seen.map_or(new, |s| s.min(new))),
            Refusal::BrokeTwice if before.is_none_or(|c| new < c) => st.cut = Some((new, now)),
            Refusal::BrokeTwice => {}
        }
        st.cap(now).filter(|c| before.is_none_or(|b| *c < b))
    }

    /// A PATCH of `len` bytes at `offset` of the upload at `url` broke (a broken pipe, a
    /// reset, closed before the answer): judged at that upload's next `HEAD` ([`Self::judge`]),
    /// in this attempt or a later one.
    pub fn broke(&self, url: &str, offset: u64, len: u64) {
        self.lock().track(url).broke = Some((offset, len));
    }

    /// A `HEAD` of the upload at `url` says the server holds `offset`. Returns the length of
    /// a body to treat as refused: the second PATCH in a row at one offset that broke with
    /// none of it kept.
    pub fn judge(&self, url: &str, offset: u64) -> Option<u64> {
        let mut st = self.lock();
        // Only an upload that broke has a record (every HEAD making one would push out those).
        let (_, t) = st.uploads.iter_mut().find(|(u, _)| u == url)?;
        let (base, len) = t.broke.take()?;
        if offset != base {
            t.strikes = Strikes::default();
            return None;
        }
        t.strikes.broke_with_nothing_kept(base, len)
    }

    /// A PATCH of the upload at `url` was accepted: its run of cuts ended.
    pub fn accepted(&self, url: &str) {
        let mut st = self.lock();
        st.uploads.retain(|(u, _)| u != url);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        // A panic elsewhere while holding it left plain numbers: still valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LimitState {
    /// The upload's record, made (the oldest dropped past [`TRACKED`]) if there is none.
    fn track(&mut self, url: &str) -> &mut Track {
        if let Some(i) = self.uploads.iter().position(|(u, _)| u == url) {
            return &mut self.uploads[i].1;
        }
        if self.uploads.len() >= TRACKED {
            self.uploads.pop_front();
        }
        self.uploads.push_back((url.to_string(), Track::default()));
        &mut self.uploads.back_mut().expect("just pushed").1
    }

    fn cap(&self, now: Instant) -> Option<u64> {
        let cut = self
            .cut
            .filter(|(_, at)| now.saturating_duration_since(*at) < CUT_CAP_LASTS)
            .map(|(c, _)| c);
        match (self.seen, cut) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One upload's broken PATCHes, judged by the `HEAD` after each (module docs): a cut at an
/// offset is a strike; a second one at the same offset is a refusal of the shorter body.
#[derive(Debug, Default)]
struct Strikes {
    last: Option<(u64, u64)>,
}

impl Strikes {
    /// A PATCH of `len` bytes at `offset` broke and the server then held none of it. Returns
    /// the body length to treat as refused, on the second such cut at the same offset.
    fn broke_with_nothing_kept(&mut self, offset: u64, len: u64) -> Option<u64> {
        match self.last.take() {
            Some((o, l)) if o == offset => Some(l.min(len)),
            _ => {
                self.last = Some((offset, len));
                None
            }
        }
    }
}

/// What is known of one upload's cuts: the last PATCH that broke, not judged yet, and the
/// run of cuts judged so far. Kept across attempts (a cut that ends an attempt is judged by
/// the next attempt's `HEAD`).
#[derive(Debug, Default)]
struct Track {
    broke: Option<(u64, u64)>,
    strikes: Strikes,
}

/// Uploads whose cuts are tracked at once: more than the uploads in flight (at most 4).
const TRACKED: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 1_000_000 / 8;

    fn rule(sizing: ChunkSizing, bound_mib: u64, stall_secs: u64) -> Rule {
        let cloud = config::Cloud {
            chunk_sizing: sizing,
            chunk_size_mib: bound_mib,
            stall_secs,
            ..Default::default()
        };
        Rule::of(&cloud)
    }

    #[test]
    fn chunks_last_about_five_seconds_within_the_makers_bound_and_the_stall_limit() {
        use ChunkSizing::{Auto, Fixed};
        // (sizing, chunk_size_mib, stall_secs, measured rate, expected MiB, why)
        type Case = (ChunkSizing, u64, u64, Option<u64>, u64, &'static str);
        let cases: &[Case] = &[
            (Auto, 64, 30, None, 4, "no rate yet: the first chunk"),
            (
                Auto,
                2,
                30,
                None,
                2,
                "the first chunk within a smaller bound",
            ),
            (
                Auto,
                64,
                30,
                Some(20 * MBIT),
                11,
                "20 Mbit/s: 12.5 MB in 5 s",
            ),
            (
                Auto,
                64,
                30,
                Some(100 * MBIT),
                59,
                "100 Mbit/s: 62.5 MB in 5 s",
            ),
            (
                Auto,
                64,
                30,
                Some(1000 * MBIT),
                64,
                "gigabit: the maker's bound",
            ),
            (
                Auto,
                1024,
                30,
                Some(1000 * MBIT),
                596,
                "gigabit, a larger bound",
            ),
            (Auto, 64, 30, Some(MBIT), 1, "1 Mbit/s: never below 1 MiB"),
            (
                Auto,
                64,
                4,
                Some(100 * MBIT),
                23,
                "stall_secs 4: chunks of 2 s",
            ),
            (
                Auto,
                64,
                1,
                Some(100 * MBIT),
                5,
                "stall_secs 1: chunks of 0.5 s",
            ),
            (
                Auto,
                8,
                30,
                Some(100 * MBIT),
                8,
                "the bound the example used to ship",
            ),
            (
                Fixed,
                8,
                30,
                None,
                8,
                "fixed: the maker's size from the start",
            ),
            (
                Fixed,
                8,
                30,
                Some(100 * MBIT),
                8,
                "fixed: whatever the rate",
            ),
            (
                Fixed,
                512,
                1,
                Some(MBIT),
                512,
                "fixed: even past the stall limit",
            ),
        ];
        for &(sizing, bound, stall, rate, want, why) in cases {
            let got = chunk_len(&rule(sizing, bound, stall), rate);
            assert_eq!(
                got,
                want * MIB,
                "{why}: got {} MiB",
                got as f64 / MIB as f64
            );
        }
    }

    #[test]
    fn the_pacer_sizes_from_the_last_acknowledged_chunk() {
        let r = rule(ChunkSizing::Auto, 1024, 30);
        let mut p = Pacer::default();
        assert_eq!(p.next_len(&r), FIRST);
        p.acknowledged(4 * MIB, Duration::from_millis(500)); // 8 MiB/s
        assert_eq!(p.next_len(&r), 40 * MIB);
        p.acknowledged(40 * MIB, Duration::from_secs(10)); // the link slowed to 4 MiB/s
        assert_eq!(p.next_len(&r), 20 * MIB);
        p.acknowledged(MIB, Duration::ZERO); // a clock that did not move is not infinite
        assert_eq!(p.next_len(&r), 1024 * MIB);
    }

    #[test]
    fn a_refused_body_halves_the_cap_down_to_one_mib_and_never_raises_it() {
        let limit = BodyLimit::default();
        let now = Instant::now();
        let r = rule(ChunkSizing::Auto, 64, 30);
        assert_eq!(
            limit.apply(&r, now).bound,
            64 * MIB,
            "nothing refused: the maker's bound"
        );
        let seen = Refusal::Answered413;
        assert_eq!(limit.refused(64 * MIB, seen, now), Some(32 * MIB));
        assert_eq!(limit.apply(&r, now).bound, 32 * MIB);
        assert_eq!(
            limit.refused(40 * MIB, seen, now),
            Some(20 * MIB),
            "a refusal under the cap"
        );
        assert_eq!(
            limit.refused(50 * MIB, seen, now),
            None,
            "half of it is above the cap already"
        );
        assert_eq!(limit.cap(now), Some(20 * MIB));
        assert_eq!(
            limit.refused(3 * MIB + 5, seen, now),
            Some(MIB),
            "whole MiB, at least one"
        );
        assert_eq!(limit.refused(MIB, seen, now), None, "nothing below 1 MiB");
        let later = now + CUT_CAP_LASTS * 10;
        assert_eq!(limit.cap(later), Some(MIB), "a 413 seen holds for the run");
        let fixed = rule(ChunkSizing::Fixed, 8, 30);
        assert_eq!(
            chunk_len(&limit.apply(&fixed, now), None),
            MIB,
            "fixed sizes obey it too"
        );
    }

    #[test]
    fn a_cap_learnt_from_broken_bodies_lasts_an_hour() {
        let limit = BodyLimit::default();
        let now = Instant::now();
        assert_eq!(
            limit.refused(64 * MIB, Refusal::BrokeTwice, now),
            Some(32 * MIB)
        );
        assert_eq!(limit.cap(now + CUT_CAP_LASTS / 2), Some(32 * MIB));
        assert_eq!(
            limit.cap(now + CUT_CAP_LASTS),
            None,
            "then the maker's bound again"
        );
        let then = now + CUT_CAP_LASTS;
        assert_eq!(
            limit.refused(64 * MIB, Refusal::Answered413, then),
            Some(32 * MIB)
        );
        assert_eq!(
            limit.refused(16 * MIB, Refusal::BrokeTwice, then),
            Some(8 * MIB)
        );
        assert_eq!(limit.cap(then), Some(8 * MIB), "the lower of the two");
        assert_eq!(
            limit.cap(then + CUT_CAP_LASTS),
            Some(32 * MIB),
            "the 413's stays"
        );
    }

    #[test]
    fn only_a_second_cut_at_the_same_offset_of_one_upload_is_a_refusal() {
        let l = BodyLimit::default();
        let (a, b) = ("http://h/files/a", "http://h/files/b");
        assert_eq!(l.judge(a, 0), None, "nothing broke");
        for i in 0..2 * TRACKED {
            l.judge(&format!("http://h/files/head{i}"), 0);
        }
        assert!(l.lock().uploads.is_empty(), "a HEAD alone is not tracked");
        l.broke(a, 0, 64 * MIB);
        assert_eq!(l.judge(a, 0), None, "once: a link that dropped");
        l.broke(a, 0, 64 * MIB);
        l.broke(b, 0, 64 * MIB);
        assert_eq!(l.judge(b, 0), None, "another upload's cut is its own first");
        assert_eq!(
            l.judge(a, 0),
            Some(64 * MIB),
            "judged later (another attempt) still"
        );
        l.broke(a, 0, 32 * MIB);
        assert_eq!(l.judge(a, 0), None, "a new run of cuts");
        l.broke(a, 0, 16 * MIB);
        assert_eq!(l.judge(a, 0), Some(16 * MIB), "the shorter of the two");
        l.broke(a, 0, 8 * MIB);
        assert_eq!(l.judge(a, MIB), None, "some of it kept: not refused");
        l.broke(a, MIB, 8 * MIB);
        assert_eq!(l.judge(a, MIB), None, "and the run starts again");
        l.accepted(a);
        l.broke(a, MIB, 8 * MIB);
        assert_eq!(
            l.judge(a, MIB),
            None,
            "an accepted PATCH between them ends the run"
        );
        l.broke(a, MIB, 8 * MIB);
        for i in 0..TRACKED {
            l.broke(&format!("http://h/files/{i}"), 0, 8 * MIB);
        }
        assert_eq!(
            l.judge(a, MIB),
            None,
            "the oldest forgotten past {TRACKED} uploads"
        );
    }
}
