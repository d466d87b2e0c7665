#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "symlink" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("symlink").expect("target").run)(data);
});
