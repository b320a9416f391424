//! Events for the app (`GET /v1/events`): state changes, upload progress, item changes.
//!
//! A broadcast channel: every subscriber gets every event; one that falls behind by more than
//! the channel's capacity sees `Lagged` and is dropped by the server, so a slow app never slows
//! the daemon.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::gate::Block;
use crate::media::StoragePath;

/// The daemon's state, as the `state` event and `GET /v1/status` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    Unpaired,
    Paused,
    Waiting,
    Idle,
    Uploading,
    Unauthorized,
    SubscriptionInactive,
    MediaUnavailable,
}

impl DaemonState {
    pub const ALL: [DaemonState; 8] = [
        DaemonState::Unpaired,
        DaemonState::Paused,
        DaemonState::Waiting,
        DaemonState::Idle,
        DaemonState::Uploading,
        DaemonState::Unauthorized,
        DaemonState::SubscriptionInactive,
        DaemonState::MediaUnavailable,
    ];

    /// The name the API gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Unpaired => "unpaired",
            DaemonState::Paused => "paused",
            DaemonState::Waiting => "waiting",
            DaemonState::Idle => "idle",
            DaemonState::Uploading => "uploading",
            DaemonState::Unauthorized => "unauthorized",
            DaemonState::SubscriptionInactive => "subscription_inactive",
            DaemonState::MediaUnavailable => "media_unavailable",
        }
    }
}

/// Events kept for a slow subscriber before it is dropped.
const CAPACITY: usize = 256;

/// One event. `name()` is the SSE event name; the value is the JSON data.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Event {
    State {
        state: DaemonState,
        blocked_by: Vec<Block>,
    },
    Progress {
        id: i64,
        storage_path: StoragePath,
        bytes_sent: u64,
        bytes_total: u64,
        rate_bps: u64,
    },
    Item {
        id: i64,
        storage_path: StoragePath,
        state: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A backed-up file was deleted from the card to free space.
    Freed {
        id: i64,
        storage_path: StoragePath,
        size: u64,
        freed_at: i64,
    },
}

impl Event {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::State { .. } => "state",
            Event::Progress { .. } => "progress",
            Event::Item { .. } => "item",
            Event::Freed { .. } => "freed",
        }
    }
}

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct Events(broadcast::Sender<Event>);

impl Default for Events {
    fn default() -> Self {
        Events(broadcast::channel(CAPACITY).0)
    }
}

impl Events {
    /// Sends to whoever listens; nobody listening is fine.
    pub fn send(&self, e: Event) {
        let _ = self.0.send(e);
    }

    /// A new subscriber, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::DaemonState;

    #[test]
    fn the_state_names_on_the_wire_are_the_ones_the_cli_and_docs_use() {
        for s in DaemonState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for b in crate::gate::Block::ALL {
            assert_eq!(serde_json::to_value(b).unwrap(), b.as_str());
        }
    }
}
