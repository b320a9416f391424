//! Uploading one item: the tus 1.0 client, the retry schedule and one item's transfer. Which
//! item runs when is the `scheduler`'s business, a layer above (it asks `app`).

pub mod bind;
pub mod chunk;
pub mod metadata;
pub mod prompt;
pub mod retry;
pub mod sent;
pub mod source;
pub mod throttle;
pub mod tls;
pub mod transfer;
pub mod tus;

#[cfg(test)]
mod tls_tests;
