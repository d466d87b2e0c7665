#![no_main]
//! `scoutfs_fuzz_targets::TARGETS` "fuse_request" under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (scoutfs_fuzz_targets::target("fuse_request")
        .expect("target")
        .run)(data);
});
