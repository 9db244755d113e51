//! Fuzzes config.json parsing and validation: no input may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    berth_runtime::check_config_bytes(data);
});
