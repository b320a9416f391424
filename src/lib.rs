//! cambackup: backs up a camera's photos and videos to a tus 1.0 server, when the user allows it.
//!
//! See `docs/ARCHITECTURE.md` for the data's path through these modules.

pub mod app;
pub mod cli;
pub mod conditions;
pub mod config;
pub mod control;
pub mod credentials;
pub mod daemon;
pub mod events;
pub mod gate;
pub mod media;
pub mod scan;
pub mod secret;
pub mod settings;
pub mod store;
pub mod uplink;
pub mod upload;
pub mod watch;
