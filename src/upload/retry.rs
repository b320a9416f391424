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

/// The jitter added to a `Retry-After` is at most this many times half of it (so at most twice
/// it): the rare long draw of an exponential must not leave a camera idle for many periods.
pub const RETRY_AFTER_JITTER_CAP: f64 = 4.0;

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
    /// given; `rand01` in [0, 1) is the jitter draw.
    ///
    /// Without `Retry-After`: a uniform draw in `[0, min(max, base * 2^attempts))` ("full
    /// jitter"). With it: what the server asked, never less, plus an exponential draw with a
    /// mean of half of it, capped at twice it ([`RETRY_AFTER_JITTER_CAP`]), the whole bounded by
    /// [`MAX_RETRY_AFTER`]. On average a camera waits 1.5 times what the server asked.
    ///
    /// Why exponential: a fleet that hit the same outage should come back as spread as
    /// independent cameras can be (issue 29, part 4). A uniform `R + U(0, R/2)` kept each
    /// camera's phase close to its arrival, so a fleet that arrived within 20 s came back in a
    /// bunch (busiest second 4.3x-6.4x the mean; docs/SOAK.md); a uniform `R + U(0, R)` with the
    /// same mean wait still came back 1.27x as bunched as the ideal fleet for 300 cameras in
    /// the model. A memoryless draw forgets the arrival fastest: 1.10x-1.19x of the ideal for 100
    /// and 300 cameras in the model, and measured in docs/SOAK.md ("Fleet, round 3").
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>, rand01: f64) -> Duration {
        if let Some(r) = retry_after {
            let r = r.min(MAX_RETRY_AFTER);
            // Inverse of the exponential CDF: -ln(1 - u) has mean 1; 1 - u is in (0, 1].
            let e = -(1.0 - rand01.clamp(0.0, 1.0 - f64::EPSILON)).ln();
            let extra = (r / 2).mul_f64(e.min(RETRY_AFTER_JITTER_CAP));
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
        rand01: f64,
    ) -> i64 {
        let d = self.delay(attempts, retry_after, rand01);
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
                b.delay(attempts, ra, draw),
                want,
                "attempts {attempts} retry_after {ra:?} draw {draw}"
            );
        }
    }

    #[test]
    fn retry_after_jitter_is_exponential_and_capped() {
        let b = Backoff {
            base: S(2),
            max: S(60),
        };
        let r = S(600);
        let ms = |d: Duration| d.as_millis() as i64;
        // The inverse CDF: draw 0.5 is the median, R/2 * ln 2 over R.
        assert_eq!(ms(b.delay(0, Some(r), 0.0)), 600_000);
        assert!((ms(b.delay(0, Some(r), 0.5)) - 807_944).abs() <= 1);
        // A long draw is capped at twice the server's wait; 1.0 itself (out of range) too.
        assert_eq!(b.delay(0, Some(r), 0.999), S(1800));
        assert_eq!(b.delay(0, Some(r), 1.0), S(1800));
        // Over an even spread of draws: never sooner than asked, never over 3R, and on
        // average about 1.5R (the cap takes 2 % of the mean's extra half).
        let n = 10_000;
        let waits: Vec<f64> = (0..n)
            .map(|i| b.delay(3, Some(r), (f64::from(i) + 0.5) / f64::from(n)))
            .map(|d| d.as_secs_f64())
            .collect();
        assert!(waits.iter().all(|&w| (600.0..=1800.0).contains(&w)));
        let mean = waits.iter().sum::<f64>() / f64::from(n);
        assert!((890.0..=900.0).contains(&mean), "mean {mean}");
        // Half the cameras come back within R + R/2 * ln 2, a tenth after R + R/2 * ln 10.
        let within = |t: f64| waits.iter().filter(|&&w| w <= t).count() as f64 / f64::from(n);
        assert!((within(807.9) - 0.5).abs() < 0.01);
        assert!((within(600.0 + 300.0 * 10f64.ln()) - 0.9).abs() < 0.01);
    }

    #[test]
    fn next_attempt_rounds_up_to_whole_seconds() {
        let b = Backoff {
            base: S(2),
            max: S(3600),
        };
        assert_eq!(b.next_attempt_at(1000, 0, None, 0.0), 1000);
        assert_eq!(b.next_attempt_at(1000, 0, None, 0.25), 1001);
        assert_eq!(b.next_attempt_at(1000, 3, None, 0.5), 1008);
        assert_eq!(b.next_attempt_at(1000, 0, Some(S(120)), 0.0), 1120);
        // 120 + 60 * ln 2 = 161.6: rounded up.
        assert_eq!(b.next_attempt_at(1000, 0, Some(S(120)), 0.5), 1162);
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
        assert_eq!(b.delay(30, None, 0.5), S(5));
    }
}
