//! STUB: the upload helper replaces this file.
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::credentials::Account;
use crate::store::{Item, Store};
use crate::upload::tus::Client;

/// What one transfer needs.
pub struct TransferCtx<'a> {
    pub client: &'a Client,
    pub store: &'a Store,
    pub config: &'a Config,
    pub account: &'a Account,
}

/// How one attempt at an item ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server holds every byte.
    Done,
    /// A transient failure: try again later (after `retry_after` if the server said so).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// A permanent failure for this item (413, a 4xx that will not change): stop retrying.
    Failed(String),
    /// 401: the server refused the token. Nothing more is sent until the user pairs again.
    Unauthorized(String),
    /// 402, or a 403 that says the subscription is inactive.
    SubscriptionInactive(String),
    /// The file on the card could not be read (card removed, file deleted or replaced).
    FileUnreadable(String),
    /// `stop` fired; the server's offset is saved and the item resumes later.
    Stopped,
}

/// Uploads (or resumes) one item until done, stopped or failed. `progress` gets the bytes the
/// server has acknowledged.
pub async fn upload(
    _ctx: &TransferCtx<'_>,
    _item: &Item,
    _stop: &CancellationToken,
    _progress: &(dyn Fn(u64) + Send + Sync),
) -> Outcome {
    Outcome::Retry {
        error: "not built yet".into(),
        retry_after: None,
    }
}
