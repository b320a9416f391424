#![no_main]
//! See `cambackup::fuzz_api::wpa` (src/fuzz_api.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| cambackup::fuzz_api::wpa(data));
