//! The prompt resume: when a request of an upload is cut by something a new request gets past
//! at once, try again within the attempt after a short pause instead of the item's back-off.
//!
//! Why: in a maker's tier several tus instances sit behind a balancer. When one dies (a deploy,
//! a crash, `kill -9`) the request it was serving fails at once (a reset, or the balancer's
//! 502), and the next request lands on a live instance; only the dead one's lock on the upload
//! is in the way, and a maker's lock is a short lease (seconds). The item's back-off, by
//! contrast, grows with every failure the item ever had, up to `cloud.retry_max_secs`: waiting
//! it out made a 4 s outage a minute's. So a run of such failures is retried here, a few times
//! within [`WINDOW`] of its first, each after a short jittered pause ([`Prompt::pause_for`]);
//! then the attempt ends and the back-off takes over, as before. A fleet whose tier is down
//! altogether thus sends each request a few more times, spread over seconds, not more often.
//!
//! Invariant: pure (the clock and the jitter are arguments); a run ends only with progress
//! (bytes the server accepted), so the pauses are bounded per byte sent.

use std::time::{Duration, Instant};

use super::tus::TusError;

/// Prompt tries per run of failures.
pub const TRIES: u32 = 4;

/// No prompt try starts later than this after the run's first failure.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The first pause's ceiling; each next one doubles (250 ms, 500 ms, 1 s, 2 s).
pub const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// Whether a new request may get past this failure at once: the connection was cut (reset,
/// refused, closed mid-answer), or answered 502 (a balancer whose instance died under the
/// request) or 423 (the upload is locked: by a holder whose lease runs out), without
/// `Retry-After`. Not 500: a server error is as often the same answer to the same request (a
/// file the server chokes on), and a thousand such files each held a transfer slot for seconds
/// of pauses, delaying a good file behind them (tests/it/fairness.rs); the back-off takes it.
/// Not a stall (the link may be slow or silent: a second request would wait out a second
/// `stall_secs` before the upload stops; the kernel's `ETIMEDOUT` is a stall too, see
/// `TusClient::network_error`), not an unreachable host or network (the path is down, not an
/// instance), not 503 or 504 (a server or balancer that is overloaded or has no instance up: a
/// fleet retrying those at once would hold it down; issue 10's spread), not a refused
/// certificate, not an answer that tells the client to wait (`Retry-After`) or that nothing
/// will change.
pub fn is_prompt(e: &TusError) -> bool {
    match e {
        TusError::Network { .. } => e.certificate_refused().is_none() && !e.unreachable(),
        TusError::Status {
            status,
            retry_after: None,
            ..
        } => matches!(status, 423 | 502),
        _ => false,
    }
}

/// A run of failures within one attempt.
#[derive(Debug, Default)]
pub struct Prompt {
    /// When the run's first failure came; `None`: no run.
    first: Option<Instant>,
    /// Prompt tries made in this run.
    tries: u32,
}

impl Prompt {
    /// The pause before trying again after `e`, or `None`: the attempt ends (not a prompt
    /// failure, or the run used its tries or its window). `rand01` in [0, 1) is the jitter.
    pub fn pause_for(&mut self, e: &TusError, now: Instant, rand01: f64) -> Option<Duration> {
        if !is_prompt(e) {
            return None;
        }
        let first = *self.first.get_or_insert(now);
        if self.tries >= TRIES || now.saturating_duration_since(first) >= WINDOW {
            return None;
        }
        let ceiling = FIRST_PAUSE * (1 << self.tries);
        self.tries += 1;
        // Between half and all of the ceiling: never at once (the balancer may not have seen
        // the death yet), and a fleet cut at the same moment comes back spread.
        Some(ceiling.mul_f64(0.5 + rand01.clamp(0.0, 1.0) / 2.0))
    }

    /// The server accepted bytes: the run is over.
    pub fn progressed(&mut self) {
        *self = Prompt::default();
    }

    /// Prompt tries made in the current run.
    pub fn tries(&self) -> u32 {
        self.tries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<u64>) -> TusError {
        TusError::Status {
            method: "PATCH",
            url: "http://127.0.0.1/files/x".into(),
            status,
            message: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn which_failures_are_tried_again_at_once() {
        for (e, prompt) in [
            (status(502, None), true),
            (status(503, None), false),
            (status(504, None), false),
            (status(500, None), false),
            (status(423, None), true),
            (status(503, Some(5)), false),
            (status(429, None), false),
            (status(401, None), false),
            (status(404, None), false),
            (status(413, None), false),
            (
                TusError::Stalled {
                    method: "HEAD",
                    url: "u".into(),
                    secs: 30,
                },
                false,
            ),
            (TusError::NoUplink, false),
        ] {
            assert_eq!(is_prompt(&e), prompt, "{e}");
        }
    }

    #[test]
    fn a_run_has_a_few_growing_pauses_within_its_window() {
        let t0 = Instant::now();
        let e = status(502, None);
        let mut p = Prompt::default();
        let pauses: Vec<_> = (0..6).map(|_| p.pause_for(&e, t0, 0.999_999)).collect();
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(pauses[..4].len(), 4);
        for (got, want) in pauses.iter().zip([ms(250), ms(500), ms(1000), ms(2000)]) {
            let (got, want) = (got.unwrap(), want.unwrap());
            assert!(got <= want && got >= want * 99 / 100, "{got:?} vs {want:?}");
        }
        assert_eq!(pauses[4], None, "four tries per run");
        // Progress starts a new run.
        p.progressed();
        assert!(p.pause_for(&e, t0, 0.0) == Some(Duration::from_millis(125)));
        // No try starts past the window of the run's first failure.
        let mut p = Prompt::default();
        assert!(p.pause_for(&e, t0, 0.5).is_some());
        assert_eq!(p.pause_for(&e, t0 + WINDOW, 0.5), None);
        // A failure that is not prompt ends the attempt whatever the run.
        let mut p = Prompt::default();
        assert_eq!(p.pause_for(&status(401, None), t0, 0.5), None);
        assert_eq!(p.tries(), 0);
    }
}
