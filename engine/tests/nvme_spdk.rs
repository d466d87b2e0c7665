//! The `spdk` backend passes the backend conformance tests on a controller
//! named by `SCOUTFS_SPDK_TEST_DEVICE` (e.g. `spdk://0000:00:04.0/1`, bound
//! to vfio-pci, hugepages reserved), which `qemu/test-nvme` sets inside a
//! guest when SPDK is installed. Elsewhere it skips with the reason.

#![cfg(feature = "spdk")]

use scoutfs_engine::dev::spdk::{linked, SpdkDev};
use scoutfs_engine::dev::BlockDev;

mod conformance;
use conformance::*;

#[test]
fn spdk_passes_the_conformance_tests() {
    if !linked() {
        eprintln!("skipped: built without SPDK (pkg-config found none)");
        return;
    }
    let Ok(addr) = std::env::var("SCOUTFS_SPDK_TEST_DEVICE") else {
        eprintln!(
            "skipped: SCOUTFS_SPDK_TEST_DEVICE is not set (qemu/test-nvme sets it in a guest)"
        );
        return;
    };
    let d = SpdkDev::open(&addr).unwrap_or_else(|e| panic!("opening {addr}: {e}"));
    eprintln!("{}: {:?}", d.name(), d.geometry());
    round_trip_many(&d, 31);
    rejects_bad_requests(&d);
    requests_wait_for_kick(&d);
    full_queue_is_back_pressure(&d);
    many_queue_pairs(&d, 4);
}
