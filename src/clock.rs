//! The wall clock, in the one form the queue, the tus client and the CLI share.
//!
//! Wall time is for what outlives the process (back-off deadlines in the database, a server's
//! `Upload-Expires`, history); waits inside the daemon use tokio's monotonic clock, so a clock
//! that jumps (a camera booting at 1970, then NTP) never stretches or skips a wait.

/// The current time in unix seconds (0 before 1970, which a clock never set can show).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
