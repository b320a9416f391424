//! STUB: the upload helper replaces this file.
use std::time::Duration;

/// Exponential back-off with full jitter, capped.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before attempt number `attempts + 1`; `retry_after` from the server wins when
    /// given; `rand01` in [0, 1) is the jitter draw.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>, rand01: f64) -> Duration {
        if let Some(r) = retry_after {
            return r.min(self.max);
        }
        let exp = self.base.saturating_mul(1u32 << attempts.min(20));
        exp.min(self.max).mul_f64(rand01)
    }
}
