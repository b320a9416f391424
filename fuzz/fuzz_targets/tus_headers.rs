#![no_main]
//! See `cambackup::fuzz_api::tus_headers` (src/fuzz_api.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| cambackup::fuzz_api::tus_headers(data));
