//! The day's cellular use, counted per local day for the user's data plan.
//!
//! Invariant: no clock or time-zone change gives a fresh budget for bytes already sent.

use rusqlite::{params, OptionalExtension};

use super::{Result, Store};

impl Store {
    /// Adds `bytes` sent over cellular on local day `day` (days since 1970 in local time) and
    /// returns what counts against today's budget. Kept per day in the database, so the count
    /// survives restarts, and a day returned to (a time-zone change west and back) finds its
    /// count.
    ///
    /// No clock or time-zone change gives a fresh budget for bytes already sent: a day later
    /// than `day` that already has a count can only have been reached before now (the clock or
    /// the time zone moved back), so its bytes count today too (the answer is the largest count
    /// from `day` on), and what is sent now is added to each of those later days as well, so
    /// going forward to them again finds it. A count more than [`CELLULAR_DAYS_AHEAD`] days
    /// ahead is more than a time-zone change explains: a clock that was days or years ahead
    /// and was set right. The latest such day's bytes may have been sent today, so they are
    /// added to today's count (the earlier far days' were sent on earlier real days, and are
    /// not), and the rows go, so that they do not hold back the days until the clock reaches
    /// them.
    pub fn add_cellular_use(&self, day: i64, bytes: u64) -> Result<u64> {
        self.tx(|tx| {
            // Only the latest far day's count: each far day counted what was sent while the
            // clock showed it, and only the last of them can have been today; the others were
            // sent on earlier real days (their sum would block today for bytes it never sent).
            let ahead: i64 = tx
                .query_row(
                    "SELECT bytes FROM cellular_use WHERE day > ?1 ORDER BY day DESC LIMIT 1",
                    [day + CELLULAR_DAYS_AHEAD],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let add = bytes.min(i64::MAX as u64) as i64;
            if ahead > 0 || add > 0 {
                tx.execute(
                    "INSERT INTO cellular_use (day, bytes) VALUES (?1, ?2)
                     ON CONFLICT (day) DO UPDATE SET bytes = bytes + excluded.bytes",
                    params![day, ahead],
                )?;
                tx.execute(
                    "DELETE FROM cellular_use WHERE day > ?1",
                    [day + CELLULAR_DAYS_AHEAD],
                )?;
                tx.execute(
                    "UPDATE cellular_use SET bytes = bytes + ?2 WHERE day >= ?1",
                    params![day, add],
                )?;
                tx.execute(
                    "DELETE FROM cellular_use WHERE day NOT IN
                       (SELECT day FROM cellular_use ORDER BY day DESC LIMIT ?1)",
                    [CELLULAR_DAYS_KEPT],
                )?;
            }
            let used: i64 = tx.query_row(
                "SELECT COALESCE(MAX(bytes), 0) FROM cellular_use WHERE day >= ?1",
                [day],
                |r| r.get(0),
            )?;
            Ok(used.max(0) as u64)
        })
    }
}

/// How many days ahead of today a cellular count may lie and still be a day the device will
/// reach again: the time zones span 26 hours (UTC-12 to UTC+14), so a change of zone moves
/// the local date by at most two days.
pub const CELLULAR_DAYS_AHEAD: i64 = 2;

/// How many days' cellular counts are kept (the latest ones): more than a week, and more than
/// the days a wrongly set clock may have added, so that setting it right finds today's count.
const CELLULAR_DAYS_KEPT: i64 = 32;
