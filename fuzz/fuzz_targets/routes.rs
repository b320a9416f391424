#![no_main]
//! See `cambackup::fuzz_api::route_tables` (src/fuzz_api.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| cambackup::fuzz_api::route_tables(data));
