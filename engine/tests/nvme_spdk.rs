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
    // QEMU's NVMe (the guest's controller) takes Dataset Management and
    // reads deallocated blocks as zeros.
    assert_eq!(d.geometry().discard, scoutfs_engine::dev::Discard::Zeroes);
    discard_round_trip(&d);
}

/// A controller whose commands outlive the timeout
/// (`SCOUTFS_SPDK_TEST_SLOW_DEVICE`, QEMU's throttle driver in the guest):
/// SPDK's timeout callback fails the controller and every waiter gets a
/// clear error instead of hanging; later requests fail at once.
#[test]
fn spdk_slow_commands_time_out_and_fail_the_device() {
    use scoutfs_engine::dev::{open_queue, DevError, IoRequest, QueueConfig};
    use scoutfs_engine::dma::DmaPool;
    if !linked() {
        eprintln!("skipped: built without SPDK (pkg-config found none)");
        return;
    }
    let Ok(addr) = std::env::var("SCOUTFS_SPDK_TEST_SLOW_DEVICE") else {
        eprintln!("skipped: SCOUTFS_SPDK_TEST_SLOW_DEVICE is not set");
        return;
    };
    let d = SpdkDev::open_with(&addr, 500).unwrap_or_else(|e| panic!("opening {addr}: {e}"));
    let pool = DmaPool::new(4096, 16).unwrap();
    let mut qp = open_queue(
        &d,
        &QueueConfig {
            depth: 16,
            pools: vec![pool.clone()],
        },
    )
    .unwrap();
    let start = std::time::Instant::now();
    for i in 0..16u64 {
        qp.submit(IoRequest::read(i * 4096, 4096, pool.try_get().unwrap(), i))
            .unwrap();
    }
    let (mut done, mut failed) = (0, 0);
    while done < 16 {
        let _ = qp.kick();
        qp.reap(&mut |c| {
            done += 1;
            if let Err(e) = c.result {
                assert!(matches!(e, DevError::Failed(_)), "{e}");
                assert!(
                    e.to_string().contains("did not complete within 500 ms"),
                    "{e}"
                );
                failed += 1;
            }
        });
        // A watchdog, not a speed check: the engine must never hang on a
        // lost completion, so a test that waits this long has failed.
        if start.elapsed().as_secs() >= 20 {
            panic!("requests hung: no completion or timeout in 20 s");
        }
    }
    eprintln!("{failed} of 16 failed after {:?}", start.elapsed());
    assert!(failed > 0);
    let r = qp
        .submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), 99))
        .unwrap_err();
    assert!(matches!(r.error, DevError::Failed(_)));
}
