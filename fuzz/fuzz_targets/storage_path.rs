#![no_main]
//! See `cambackup::fuzz_api::storage_path` (src/fuzz_api.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| cambackup::fuzz_api::storage_path(data));
