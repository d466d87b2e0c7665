#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "xattr" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("xattr").expect("target").run)(data);
});
