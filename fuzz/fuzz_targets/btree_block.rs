#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "btree_block" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("btree_block")
        .expect("target")
        .run)(data);
});
