#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "super_block" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("super_block")
        .expect("target")
        .run)(data);
});
