#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "log_trees" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("log_trees")
        .expect("target")
        .run)(data);
});
