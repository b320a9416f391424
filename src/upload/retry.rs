//! The retry schedule: when to try an item again after a transient failure.
//!
//! Invariant: a pure function of the attempt count, the server's `Retry-After` and one random
//! draw. The schedule's state (attempts, next attempt time) lives in the database, so a restart
//! neither forgets a back-off nor hammers the server.
//!
//! Why not the `backoff` crate the issue names: it is unmaintained (RUSTSEC-2025-0012), and its
//! `ExponentialBackoff` is a stateful iterator whose progress lives in memory, while ours must be
//! recomputed from the attempt count read back from the database after a restart. Its policy is
//! "exponential, capped, randomised"; the few lines below compute the same with full jitter
//! (AWS Architecture Blog, "Exponential Backoff And Jitter"), which spreads a fleet of cameras
//! that all lost the server at once better than backoff's ±50 % randomisation.

use std::time::{Duration, SystemTime};

use crate::config;

/// Exponential back-off with full jitter, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's wait.
    pub base: Duration,
    /// The cap of any wait we choose ourselves (`cloud.retry_max_secs`).
    pub max: Duration,
}

/// The first retry waits up to this long.
pub const DEFAULT_BASE: Duration = Duration::from_secs(2);

/// The longest `Retry-After` we obey. A server may ask for more than our own cap (we honour it:
/// it knows its load), but a typo'd date years ahead must not park an item forever.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

impl Backoff {
    /// The schedule from `[cloud]`: base [`DEFAULT_BASE`], cap `retry_max_secs`.
    pub fn from_config(cloud: &config::Cloud) -> Backoff {
        Backoff {
            base: DEFAULT_BASE,
            max: Duration::from_secs(cloud.retry_max_secs.max(1)),
        }
    }

    /// The wait before attempt number `attempts + 1`; `retry_after` from the server wins when
    /// given; `again`: the camera's previous answer from the server was such a `Retry-After`
    /// too (the outage goes on); `rand01` in [0, 1) is the jitter draw.
    ///
    /// Without `Retry-After`: a uniform draw in `[0, min(max, base * 2^attempts))` ("full
    /// jitter"). With it, never sooner than the server asked (`R`), bounded by
    /// [`MAX_RETRY_AFTER`]:
    /// - the first `Retry-After` of an outage: `R` plus a uniform draw in `[0, 2R)`. This
    ///   draw gives the camera a phase of its own, whatever instant it met the outage at;
    /// - each one after it (the answer to the request at the end of the last hold, within a
    ///   minute of it: `App::server_busy_again`): exactly `2R`, which keeps that phase.
    ///
    /// Why (issue 29, part 4): a fleet that hit one outage comes back as spread as
    /// independent cameras can be. After the recovery each camera's first request falls at a
    /// uniform instant of the `2R` that follows, whenever its cameras met the outage; a
    /// renewal draw at each 503 cannot do that (its next request is likeliest soonest, so a
    /// fleet that met the outage together comes back in a bunch): `R + U(0, R/2)` came back
    /// 1.5x-1.7x as bunched as the ideal fleet (docs/SOAK.md), `R + Exp(R/2)` 1.1x-1.6x; this
    /// rule 1.0x-1.1x in the model and in docs/SOAK.md's "Fleet, round 3". What it costs: a
    /// camera's first request after the recovery is on average `R` later (a renewal at `R +
    /// Exp(R/2)`: 0.83R, `R + U(0, R/2)`: 0.63R), and never more than `2R` (the renewals: `3R`
    /// and 1.5R), so the whole fleet is done sooner.
    pub fn delay(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        again: bool,
        rand01: f64,
    ) -> Duration {
        if let Some(r) = retry_after {
            let r = r.min(MAX_RETRY_AFTER);
            let extra = if again {
                r
            } else {
                (r * 2).mul_f64(rand01.clamp(0.0, 1.0))
            };
            return (r + extra).min(MAX_RETRY_AFTER);
        }
        // 2^31 * base overflows nothing with saturating_mul, but the shift itself must stay in
        // range; beyond 2^20 any sane base is past any sane cap anyway.
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempts.min(20))
            .min(self.max);
        ceiling.mul_f64(rand01.clamp(0.0, 1.0))
    }

    /// The unix second at which the next attempt is due, for the store's `next_attempt_at`.
    /// Rounded up, so a sub-second wait still waits.
    pub fn next_attempt_at(
        &self,
        now_unix: i64,
        attempts: u32,
        retry_after: Option<Duration>,
        again: bool,
        rand01: f64,
    ) -> i64 {
        let d = self.delay(attempts, retry_after, again, rand01);
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        now_unix.saturating_add(secs as i64)
    }
}

/// A jitter draw in [0, 1) for [`Backoff::delay`].
pub fn jitter() -> f64 {
    fastrand::f64()
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110 section 10.2.3).
/// A date in the past means "now" (zero). Anything else is ignored (`None`): a garbled header
/// must not stop the normal back-off.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // A huge number of seconds saturates instead of failing; `delay` bounds it.
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn full_jitter_grows_exponentially_and_is_capped() {
        let b = Backoff {
            base: S(2),
            max: S(60),
        };
        // (attempts, retry_after, draw, want)
        let cases: &[(u32, Option<Duration>, f64, Duration)] = &[
            (0, None, 0.0, S(0)),
            (0, None, 0.5, S(1)),
            (0, None, 0.999, Duration::from_millis(1998)),
            (1, None, 0.5, S(2)),
            (2, None, 0.5, S(4)),
            (4, None, 0.5, S(16)),
            (5, None, 0.5, S(30)),
            (6, None, 0.5, S(30)),
            (40, None, 0.5, S(30)),
            (u32::MAX, None, 1.0, S(60)),
            // Retry-After wins over our own cap and is never undercut (the draw's own
            // cases: `retry_after_jitter_is_exponential_and_capped`)...
            (0, Some(S(7)), 0.0, S(7)),
            (9, Some(S(8)), 0.0, S(8)),
            // ...nor stretched past the sanity bound.
            (0, Some(S(10 * 86_400)), 0.5, MAX_RETRY_AFTER),
        ];
        for &(attempts, ra, draw, want) in cases {
            assert_eq!(
                b.delay(attempts, ra, false, draw),
                want,
                "attempts {attempts} retry_after {ra:?} draw {draw}"
            );
        }
    }

    #[test]
    fn the_first_retry_after_draws_a_phase_and_the_next_ones_keep_it() {
        let b = Backoff {
            base: S(2),
            max: S(60),
        };
        let r = S(600);
        // The first of an outage: R plus U(0, 2R); the attempts count does not enter.
        assert_eq!(b.delay(0, Some(r), false, 0.0), S(600));
        assert_eq!(b.delay(7, Some(r), false, 0.25), S(900));
        assert_eq!(b.delay(0, Some(r), false, 0.5), S(1200));
        assert_eq!(b.delay(0, Some(r), false, 1.0), S(1800));
        // Over an even spread of draws: never sooner than asked, never over 3R, every
        // instant of the 2R after R as likely as any other (a tenth of the draws per tenth).
        let n = 10_000;
        let waits: Vec<f64> = (0..n)
            .map(|i| b.delay(3, Some(r), false, (f64::from(i) + 0.5) / f64::from(n)))
            .map(|d| d.as_secs_f64())
            .collect();
        assert!(waits.iter().all(|&w| (600.0..=1800.0).contains(&w)));
        for tenth in 0..10 {
            let lo = 600.0 + 120.0 * f64::from(tenth);
            let share = waits.iter().filter(|&&w| lo <= w && w < lo + 120.0).count();
            assert_eq!(share, 1000, "tenth {tenth}");
        }
        // Each one after it: exactly 2R, whatever the draw, so the phase stays.
        for draw in [0.0, 0.3, 0.999] {
            assert_eq!(b.delay(4, Some(r), true, draw), S(1200));
        }
        // A new Retry-After is taken as it comes.
        assert_eq!(b.delay(4, Some(S(7)), true, 0.5), S(14));
    }

    #[test]
    fn next_attempt_rounds_up_to_whole_seconds() {
        let b = Backoff {
            base: S(2),
            max: S(3600),
        };
        assert_eq!(b.next_attempt_at(1000, 0, None, false, 0.0), 1000);
        assert_eq!(b.next_attempt_at(1000, 0, None, false, 0.25), 1001);
        assert_eq!(b.next_attempt_at(1000, 3, None, false, 0.5), 1008);
        assert_eq!(b.next_attempt_at(1000, 0, Some(S(120)), false, 0.0), 1120);
        // 120 + 240 * 0.3001 = 192.02: rounded up.
        assert_eq!(
            b.next_attempt_at(1000, 0, Some(S(120)), false, 0.3001),
            1193
        );
        assert_eq!(b.next_attempt_at(1000, 0, Some(S(120)), true, 0.3001), 1240);
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + S(1_700_000_000);
        let in_90s = httpdate::fmt_http_date(now + S(90));
        let past = httpdate::fmt_http_date(now - S(90));
        let cases: &[(&str, Option<Duration>)] = &[
            ("120", Some(S(120))),
            (" 0 ", Some(S(0))),
            (
                "99999999999999999999999",
                Some(Duration::from_secs(u64::MAX)),
            ),
            (&in_90s, Some(S(90))),
            (&past, Some(S(0))),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_retry_after(v, now), *want, "{v:?}");
        }
    }

    #[test]
    fn config_cap_is_used() {
        let cloud = config::Cloud {
            retry_max_secs: 10,
            ..Default::default()
        };
        let b = Backoff::from_config(&cloud);
        assert_eq!(b.delay(30, None, false, 0.5), S(5));
    }
}
