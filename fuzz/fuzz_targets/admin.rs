#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "admin" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("admin")
        .expect("target")
        .run)(data);
});
