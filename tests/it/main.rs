//! End-to-end tests: the real `cambackup` binary on temp dirs (card, fake sysfs/procfs, state),
//! a real tus receiver on loopback, the real control socket and the real SQLite file.
//!
//! One test binary (modules below) so the suite links once.

mod common;

mod bandwidth;
mod body_limit;
mod card;
mod card_fs;
mod clock;
mod cloud;
mod conditions;
mod consent;
mod daemon;
mod data_plan;
mod fairness;
mod faults;
mod glance;
mod identity;
mod interop;
mod large;
mod losses;
mod mtls;
mod pairing;
mod reach;
mod readme;
mod receipts;
mod report;
mod schedule;
mod space;
mod uplink;
mod why;
