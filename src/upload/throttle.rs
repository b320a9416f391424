//! The user's bandwidth cap (`max_rate_kib_per_sec`): a token bucket the PATCH bodies are paced
//! through, shared by every upload in flight. The same point counts the bytes that go over a
//! cellular link, for the data plan (`cellular_daily_mib`), and holds them at its end.
//!
//! Invariants: over any second the bytes handed to the connections stay within the rate (plus
//! a burst of a tenth of a second); a body waits in steps of at most [`STEP`], re-reading the
//! rate each time, so a new limit applies to the upload in flight within a second without
//! restarting it; a rate of 0 means no limit and no waiting. While the uplink is metered by
//! the plan, no more than the budget left is handed to a connection, and every byte handed is
//! counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};

/// The longest a body sleeps before it looks at the rate again.
pub const STEP: Duration = Duration::from_millis(100);

/// The smallest piece a body is cut into (tiny rates would otherwise mean one-byte writes).
const MIN_PIECE: usize = 1024;
/// The largest piece (bounds the burst at high rates, too).
const MAX_PIECE: usize = 64 * 1024;

/// The rate limit and its bucket. One per client; clones of the client share it.
#[derive(Debug)]
pub struct Throttle {
    /// Bytes per second; 0 = no limit.
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
    /// The uplink counts against the data plan (it is cellular).
    metering: AtomicBool,
    /// Bytes the plan still allows today, while `metering` (`u64::MAX`: no limit).
    budget_left: AtomicU64,
    /// Bytes sent while `metering`, not yet taken by [`Throttle::take_counted`].
    counted: AtomicU64,
}

/// A token bucket: `tokens` bytes may go now; it fills at the rate, up to a tenth of a second's
/// worth (smooth at the second scale, not a burst per chunk).
#[derive(Debug, Default, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// Takes `n` bytes at `now` under `rate` (bytes per second, > 0): `None` when they may go
    /// now, else how long until they may.
    pub fn take(&mut self, n: u64, rate: u64, now: Instant) -> Option<Duration> {
        let rate_f = rate as f64;
        let cap = (rate_f / 10.0).max(n as f64);
        let elapsed = self
            .last
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        self.tokens = (self.tokens + elapsed * rate_f).min(cap);
        self.last = Some(now);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            None
        } else {
            Some(Duration::from_secs_f64((n as f64 - self.tokens) / rate_f))
        }
    }
}

/// How big a piece of the body to send at a time under `rate`: about a tenth of a second.
pub fn piece_len(rate: u64) -> usize {
    if rate == 0 {
        return usize::MAX;
    }
    ((rate / 10) as usize).clamp(MIN_PIECE, MAX_PIECE)
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            rate: AtomicU64::new(0),
            bucket: Mutex::default(),
            metering: AtomicBool::new(false),
            budget_left: AtomicU64::new(u64::MAX),
            counted: AtomicU64::new(0),
        }
    }
}

impl Throttle {
    /// Whether the uplink counts against the data plan, and what the plan still allows today
    /// (`u64::MAX`: no limit). Set by the conditions loop at each reading.
    pub fn set_data_plan(&self, metering: bool, budget_left: u64) {
        self.budget_left.store(budget_left, Ordering::Relaxed);
        self.metering.store(metering, Ordering::Relaxed);
    }

    /// The bytes sent over a metered uplink since the last call.
    pub fn take_counted(&self) -> u64 {
        self.counted.swap(0, Ordering::Relaxed)
    }

    /// Puts back bytes [`Throttle::take_counted`] took that could not be recorded (a full
    /// state disk): the next take counts them again, so they are never forgotten.
    pub fn give_back_counted(&self, n: u64) {
        self.counted.fetch_add(n, Ordering::Relaxed);
    }

    /// How many bytes may go now under the data plan.
    fn allowance(&self) -> u64 {
        if self.metering.load(Ordering::Relaxed) {
            self.budget_left.load(Ordering::Relaxed)
        } else {
            u64::MAX
        }
    }

    /// Counts `n` bytes handed to a connection.
    fn spend(&self, n: u64) {
        if self.metering.load(Ordering::Relaxed) {
            self.counted.fetch_add(n, Ordering::Relaxed);
            let _ = self
                .budget_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(n))
                });
        }
    }

    /// Sets the limit in bytes per second (0: none). Applies to bodies in flight at their next
    /// step.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// The limit in bytes per second (0: none).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Waits until `n` bytes may go.
    async fn admit(&self, n: u64) {
        loop {
            let rate = self.rate();
            if rate == 0 {
                return;
            }
            let wait =
                self.bucket
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(n, rate, Instant::now());
            match wait {
                None => return,
                Some(d) => tokio::time::sleep(d.min(STEP)).await,
            }
        }
    }
}

/// `body` paced through `throttle`: cut into pieces of about a tenth of a second at the rate in
/// force, each let through when the bucket has room and the data plan allows it (with the
/// plan used up, the body waits; the gate then stops the upload).
pub fn paced<S>(
    body: S,
    throttle: Arc<Throttle>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let state = (Box::pin(body), Bytes::new(), throttle);
    futures_util::stream::unfold(state, |(mut body, mut rest, throttle)| async move {
        if rest.is_empty() {
            match body.next().await? {
                Ok(b) => rest = b,
                Err(e) => return Some((Err(e), (body, rest, throttle))),
            }
        }
        let allowed = loop {
            match throttle.allowance() {
                0 => tokio::time::sleep(STEP).await,
                n => break usize::try_from(n).unwrap_or(usize::MAX),
            }
        };
        let len = piece_len(throttle.rate()).min(rest.len()).min(allowed);
        let piece = rest.split_to(len);
        throttle.admit(piece.len() as u64).await;
        throttle.spend(piece.len() as u64);
        Some((Ok(piece), (body, rest, throttle)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes let through in `secs` of simulated time by a body that takes pieces as fast as the
    /// bucket allows.
    fn simulate(rate: u64, secs: f64) -> u64 {
        let mut b = Bucket::default();
        let start = Instant::now();
        let mut now = start;
        let piece = piece_len(rate) as u64;
        let mut sent = 0;
        while now.duration_since(start).as_secs_f64() < secs {
            match b.take(piece, rate, now) {
                None => sent += piece,
                Some(d) => now += d.min(STEP),
            }
        }
        sent
    }

    #[test]
    fn the_rate_holds_over_seconds_at_every_size() {
        for rate in [8 * 1024, 100 * 1024, 1024 * 1024, 50 * 1024 * 1024] {
            let sent = simulate(rate, 10.0) as f64;
            let want = rate as f64 * 10.0;
            assert!(
                (sent - want).abs() / want < 0.05,
                "rate {rate}: {sent} bytes in 10 s, want {want}"
            );
        }
    }

    #[test]
    fn no_burst_after_a_pause_beyond_a_tenth_of_a_second() {
        let rate = 100 * 1024;
        let mut b = Bucket::default();
        let t0 = Instant::now();
        assert!(
            b.take(1, rate, t0).is_some(),
            "an empty bucket at the start"
        );
        // An hour idle earns a tenth of a second's worth, not an hour's.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.take(rate / 10, rate, later), None);
        assert!(b.take(1024, rate, later).is_some());
    }

    #[tokio::test]
    async fn a_metered_body_stops_at_the_budget_and_counts_what_it_sent() {
        let t = Arc::new(Throttle::default());
        t.set_data_plan(true, 3000);
        let chunks = vec![
            Ok(Bytes::from(vec![1u8; 2000])),
            Ok(Bytes::from(vec![2u8; 2000])),
        ];
        let mut body = Box::pin(paced(futures_util::stream::iter(chunks), t.clone()));
        let mut got = 0;
        while let Ok(Some(piece)) =
            tokio::time::timeout(Duration::from_millis(300), body.next()).await
        {
            got += piece.unwrap().len();
        }
        assert_eq!(got, 3000, "no byte past the budget");
        assert_eq!(t.take_counted(), 3000);
        assert_eq!(t.take_counted(), 0);
        // A new day's budget lets the rest through.
        t.set_data_plan(true, 10_000);
        assert_eq!(body.next().await.unwrap().unwrap().len(), 1000);
        assert_eq!(t.take_counted(), 1000);
        // Off the metered link, nothing is counted.
        t.set_data_plan(false, 0);
        t.spend(500);
        assert_eq!(t.take_counted(), 0);
    }

    #[test]
    fn pieces_are_a_tenth_of_a_second_within_bounds() {
        assert_eq!(piece_len(0), usize::MAX);
        assert_eq!(piece_len(100), MIN_PIECE);
        assert_eq!(piece_len(200 * 1024), 20 * 1024);
        assert_eq!(piece_len(100 * 1024 * 1024), MAX_PIECE);
    }
}
