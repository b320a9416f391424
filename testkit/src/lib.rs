//! Test-only tools for cambackup; never part of the shipped binary.
//!
//! - [`tus::Receiver`]: a real tus 1.0.0 server on loopback with fault injection.
//! - [`camera::FakeCamera`]: a temp card, fake sysfs/proc tree and a matching config file.
//! - [`card::Card`]: a real FAT32 or exFAT card image, mounted through FUSE, pulled and put back.
//! - [`proxy::Proxy`]: a TCP fault proxy (latency, bandwidth cap, resets, half-open, truncation).
//! - [`haproxy::Haproxy`]: a real haproxy before a test server, with the test's rules.
//! - [`daemon::Daemon`]: runs the real `cambackup daemon` and talks to its control socket.
//! - [`wait_until`] / [`wait_until_sync`]: poll a condition instead of sleeping.
//! - [`sample`]: deterministic file content.
//! - [`netns::Lab`]: a camera and a server in network namespaces, linked by `wlan0` and `wwan0`.
//! - [`powercut::PowerCutFs`]: a FUSE layer that drops what was not synced at a power cut.
//! - [`tls::TestCa`]: a CA made at test time, for TLS receivers off loopback.
//! - [`wpa::FakeWpa`]: a fake wpa_supplicant control socket, whose network the test changes.

pub mod camera;
pub mod card;
pub mod cardfs;
pub mod cloud;
pub mod daemon;
pub mod haproxy;
pub mod http;
pub mod netns;
pub mod powercut;
pub mod proxy;
pub mod sample;
pub mod tls;
pub mod tus;
mod wait;
pub mod wpa;

pub use wait::{wait_until, wait_until_sync, POLL_INTERVAL};
