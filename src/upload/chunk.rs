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
//! - a 413 answer to a PATCH: the limit is below that body, at once;
//! - a PATCH whose body write failed (broken pipe, reset) and whose upload the server then
//!   reports without any of its bytes, twice in a row at that length or more (once is a
//!   link that dropped, or an instance that died before it kept anything).
//!
//! Either halves the cap on bodies (whole MiB, not below [`MIN`]) for every upload of this
//! daemon run; a body at least that long accepted clears a first strike. It is not kept
//! across restarts: learning it again costs one or two refused bodies, each cut after the
//! first megabytes, and a maker who knows the limit sets `cloud.chunk_size_mib` below it.

use std::sync::Mutex;
use std::time::Duration;

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

/// The longest PATCH body the path to the server accepts, learnt from its refusals (module
/// docs, "A proxy's limit on request bodies"). One per daemon, shared by every upload.
#[derive(Debug, Default)]
pub struct BodyLimit {
    state: Mutex<LimitState>,
}

#[derive(Debug, Default)]
struct LimitState {
    /// Bodies are at most this long; `None`: nothing was refused.
    cap: Option<u64>,
    /// A first body write cut at this length with nothing kept.
    strike: Option<u64>,
}

impl BodyLimit {
    /// The cap on bodies, if one was learnt.
    pub fn cap(&self) -> Option<u64> {
        self.lock().cap
    }

    /// `rule` with its bound under the learnt cap.
    pub fn apply(&self, rule: &Rule) -> Rule {
        let mut r = *rule;
        if let Some(cap) = self.cap() {
            r.bound = r.bound.min(cap);
        }
        r
    }

    /// A PATCH of `len` bytes was answered 413. Returns the new cap when it was lowered
    /// (`None`: the body was already at [`MIN`], and nothing smaller is sent).
    pub fn refused(&self, len: u64) -> Option<u64> {
        let mut st = self.lock();
        st.strike = None;
        st.lower_below(len)
    }

    /// A PATCH of `len` bytes failed while its body was written, and the server then held none
    /// of it. The second such cut at this length or more lowers the cap (returned).
    pub fn cut_with_nothing_kept(&self, len: u64) -> Option<u64> {
        let mut st = self.lock();
        match st.strike {
            Some(first) if len >= first => {
                st.strike = None;
                st.lower_below(first)
            }
            Some(first) => {
                st.strike = Some(first.min(len));
                None
            }
            None => {
                st.strike = Some(len);
                None
            }
        }
    }

    /// A PATCH of `len` bytes was accepted: a first strike at this length or less was a cut
    /// of another kind.
    pub fn accepted(&self, len: u64) {
        let mut st = self.lock();
        if st.strike.is_some_and(|s| len >= s) {
            st.strike = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        // A panic elsewhere while holding it left plain numbers: still valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LimitState {
    /// Half of `len` in whole MiB, at least [`MIN`], if that is below the cap so far.
    fn lower_below(&mut self, len: u64) -> Option<u64> {
        if len <= MIN {
            return None;
        }
        let new = (len / 2 / MIB * MIB).max(MIN);
        if self.cap.is_some_and(|c| c <= new) {
            return None;
        }
        self.cap = Some(new);
        Some(new)
    }
}

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
        let r = rule(ChunkSizing::Auto, 64, 30);
        assert_eq!(
            limit.apply(&r).bound,
            64 * MIB,
            "nothing refused: the maker's bound"
        );
        assert_eq!(limit.refused(64 * MIB), Some(32 * MIB));
        assert_eq!(limit.apply(&r).bound, 32 * MIB);
        assert_eq!(
            limit.refused(40 * MIB),
            Some(20 * MIB),
            "a refusal under the cap"
        );
        assert_eq!(
            limit.refused(50 * MIB),
            None,
            "half of it is above the cap already"
        );
        assert_eq!(limit.cap(), Some(20 * MIB));
        assert_eq!(
            limit.refused(3 * MIB + 5),
            Some(MIB),
            "whole MiB, at least one"
        );
        assert_eq!(limit.refused(MIB), None, "nothing below 1 MiB");
        assert_eq!(limit.cap(), Some(MIB));
        limit.accepted(MIB);
        assert_eq!(
            limit.cap(),
            Some(MIB),
            "an accepted body never raises the cap"
        );
        let fixed = rule(ChunkSizing::Fixed, 8, 30);
        assert_eq!(
            chunk_len(&limit.apply(&fixed), None),
            MIB,
            "fixed sizes obey it too"
        );
    }

    #[test]
    fn a_cut_with_nothing_kept_lowers_the_cap_only_the_second_time() {
        let limit = BodyLimit::default();
        assert_eq!(
            limit.cut_with_nothing_kept(64 * MIB),
            None,
            "once: a link that dropped"
        );
        assert_eq!(limit.cut_with_nothing_kept(64 * MIB), Some(32 * MIB));
        assert_eq!(
            limit.cut_with_nothing_kept(32 * MIB),
            None,
            "a new strike at the new cap"
        );
        limit.accepted(32 * MIB);
        assert_eq!(
            limit.cut_with_nothing_kept(32 * MIB),
            None,
            "a body that long went through meanwhile: the first strike was something else"
        );
        assert_eq!(
            limit.cut_with_nothing_kept(8 * MIB),
            None,
            "shorter: a new first strike"
        );
        assert_eq!(
            limit.cut_with_nothing_kept(32 * MIB),
            Some(4 * MIB),
            "below the shorter one"
        );
        limit.accepted(2 * MIB);
        assert_eq!(limit.cut_with_nothing_kept(4 * MIB), None);
        limit.accepted(2 * MIB);
        assert_eq!(
            limit.cut_with_nothing_kept(4 * MIB),
            Some(2 * MIB),
            "shorter bodies accepted do not clear a strike at 4 MiB"
        );
    }
}
