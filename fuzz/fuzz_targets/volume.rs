#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "volume" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("volume").expect("target").run)(data);
});
