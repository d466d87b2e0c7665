#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "alloc" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("alloc").expect("target").run)(data);
});
