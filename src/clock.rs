//! The wall clock, in the one form the queue, the tus client and the CLI share, and whether it
//! can be trusted.
//!
//! Wall time is for what outlives the process (back-off deadlines in the database, a server's
//! `Upload-Expires`, history); waits inside the daemon use tokio's monotonic clock, so a clock
//! that jumps (a camera booting at 1970, then NTP) never stretches or skips a wait.
//!
//! A camera without an RTC battery boots at 1970. Before the time is set, no certificate can
//! be verified (every one is "not yet valid"), so uploads wait for the clock ([`is_set`]) and
//! the status says `clock_not_set`, instead of a loop of TLS errors.
//!
//! Invariant: the daemon's "now" (the queue's deadlines, the clock check, the user's schedule
//! and data day) comes from [`now_unix`]; tests move it through [`TEST_CLOCK_FILE_ENV`], read
//! here and nowhere else. (File ages, compared with the card's own mtimes, use the system
//! clock as the card does.)

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// No release can run before it was built: a wall clock earlier than this is not set. A fixed
/// date rather than the build's time keeps builds reproducible; it is moved forward at each
/// release (2026-11-01T00:00:00Z).
pub const NOT_BEFORE_UNIX: i64 = 1_793_491_200;

/// Test only: the environment variable naming a file that holds a number of seconds (possibly
/// negative) added to the wall clock, read at each reading so a test can set the clock while
/// the daemon runs (libfaketime is not available everywhere). Not settable from the config or
/// the control API; a missing or unreadable file means no offset.
pub const TEST_CLOCK_FILE_ENV: &str = "CAMBACKUP_TEST_CLOCK_FILE";

/// The current time in unix seconds (0 before 1970, which a clock never set can show).
pub fn now_unix() -> i64 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    real.saturating_add(test_offset()).max(0)
}

/// Whether the wall clock has been set (by NTP, the app or the firmware).
pub fn is_set() -> bool {
    plausible(now_unix(), NOT_BEFORE_UNIX)
}

/// Whether `now` can be the real time for a build that cannot run before `not_before`.
pub fn plausible(now: i64, not_before: i64) -> bool {
    now >= not_before
}

/// A moment in the device's local time (its time zone: `TZ` or `/etc/localtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// Days since 1970-01-01 in local time: the user's "today" for the data plan.
    pub day: i64,
    /// Minutes since local midnight (0..1440): the user's schedule.
    pub minute: u16,
}

/// `unix` in local time; `None` if the C library cannot say. Follows a change of the time
/// zone while the daemon runs (the firmware replacing `/etc/localtime`) on glibc with `TZ`
/// unset only: with `TZ` set the zone is `TZ`'s, and musl reads the zone once per process
/// (docs/deploying.md says a restart is then needed).
pub fn local(unix: i64) -> Option<Local> {
    // SAFETY: tzset and localtime_r take the C library's time-zone lock; localtime_r only
    // writes the `tm` we own. Why tzset: localtime_r reads the zone once per process (glibc),
    // so a camera whose zone the user changed kept the old one for its schedule and data day
    // until a restart. tzset reads `/etc/localtime` again when it changed (a stat, each call).
    let tm = unsafe {
        tzset();
        let t: libc::time_t = unix as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return None;
        }
        tm
    };
    let local_secs = unix + tm.tm_gmtoff as i64;
    Some(Local {
        day: local_secs.div_euclid(86_400),
        minute: (tm.tm_hour * 60 + tm.tm_min) as u16,
    })
}

extern "C" {
    /// POSIX `tzset(3)`, which the `libc` crate declares for Windows only.
    fn tzset();
}

/// `unix` as `2026-12-07 11:30:05 UTC`: a moment in a sentence the daemon says (the app and
/// the CLI show the field's unix seconds in the user's zone). Pure arithmetic, no C library.
pub fn utc(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil, for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The local time now ([`now_unix`]).
pub fn local_now() -> Option<Local> {
    local(now_unix())
}

/// Test only: the file [`TEST_CLOCK_FILE_ENV`] names, if set: the conditions' notifiers watch
/// it, as they watch the kernel's clock (`conditions::changes`).
pub fn test_clock_file() -> Option<&'static Path> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| std::env::var_os(TEST_CLOCK_FILE_ENV).map(PathBuf::from))
        .as_deref()
}

fn test_offset() -> i64 {
    let Some(file) = test_clock_file() else {
        return 0;
    };
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_names_the_day_and_time() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_643_005), "2026-12-07 11:30:05 UTC");
    }

    #[test]
    fn a_clock_before_the_release_is_not_set() {
        let rows: &[(&str, i64, bool)] = &[
            ("booted at 1970", 0, false),
            ("an hour after a 1970 boot", 3600, false),
            ("a day before the release", NOT_BEFORE_UNIX - 86_400, false),
            ("a second before the release", NOT_BEFORE_UNIX - 1, false),
            ("the release date", NOT_BEFORE_UNIX, true),
            ("years later", NOT_BEFORE_UNIX + 10 * 365 * 86_400, true),
        ];
        for (name, now, set) in rows {
            assert_eq!(plausible(*now, NOT_BEFORE_UNIX), *set, "{name}");
        }
    }

    #[test]
    fn this_machines_clock_is_set() {
        assert!(
            is_set(),
            "the test machine's clock is before {NOT_BEFORE_UNIX}"
        );
    }
}
