#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "dirent" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("dirent").expect("target").run)(data);
});
