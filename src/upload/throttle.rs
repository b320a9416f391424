//! The user's bandwidth cap (`max_rate_kib_per_sec`): a token bucket the PATCH bodies are paced
//! through, shared by every upload in flight.
//!
//! Invariants: over any second the bytes handed to the connections stay within the rate (plus
//! a burst of a tenth of a second); a body waits in steps of at most [`STEP`], re-reading the
//! rate each time, so a new limit applies to the upload in flight within a second without
//! restarting it; a rate of 0 means no limit and no waiting.

use std::sync::atomic::{AtomicU64, Ordering};
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
#[derive(Debug, Default)]
pub struct Throttle {
    /// Bytes per second; 0 = no limit.
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
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

impl Throttle {
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
/// force, each let through when the bucket has room.
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
        let piece = rest.split_to(piece_len(throttle.rate()).min(rest.len()));
        throttle.admit(piece.len() as u64).await;
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

    #[test]
    fn pieces_are_a_tenth_of_a_second_within_bounds() {
        assert_eq!(piece_len(0), usize::MAX);
        assert_eq!(piece_len(100), MIN_PIECE);
        assert_eq!(piece_len(200 * 1024), 20 * 1024);
        assert_eq!(piece_len(100 * 1024 * 1024), MAX_PIECE);
    }
}
