//! Uploading: the tus 1.0 client, the retry schedule, one item's transfer, and the scheduler
//! that picks items and obeys the gate.

pub mod bind;
pub mod metadata;
pub mod retry;
pub mod scheduler;
pub mod transfer;
pub mod tus;

#[cfg(test)]
mod tls_tests;
