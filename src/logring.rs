//! The daemon's last log records, kept in memory for the support bundle (`cambackup report`):
//! a camera often has no journald, or one that forgets at each boot, and a support thread
//! stalls without the lines that came before the problem.
//!
//! Invariants: bounded ([`CAPACITY`] records, the oldest dropped first, each field value cut
//! at [`MAX_VALUE`] bytes), so it costs at most a few hundred KiB whatever the daemon logs;
//! it sees what the log sees (the same level filter); a record keeps its fields apart from its
//! message, so the bundle can leave out the ones that name files ([`Record::render`]).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Records kept.
pub const CAPACITY: usize = 500;
/// Bytes kept of one field's value (or the message).
pub const MAX_VALUE: usize = 512;

/// One log record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Unix seconds.
    pub at: i64,
    pub level: Level,
    pub target: &'static str,
    pub message: String,
    pub fields: Vec<(&'static str, String)>,
}

impl Record {
    /// The record as one line: `TIME LEVEL target: message field=value ...`, each value passed
    /// through `value(field, text)` first (the bundle's redaction; the message is the field
    /// `message`).
    pub fn render(&self, value: &dyn Fn(&str, &str) -> String) -> String {
        let mut line = format!(
            "{} {:5} {}: {}",
            crate::clock::utc(self.at),
            self.level,
            self.target,
            value("message", &self.message)
        );
        for (k, v) in &self.fields {
            let _ = write!(line, " {k}={}", value(k, v));
        }
        line
    }
}

/// The ring: the last [`CAPACITY`] records.
#[derive(Debug, Default)]
pub struct Ring {
    records: Mutex<VecDeque<Record>>,
}

impl Ring {
    /// Keeps `r`, dropping the oldest record when full.
    pub fn push(&self, r: Record) {
        let mut q = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == CAPACITY {
            q.pop_front();
        }
        q.push_back(r);
    }

    /// The records kept, oldest first.
    pub fn records(&self) -> Vec<Record> {
        let q = self.records.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().cloned().collect()
    }
}

/// The daemon's ring ([`layer`] fills it).
pub fn ring() -> &'static Ring {
    static RING: OnceLock<Ring> = OnceLock::new();
    RING.get_or_init(Ring::default)
}

/// The tracing layer that keeps each event in [`ring`].
pub fn layer() -> RingLayer {
    RingLayer(ring())
}

/// A tracing layer keeping each event in a [`Ring`].
pub struct RingLayer(&'static Ring);

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut v = Fields::default();
        event.record(&mut v);
        self.0.push(Record {
            at: crate::clock::now_unix(),
            level: *meta.level(),
            target: meta.target(),
            message: v.message,
            fields: v.fields,
        });
    }
}

/// An event's message and fields, as text.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = format!("{value:?}");
        cut(&mut text);
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name(), text));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let mut text = value.to_string();
        cut(&mut text);
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name(), text));
        }
    }
}

/// Cuts `s` to [`MAX_VALUE`] bytes, on a character boundary.
fn cut(s: &mut String) {
    if s.len() > MAX_VALUE {
        let mut at = MAX_VALUE;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn the_ring_keeps_the_last_records_with_their_fields_apart() {
        static RING: OnceLock<Ring> = OnceLock::new();
        let ring = RING.get_or_init(Ring::default);
        let subscriber = tracing_subscriber::registry().with(RingLayer(ring));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..CAPACITY + 3 {
                tracing::info!(n = i, path = "DCIM/IMG_0001.JPG", "a line");
            }
            tracing::warn!(long = %"x".repeat(2000), "the last");
        });
        let all = ring.records();
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(
            all[0].fields[0],
            ("n", "4".to_string()),
            "the oldest dropped"
        );
        let last = all.last().unwrap();
        assert_eq!(
            (last.level, last.message.as_str()),
            (Level::WARN, "the last")
        );
        assert!(last.fields[0].1.len() <= MAX_VALUE + '…'.len_utf8());
        let line = all[1].render(&|k, v| {
            if k == "path" {
                "<name>".into()
            } else {
                v.into()
            }
        });
        assert!(
            line.ends_with("INFO  cambackup::logring::tests: a line n=5 path=<name>"),
            "{line}"
        );
    }
}
