#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "inode" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("inode").expect("target").run)(data);
});
