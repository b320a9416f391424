//! TEMPORARY stub until the control branch lands.
pub mod server;
