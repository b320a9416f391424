//! `GET /v1/events`: the app's event broadcast as Server-Sent Events.
//!
//! Each event is `event: NAME` + `data: JSON`. The first is the current `state`, so a client
//! needs no separate status call. A subscriber that falls behind the broadcast's buffer is
//! disconnected (the daemon never waits for a slow reader); it may reconnect and start afresh.
//! The stream ends on shutdown, so open streams do not hold the daemon's exit.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

use super::extract::{ApiError, QueryPairs};
use crate::app::App;
use crate::events::Event;

/// A comment line this often keeps proxies and idle timers from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) async fn events(
    State(app): State<Arc<App>>,
    q: QueryPairs,
) -> Result<Response, ApiError> {
    q.only(&[])?;
    let first = app.state_event()?;
    let stream = event_stream(first, app.subscribe(), app.shutdown().clone());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

struct Feed {
    first: Option<Event>,
    rx: Receiver<Event>,
    shutdown: CancellationToken,
}

fn event_stream(
    first: Event,
    rx: Receiver<Event>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    let feed = Feed {
        first: Some(first),
        rx,
        shutdown,
    };
    stream::unfold(feed, |mut feed| async move {
        let event = match feed.first.take() {
            Some(e) => e,
            None => tokio::select! {
                _ = feed.shutdown.cancelled() => return None,
                got = feed.rx.recv() => match got {
                    Ok(e) => e,
                    Err(RecvError::Lagged(n)) => {
                        tracing::info!(missed = n, "dropping a slow event subscriber");
                        return None;
                    }
                    Err(RecvError::Closed) => return None,
                },
            },
        };
        Some((Ok(to_sse(&event)), feed))
    })
}

fn to_sse(e: &Event) -> SseEvent {
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    SseEvent::default().event(e.name()).data(data)
}
