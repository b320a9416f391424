//! Whether the camera is busy with its own work: recording (the flag file or the firmware's
//! `PUT /v1/recording`) and recent writes under the media root (from the watcher).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::metered::Answers;
use super::{Problem, Reading};

/// Signals that come from inside the daemon rather than from files: the firmware's
/// `PUT /v1/recording` and the media writes the watcher sees. Shared between tasks via `Arc`.
#[derive(Debug)]
pub struct Activity {
    recording: AtomicBool,
    /// The app's `PUT /v1/network` answers, global and per Wi-Fi network.
    metered: Mutex<Answers>,
    last_write: Mutex<Option<Instant>>,
    /// Wakes whoever waits on the gate when the firmware starts or stops recording, so an upload
    /// stops at once rather than at the next poll.
    recording_tx: watch::Sender<bool>,
    /// Wakes the conditions loop at a media write, which it listens to only while the camera
    /// counts as idle: the write makes it `busy` (nothing else would tell, the loop does not
    /// poll at rest).
    written: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    /// Not recording, no writes seen.
    pub fn new() -> Activity {
        Activity {
            recording: AtomicBool::new(false),
            metered: Mutex::new(Answers::default()),
            last_write: Mutex::new(None),
            recording_tx: watch::Sender::new(false),
            written: Notify::new(),
        }
    }

    /// The firmware's `PUT /v1/recording {"active": ...}`.
    pub fn set_recording(&self, active: bool) {
        self.recording.store(active, Ordering::SeqCst);
        self.recording_tx.send_if_modified(|r| {
            let changed = *r != active;
            *r = active;
            changed
        });
    }

    /// Whether the firmware said it is recording (the flag file is read by the `Reader`).
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::SeqCst)
    }

    /// A receiver that sees every change of [`Activity::recording`], for a loop that should
    /// re-check the gate at once when recording starts.
    pub fn watch_recording(&self) -> watch::Receiver<bool> {
        self.recording_tx.subscribe()
    }

    /// The app's `PUT /v1/network {"metered": ...}` for every network without an answer of its
    /// own (persisted by the app layer, which sets it here again at start): `None` lets the
    /// daemon decide from the signs.
    pub fn set_metered_override(&self, metered: Option<bool>) {
        self.answers().global = metered;
    }

    /// The app's answer for every network without one of its own, if it gave one.
    pub fn metered_override(&self) -> Option<bool> {
        self.answers().global
    }

    /// All of the app's answers, as in force now.
    pub fn metered_answers(&self) -> Answers {
        self.answers().clone()
    }

    /// Replaces all of the app's answers (at start, from the user's choices).
    pub fn set_metered_answers(&self, answers: Answers) {
        *self.answers() = answers;
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.metered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The watcher saw a write under the media root just now.
    pub fn note_media_write(&self) {
        self.note_media_write_at(Instant::now());
    }

    /// [`Activity::note_media_write`] at a given time (for tests and for events that carry one).
    pub fn note_media_write_at(&self, at: Instant) {
        let mut last = self.last_write.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the latest: events may be delivered out of order.
        if last.is_none_or(|l| at > l) {
            *last = Some(at);
        }
        drop(last);
        self.written.notify_one();
    }

    /// Resolves at the next media write (or at once if one came since the last call).
    pub async fn written(&self) {
        self.written.notified().await
    }

    /// How long ago the last media write was; `None` if none was seen since start.
    pub fn since_last_write(&self) -> Option<Duration> {
        self.since_last_write_at(Instant::now())
    }

    /// [`Activity::since_last_write`] as of `now`.
    pub fn since_last_write_at(&self, now: Instant) -> Option<Duration> {
        // A poisoned lock only means a panic elsewhere while holding it; an `Option<Instant>`
        // cannot be left half-written, so the value is still good.
        let last = *self.last_write.lock().unwrap_or_else(|e| e.into_inner());
        last.map(|l| now.saturating_duration_since(l))
    }
}

/// Whether the recording flag file exists. Its path is absolute (`conditions.recording_flag`),
/// not under sysfs: the camera firmware creates it, typically under `/run`.
///
/// A missing file, or a missing directory for it (firmware not started yet), means not
/// recording. If existence cannot be checked (e.g. no permission on the directory), the answer is
/// "not recording" with a problem: the firmware's `PUT /v1/recording` still works, and a
/// permanent `recording` block would misname an operator's permission mistake.
pub fn read_recording_flag(path: &Path) -> Reading<bool> {
    match path.try_exists() {
        Ok(exists) => Reading::ok(exists),
        Err(e) => Reading {
            value: false,
            problem: Some(Problem::io(path, &e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_follows_the_firmware_and_is_watchable() {
        let a = Activity::new();
        let mut rx = a.watch_recording();
        assert!(!a.recording());
        a.set_recording(true);
        assert!(a.recording());
        assert!(rx.has_changed().unwrap());
        assert!(*rx.borrow_and_update());
        a.set_recording(true);
        assert!(!rx.has_changed().unwrap(), "same value is no change");
        a.set_recording(false);
        assert!(!a.recording());
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn time_since_the_latest_write() {
        let a = Activity::new();
        let t0 = Instant::now();
        assert_eq!(a.since_last_write_at(t0), None);
        a.note_media_write_at(t0 + Duration::from_secs(10));
        a.note_media_write_at(t0 + Duration::from_secs(5));
        assert_eq!(
            a.since_last_write_at(t0 + Duration::from_secs(70)),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn activity_is_shareable() {
        fn check<T: Send + Sync>() {}
        check::<Activity>();
    }

    #[test]
    fn flag_file_present_means_recording() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("camera/recording");
        assert_eq!(read_recording_flag(&flag), Reading::ok(false));
        std::fs::create_dir_all(flag.parent().unwrap()).unwrap();
        std::fs::write(&flag, "").unwrap();
        assert_eq!(read_recording_flag(&flag), Reading::ok(true));
    }
}
