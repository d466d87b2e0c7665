#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "quorum_block" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("quorum_block")
        .expect("target")
        .run)(data);
});
