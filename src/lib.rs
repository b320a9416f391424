//! cambackup: backs up a camera's photos and videos to a tus 1.0 server, when the user allows it.
//!
//! See `docs/ARCHITECTURE.md` for the data's path through these modules.

pub mod config;
pub mod media;
pub mod settings;
pub mod store;
