#![no_main]
//! See `cambackup::fuzz_api::dhcp` (src/fuzz_api.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| cambackup::fuzz_api::dhcp(data));
