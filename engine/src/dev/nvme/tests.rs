//! The queue logic and bring-up against the simulated controller: fast,
//! deterministic, no VFIO. The same backend is tested on QEMU's emulated
//! NVMe by engine/tests/nvme.rs inside a guest.

use super::queue::{build_prps, MAX_REQUEST_BYTES};
use super::spec::{nvm, Status};
use super::*;
use crate::dev::{open_queue, IoOp, IoRequest, QueuePair};
use crate::dma::DmaPool;
use crate::util::rng::SimRng;

const MIB: u64 = 1 << 20;

fn opts() -> NvmeOptions {
    NvmeOptions {
        timeout_ms: 2_000,
        ..Default::default()
    }
}

fn dev(sim: &SimNvme) -> NvmeDev {
    NvmeDev::simulated(sim, 1, opts()).unwrap()
}

fn queue(dev: &NvmeDev, pool: &DmaPool, depth: u32) -> QueuePair {
    open_queue(
        dev,
        &QueueConfig {
            depth,
            pools: vec![pool.clone()],
        },
    )
    .unwrap()
}

fn reap_all(qp: &mut QueuePair, n: usize) -> Vec<crate::dev::Completion> {
    let mut got = Vec::new();
    let mut spins = 0u64;
    while got.len() < n {
        // A failed device reports it from kick too; the completions say it.
        let _ = qp.kick();
        qp.reap(&mut |c| got.push(c));
        spins += 1;
        assert!(spins < 50_000_000, "completions never came");
    }
    got
}

#[test]
fn prps_use_one_page_two_pages_or_a_list() {
    let prps = |iova: u64, len: usize| {
        let mut list = Vec::new();
        let p = build_prps(iova, len, &mut |i, p| list.push((i, p)), 0x90000);
        (p, list)
    };
    assert_eq!(prps(0x10000, 4096), ((0x10000, 0), vec![]));
    assert_eq!(prps(0x10200, 512), ((0x10200, 0), vec![]));
    // Crossing one page boundary: PRP2 is the second page itself.
    assert_eq!(prps(0x10200, 4096), ((0x10200, 0x11000), vec![]));
    assert_eq!(prps(0x10000, 8192), ((0x10000, 0x11000), vec![]));
    // Three pages: a list of the pages after the first.
    assert_eq!(
        prps(0x10000, 12288),
        ((0x10000, 0x90000), vec![(0, 0x11000), (1, 0x12000)])
    );
    let ((_, p2), list) = prps(0x10800, 2 << 20);
    assert_eq!(p2, 0x90000);
    assert_eq!(list.len(), 512, "2 MiB at an offset spans 513 pages");
    assert_eq!(list[511], (511, 0x11000 + 511 * 4096));
}

#[test]
fn bring_up_identifies_and_shuts_down() {
    let sim = SimNvme::new(&[(8 * MIB, 12), (4 * MIB, 9)]);
    {
        let d = dev(&sim);
        assert!(sim.is_enabled());
        assert_eq!(d.controller().identity().model, "scoutfs simulated nvme");
        assert_eq!(d.controller().identity().serial, "SIM0001");
        assert_eq!(d.controller().active_namespaces().unwrap(), vec![1, 2]);
        let g = d.geometry();
        assert_eq!(g.logical_block_size, 4096);
        assert_eq!(g.capacity_bytes, 8 * MIB);
        assert_eq!(g.max_transfer_bytes, MAX_REQUEST_BYTES);
        let d2 = NvmeDev::on_controller(d.controller().clone(), 2, "ns2".into()).unwrap();
        assert_eq!(d2.geometry().logical_block_size, 512);
        assert!(NvmeDev::on_controller(d.controller().clone(), 3, "ns3".into()).is_err());
        assert_eq!(sim.stats().shutdowns, 0);
    }
    assert_eq!(sim.stats().shutdowns, 1, "CC.SHN on the last drop");
}

#[test]
fn namespaces_with_metadata_are_refused_clearly() {
    let sim = SimNvme::new(&[(MIB, 12)]);
    sim.set_metadata_bytes(1, 8);
    let e = NvmeDev::simulated(&sim, 1, opts()).unwrap_err();
    assert!(e.to_string().contains("metadata"), "{e}");
}

#[test]
fn round_trips_split_at_mdts_and_use_prp_lists() {
    // MDTS 5: 128 KiB per command, so a 1 MiB request is 8 commands.
    let sim = SimNvme::with_limits(&[(8 * MIB, 12)], 1024, 5);
    let d = dev(&sim);
    let pool = DmaPool::new(2 << 20, 4).unwrap();
    let mut qp = queue(&d, &pool, 4);
    let mut rng = SimRng::new(7);
    for &(off, len, buf_off) in &[
        (0u64, 4096u32, 0u32),
        (4096, 8192, 4096),
        (MIB, 12288, 0),
        (2 * MIB, 1 << 20, 4096),
        (4 * MIB, 2 << 20, 0),
        (7 * MIB, 3 * 4096, 8192),
    ] {
        let mut b = pool.try_get().unwrap();
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        b.as_mut_slice()[buf_off as usize..(buf_off + len) as usize].copy_from_slice(&data);
        let c = qp.run_one(IoRequest::write(off, len, b, 1).at_buf_offset(buf_off));
        c.result.unwrap();
        let mut on_dev = vec![0u8; len as usize];
        sim.read_ns(1, off, &mut on_dev);
        assert!(on_dev == data, "write at {off:#x}+{len:#x} landed wrong");
        let c = qp.run_one(IoRequest::read(off, len, pool.try_get().unwrap(), 2));
        c.result.unwrap();
        assert!(c.buf.unwrap().as_slice()[..len as usize] == data[..]);
    }
    let s = sim.stats();
    assert_eq!(s.bad_dma, 0);
    assert_eq!(s.cid_conflicts, 0);
    assert!(s.prp_list_commands > 0);
    assert_eq!(qp.run_one(IoRequest::flush(3)).result, Ok(()));
    assert_eq!(sim.stats().flushes, 1);
}

#[test]
fn one_doorbell_per_batch() {
    let sim = SimNvme::new(&[(4 * MIB, 12)]);
    let d = dev(&sim);
    let pool = DmaPool::new(4096, 16).unwrap();
    let mut qp = queue(&d, &pool, 16);
    let before = sim.stats();
    for i in 0..16 {
        qp.submit(IoRequest::read(i * 4096, 4096, pool.try_get().unwrap(), i))
            .unwrap();
    }
    assert_eq!(
        sim.stats().sq_doorbells,
        before.sq_doorbells,
        "nothing before kick"
    );
    qp.kick().unwrap();
    qp.kick().unwrap();
    assert_eq!(sim.stats().sq_doorbells, before.sq_doorbells + 1);
    let got = reap_all(&mut qp, 16);
    assert_eq!(got.len(), 16);
    assert_eq!(
        sim.stats().cq_doorbells,
        before.cq_doorbells,
        "the CQ head doorbell waits for half a queue of completions"
    );
    drop(got);
    // 256 entries: the head doorbell comes once per 128 completions.
    for round in 0..16 {
        for i in 0..16 {
            qp.submit(IoRequest::read(i * 4096, 4096, pool.try_get().unwrap(), i))
                .unwrap();
        }
        reap_all(&mut qp, 16);
        assert_eq!(sim.stats().sq_doorbells, before.sq_doorbells + 2 + round);
    }
    assert_eq!(sim.stats().cq_doorbells, before.cq_doorbells + 2);
}

#[test]
fn phase_wraps_and_command_ids_are_reused_without_conflict() {
    // A 4-entry queue wraps every 4 completions; 3 in flight at once.
    let sim = SimNvme::with_limits(&[(4 * MIB, 12)], 4, 0);
    let d = dev(&sim);
    let pool = DmaPool::new(4096, 8).unwrap();
    let mut qp = queue(&d, &pool, 8);
    assert_eq!(qp.depth(), 3, "depth shrinks to what the queue holds");
    let mut rng = SimRng::new(3);
    let mut model = [0u8; 64];
    let mut tag = 0;
    for round in 0..500 {
        let n = 1 + rng.below(3) as usize;
        let mut expect = Vec::new();
        for _ in 0..n {
            let blk = rng.below(64);
            let v = rng.next_u64() as u8;
            // Distinct blocks per batch keep the model order-independent.
            if expect.iter().any(|&(b2, _)| b2 == blk) {
                continue;
            }
            let mut b = pool.try_get().unwrap();
            b.as_mut_slice()[..4096].fill(v);
            model[blk as usize] = v;
            qp.submit(IoRequest::write(blk * 4096, 4096, b, tag))
                .unwrap();
            expect.push((blk, tag));
            tag += 1;
        }
        let got = reap_all(&mut qp, expect.len());
        for c in &got {
            c.result.clone().unwrap();
        }
        if round % 50 == 0 {
            for (blk, &v) in model.iter().enumerate() {
                let mut on = [0u8; 1];
                sim.read_ns(1, blk as u64 * 4096, &mut on);
                assert_eq!(on[0], v);
            }
        }
    }
    let s = sim.stats();
    assert_eq!(s.cid_conflicts, 0);
    assert!(s.max_outstanding <= 3);
    assert!(s.io_commands >= 500);
}

#[test]
fn out_of_order_completions_finish_the_right_requests() {
    let sim = SimNvme::with_limits(&[(4 * MIB, 12)], 128, 1);
    let d = dev(&sim);
    let pool = DmaPool::new(64 * 1024, 8).unwrap();
    let mut qp = queue(&d, &pool, 8);
    sim.hold_completions(true);
    for i in 0..8u64 {
        let mut b = pool.try_get().unwrap();
        b.as_mut_slice().fill(i as u8);
        // 64 KiB with MDTS 1 (8 KiB): 8 commands per request.
        qp.submit(IoRequest::write(i * 65536, 65536, b, i)).unwrap();
    }
    qp.kick().unwrap();
    assert_eq!(qp.reap(&mut |_| panic!("held")), 0);
    sim.release_completions(true);
    let mut got = reap_all(&mut qp, 8);
    got.sort_by_key(|c| c.tag);
    for (i, c) in got.into_iter().enumerate() {
        assert_eq!(c.tag, i as u64);
        c.result.unwrap();
        let mut on = vec![0u8; 65536];
        sim.read_ns(1, i as u64 * 65536, &mut on);
        assert!(on.iter().all(|&x| x == i as u8));
    }
    assert_eq!(sim.stats().cid_conflicts, 0);
}

#[test]
fn full_queue_is_back_pressure_until_completions_are_reaped() {
    let sim = SimNvme::new(&[(4 * MIB, 12)]);
    let d = dev(&sim);
    let pool = DmaPool::new(4096, 8).unwrap();
    let mut qp = queue(&d, &pool, 4);
    sim.pause(true);
    for i in 0..4 {
        qp.submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), i))
            .unwrap();
    }
    let r = qp
        .submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), 9))
        .unwrap_err();
    assert_eq!(r.error, DevError::QueueFull { depth: 4 });
    assert!(r.req.buf.is_some(), "the buffer comes back");
    drop(r);
    qp.kick().unwrap();
    assert_eq!(qp.reap(&mut |_| {}), 0, "paused device completes nothing");
    sim.run();
    assert_eq!(reap_all(&mut qp, 4).len(), 4);
    sim.pause(false);
    qp.submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), 5))
        .unwrap();
    assert_eq!(reap_all(&mut qp, 1)[0].tag, 5);
}

#[test]
fn status_codes_become_errnos() {
    let sim = SimNvme::new(&[(4 * MIB, 12)]);
    let d = dev(&sim);
    let pool = DmaPool::new(8192, 4).unwrap();
    let mut qp = queue(&d, &pool, 4);
    sim.inject(nvm::READ, Status::new(2, 0x81), 1);
    let c = qp.run_one(IoRequest::read(8192, 4096, pool.try_get().unwrap(), 1));
    assert_eq!(
        c.result,
        Err(DevError::Io {
            op: IoOp::Read,
            offset: 8192,
            errno: libc::EIO
        })
    );
    assert!(c.buf.is_some());
    sim.inject(nvm::WRITE, Status::new(0, 0x80), 1);
    let c = qp.run_one(IoRequest::write(0, 4096, pool.try_get().unwrap(), 1));
    assert_eq!(c.result.unwrap_err().errno(), libc::ERANGE);
    sim.inject(nvm::FLUSH, Status::new(0, 0x06), 1);
    assert!(qp.run_one(IoRequest::flush(1)).result.is_err());
    // The error was the command's, not the device's.
    assert!(qp
        .run_one(IoRequest::read(0, 8192, pool.try_get().unwrap(), 1))
        .result
        .is_ok());
}

#[test]
fn a_lost_command_times_out_and_fails_the_device() {
    let sim = SimNvme::new(&[(4 * MIB, 12)]);
    let d = NvmeDev::simulated(
        &sim,
        1,
        NvmeOptions {
            timeout_ms: 50,
            ..Default::default()
        },
    )
    .unwrap();
    let pool = DmaPool::new(4096, 4).unwrap();
    let mut qp = queue(&d, &pool, 4);
    qp.run_one(IoRequest::write(0, 4096, pool.try_get().unwrap(), 1))
        .result
        .unwrap();
    sim.lose_next_io(1);
    let start = std::time::Instant::now();
    let c = qp.run_one(IoRequest::read(0, 4096, pool.try_get().unwrap(), 2));
    let waited = start.elapsed();
    let e = c.result.unwrap_err();
    assert!(matches!(e, DevError::Failed(_)), "{e}");
    assert!(
        e.to_string().contains("did not complete within 50 ms"),
        "{e}"
    );
    // Behaviour, not speed: the command is failed no earlier than its
    // timeout.
    assert!(waited >= std::time::Duration::from_millis(50), "{waited:?}");
    assert!(
        c.buf.is_some(),
        "the controller was stopped, so the buffer is safe"
    );
    drop(c.buf);
    assert!(!sim.is_enabled(), "the failed controller was disabled");
    assert!(d.controller().is_failed());
    let r = qp
        .submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), 3))
        .unwrap_err();
    assert!(matches!(r.error, DevError::Failed(_)));
    drop(r);
    drop(qp);
    drop(d);
    assert_eq!(
        sim.stats().shutdowns,
        0,
        "no shutdown of a failed controller"
    );
    assert_eq!(pool.available(), pool.count());
}

#[test]
fn stray_completions_are_ignored() {
    let sim = SimNvme::new(&[(4 * MIB, 12)]);
    let d = dev(&sim);
    let pool = DmaPool::new(4096, 4).unwrap();
    let mut q = d
        .open_nvme_queue(&QueueConfig {
            depth: 4,
            pools: vec![pool.clone()],
        })
        .unwrap();
    use crate::dev::QueueBackend;
    sim.pause(true);
    q.push(IoRequest::read(0, 4096, pool.try_get().unwrap(), 7))
        .unwrap();
    q.kick().unwrap();
    sim.post_stray(q.qid(), 0x7fff);
    assert_eq!(q.reap(&mut |_| panic!("a stray is no request")), 0);
    assert_eq!(q.stats().stale_completions, 1);
    sim.run();
    let mut tags = vec![];
    while tags.is_empty() {
        q.reap(&mut |c| tags.push(c.tag));
    }
    assert_eq!(tags, vec![7]);
}

#[test]
fn buffers_outside_registered_pools_are_refused() {
    let sim = SimNvme::new(&[(4 * MIB, 12)]);
    let d = dev(&sim);
    let pool = DmaPool::new(4096, 2).unwrap();
    let other = DmaPool::new(4096, 2).unwrap();
    let mut qp = queue(&d, &pool, 2);
    let r = qp
        .submit(IoRequest::read(0, 4096, other.try_get().unwrap(), 1))
        .unwrap_err();
    assert!(
        r.error.to_string().contains("not in a DMA pool"),
        "{}",
        r.error
    );
    assert_eq!(sim.stats().bad_dma, 0);
}

#[test]
fn queues_get_their_own_io_queue_and_give_it_back() {
    let sim = SimNvme::new(&[(4 * MIB, 12)]);
    let d = dev(&sim);
    let pool = DmaPool::new(4096, 8).unwrap();
    let mut qps: Vec<QueuePair> = (0..4).map(|_| queue(&d, &pool, 2)).collect();
    assert_eq!(sim.io_queue_count(), 4);
    for (i, qp) in qps.iter_mut().enumerate() {
        let mut b = pool.try_get().unwrap();
        b.as_mut_slice().fill(i as u8 + 1);
        qp.run_one(IoRequest::write(i as u64 * 4096, 4096, b, 0))
            .result
            .unwrap();
    }
    for (i, qp) in qps.iter_mut().enumerate() {
        let c = qp.run_one(IoRequest::read(
            i as u64 * 4096,
            4096,
            pool.try_get().unwrap(),
            0,
        ));
        assert!(c.buf.unwrap().as_slice().iter().all(|&x| x == i as u8 + 1));
    }
    let maps = sim.stats().maps;
    drop(qps);
    assert_eq!(sim.io_queue_count(), 0, "queues deleted on drop");
    // Each queue mapped its rings and PRP lists; the shared pool once.
    assert_eq!(maps, 1 + 1 + 4 * 2);
    assert_eq!(
        sim.stats().unmaps,
        4 * 2 + 1,
        "all but the admin memory unmapped"
    );
    let _again = queue(&d, &pool, 2);
    assert_eq!(sim.io_queue_count(), 1);
}

#[test]
fn addresses_parse_and_normalize() {
    let a = NvmeAddr::parse("nvme://0000:00:04.0/1").unwrap();
    assert_eq!(a.bdf, "0000:00:04.0");
    assert_eq!(a.nsid, 1);
    assert_eq!(a.to_string(), "nvme://0000:00:04.0/1");
    assert_eq!(
        NvmeAddr::parse("nvme://00:1F.7").unwrap().bdf,
        "0000:00:1f.7"
    );
    assert_eq!(NvmeAddr::parse("nvme://00:04.0").unwrap().nsid, 1);
    for bad in [
        "/dev/nvme0n1",
        "nvme://",
        "nvme://0000:00:04.0/0",
        "nvme://00:20.0/1",
        "nvme://x/1",
    ] {
        assert!(NvmeAddr::parse(bad).is_err(), "{bad}");
    }
    assert!(NvmeAddr::is_nvme("nvme://0000:00:04.0/2"));
}

#[test]
fn one_claim_per_namespace() {
    let sim = SimNvme::new(&[(MIB, 12), (MIB, 12)]);
    let d1 = dev(&sim);
    d1.lock_exclusive().unwrap();
    d1.lock_exclusive().unwrap();
    let d1b = NvmeDev::on_controller(d1.controller().clone(), 1, "again".into()).unwrap();
    assert!(matches!(d1b.lock_exclusive(), Err(DevError::Busy(_))));
    let d2 = NvmeDev::on_controller(d1.controller().clone(), 2, "ns2".into()).unwrap();
    d2.lock_exclusive().unwrap();
    drop(d1);
    d1b.lock_exclusive().unwrap();
}

#[test]
fn a_timeout_on_one_queue_fails_the_others_too() {
    let sim = SimNvme::new(&[(4 * MIB, 12)]);
    let d = NvmeDev::simulated(
        &sim,
        1,
        NvmeOptions {
            timeout_ms: 40,
            ..Default::default()
        },
    )
    .unwrap();
    let pool = DmaPool::new(4096, 8).unwrap();
    let mut a = queue(&d, &pool, 4);
    let mut b = queue(&d, &pool, 4);
    // b has a request waiting in its SQ that the (paused) device never
    // fetches; a loses one outright.
    sim.pause(true);
    b.submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), 1))
        .unwrap();
    b.kick().unwrap();
    sim.pause(false);
    sim.lose_next_io(1);
    let c = a.run_one(IoRequest::read(0, 4096, pool.try_get().unwrap(), 2));
    assert!(matches!(c.result, Err(DevError::Failed(_))));
    drop(c);
    let got = reap_all(&mut b, 1);
    assert!(matches!(got[0].result, Err(DevError::Failed(_))));
    assert!(got[0].buf.is_some());
    drop(got);
    drop((a, b));
    assert_eq!(pool.available(), pool.count());
}

proptest::proptest! {
    /// Identify data comes from the device: any bytes parse without
    /// panicking, and a namespace is either refused or has a sane geometry.
    #[test]
    fn identify_data_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 4096)) {
        let b: &[u8; 4096] = bytes.as_slice().try_into().unwrap();
        let _ = super::spec::IdentifyController::parse(b);
        let ns = super::spec::IdentifyNamespace::parse(b);
        if ns.unsupported().is_none() {
            proptest::prop_assert!((512..=65536).contains(&ns.block_size()));
            proptest::prop_assert!(ns.size_blocks > 0);
        }
    }

    /// Any completion status decodes to a message and an errno (0 only for
    /// success).
    #[test]
    fn every_status_decodes(raw in proptest::prelude::any::<u16>()) {
        let s = super::spec::Status(raw);
        let (what, errno) = s.decode();
        proptest::prop_assert!(!what.is_empty());
        proptest::prop_assert_eq!(errno == 0, s.is_success());
    }
}

#[test]
fn discard_is_one_deallocate_with_its_range_list_in_dma_memory() {
    let sim = SimNvme::new(&[(8 * MIB, 12), (MIB, 9)]);
    let d = dev(&sim);
    assert_eq!(d.geometry().discard, crate::dev::Discard::Zeroes);
    let pool = DmaPool::new(64 * 1024, 2).unwrap();
    let mut qp = queue(&d, &pool, 4);
    let mut b = pool.try_get().unwrap();
    b.as_mut_slice().fill(0x5a);
    qp.run_one(IoRequest::write(0, 64 * 1024, b, 1))
        .result
        .unwrap();
    let before = sim.stats();
    // 20 KiB at 12 KiB: LBAs 3..8 of 4 KiB.
    qp.run_one(IoRequest::discard(12 * 1024, 20 * 1024, 2))
        .result
        .unwrap();
    assert_eq!(sim.dsm_log(), vec![(1, 3, 5)]);
    let s = sim.stats();
    assert_eq!(s.io_commands - before.io_commands, 1, "one command");
    assert_eq!((s.deallocates, s.deallocated_blocks, s.bad_dma), (1, 5, 0));
    let mut got = vec![0u8; 64 * 1024];
    sim.read_ns(1, 0, &mut got);
    assert!(got[..12 * 1024].iter().all(|&x| x == 0x5a));
    assert!(got[12 * 1024..32 * 1024].iter().all(|&x| x == 0));
    assert!(got[32 * 1024..].iter().all(|&x| x == 0x5a));
    // Larger than a request's largest transfer: still one range.
    qp.run_one(IoRequest::discard(0, 8 << 20, 3))
        .result
        .unwrap();
    assert_eq!(sim.dsm_log()[1], (1, 0, 2048));

    // 512-byte blocks: offsets become LBAs at that size.
    let d2 = NvmeDev::on_controller(d.controller().clone(), 2, "sim/2".into()).unwrap();
    let pool2 = DmaPool::new(4096, 1).unwrap();
    let mut qp2 = queue(&d2, &pool2, 2);
    qp2.run_one(IoRequest::discard(1024, 4096, 4))
        .result
        .unwrap();
    assert_eq!(sim.dsm_log()[2], (2, 2, 8));
}

#[test]
fn discard_command_slots_reuse_their_range_pages() {
    // More discards in flight than fit in the SQ at once, at distinct
    // places: each command's range list lives in its own slot's page.
    let sim = SimNvme::with_limits(&[(8 * MIB, 12)], 64, 5);
    let d = dev(&sim);
    let pool = DmaPool::new(4096, 1).unwrap();
    let mut qp = queue(&d, &pool, 16);
    sim.hold_completions(true);
    for i in 0..16u64 {
        qp.submit(IoRequest::discard(i * 8192, 4096, i)).unwrap();
    }
    qp.kick().unwrap();
    sim.release_completions(true);
    sim.hold_completions(false);
    let got = reap_all(&mut qp, 16);
    assert!(got
        .iter()
        .all(|c| c.result.is_ok() && c.op == IoOp::Discard));
    let mut log = sim.dsm_log();
    log.sort();
    let want: Vec<_> = (0..16u64).map(|i| (1, i * 2, 1)).collect();
    assert_eq!(log, want);
}

#[test]
fn discard_without_dsm_is_refused_before_the_device() {
    let sim = SimNvme::new(&[(8 * MIB, 12)]);
    sim.set_dsm(false);
    let d = dev(&sim);
    assert!(!d.controller().identity().supports_dsm());
    assert_eq!(d.geometry().discard, crate::dev::Discard::Unsupported);
    let pool = DmaPool::new(4096, 1).unwrap();
    let mut qp = queue(&d, &pool, 2);
    let before = sim.stats().io_commands;
    let e = qp.submit(IoRequest::discard(0, 4096, 1)).unwrap_err();
    assert!(matches!(
        e.error,
        crate::dev::DevError::Unsupported {
            op: IoOp::Discard,
            ..
        }
    ));
    assert_eq!(sim.stats().io_commands, before);
}

#[test]
fn discard_status_errors_reach_the_caller() {
    let sim = SimNvme::new(&[(8 * MIB, 12)]);
    let d = dev(&sim);
    let pool = DmaPool::new(4096, 1).unwrap();
    let mut qp = queue(&d, &pool, 2);
    sim.inject(nvm::DATASET_MANAGEMENT, Status::new(0, 0x80), 1);
    let c = qp.run_one(IoRequest::discard(4096, 4096, 1));
    assert_eq!(c.result.unwrap_err().errno(), libc::ERANGE);
    qp.run_one(IoRequest::discard(4096, 4096, 2))
        .result
        .unwrap();
}
