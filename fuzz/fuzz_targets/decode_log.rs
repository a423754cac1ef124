#![no_main]

#[path = "../log_targets.rs"]
mod log_targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| log_targets::decode_log(data));
