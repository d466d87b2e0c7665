//! Backend conformance: what every `BlockDev` must do, run by the tests of
//! each backend (dev.rs for mem and uring, nvme.rs for nvme, in and out of
//! the QEMU guest).

#![allow(dead_code)]

use scoutfs_engine::dev::{
    open_queue, AlignField, BlockDev, DevError, Discard, IoOp, IoRequest, QueueConfig, QueuePair,
};
use scoutfs_engine::dma::DmaPool;
use scoutfs_engine::util::rng::SimRng;

const MIB: u64 = 1 << 20;

pub fn pool() -> DmaPool {
    DmaPool::new(256 * 1024, 8).unwrap()
}

pub fn queue(dev: &dyn BlockDev, pool: &DmaPool) -> QueuePair {
    open_queue(
        dev,
        &QueueConfig {
            depth: 8,
            pools: vec![pool.clone()],
        },
    )
    .unwrap()
}

pub fn fill(seed: u64, out: &mut [u8]) {
    let mut r = SimRng::new(seed);
    for chunk in out.chunks_mut(8) {
        let v = r.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

pub fn write(qp: &mut QueuePair, pool: &DmaPool, off: u64, data: &[u8]) -> Result<(), DevError> {
    let mut b = pool.try_get().unwrap();
    b.as_mut_slice()[..data.len()].copy_from_slice(data);
    qp.run_one(IoRequest::write(off, data.len() as u32, b, 1))
        .result
}

pub fn read(qp: &mut QueuePair, pool: &DmaPool, off: u64, len: usize) -> Result<Vec<u8>, DevError> {
    let b = pool.try_get().unwrap();
    let c = qp.run_one(IoRequest::read(off, len as u32, b, 2));
    c.result.map(|()| c.buf.unwrap().as_slice()[..len].to_vec())
}

pub fn flush(qp: &mut QueuePair) -> Result<(), DevError> {
    qp.run_one(IoRequest::flush(3)).result
}

/// Write random data at many offsets and sizes, several in flight at once,
/// then read everything back and compare with a model.
pub fn round_trip_many(dev: &dyn BlockDev, seed: u64) {
    let g = dev.geometry();
    let lbs = u64::from(g.logical_block_size);
    let pool = pool();
    let mut qp = queue(dev, &pool);
    let mut model = vec![0u8; g.capacity_bytes as usize];
    // Start from zeroes so the model holds for files that had content.
    for off in (0..g.capacity_bytes).step_by(256 * 1024) {
        let len = (g.capacity_bytes - off).min(256 * 1024) as usize;
        write(&mut qp, &pool, off, &vec![0u8; len]).unwrap();
    }
    let mut rng = SimRng::new(seed);
    for round in 0..40 {
        // Up to 4 writes in flight together, at non-overlapping places.
        let n = 1 + rng.below(4) as usize;
        let slot = g.capacity_bytes / n as u64 / lbs * lbs;
        let mut expect = Vec::new();
        for i in 0..n {
            let max_blocks = (slot / lbs).min(256 * 1024 / lbs);
            let blocks = 1 + rng.below(max_blocks);
            let start = i as u64 * slot + rng.below(slot / lbs - blocks + 1) * lbs;
            let len = (blocks * lbs) as usize;
            let mut b = pool.try_get().unwrap();
            fill(seed ^ round << 8 ^ i as u64, &mut b.as_mut_slice()[..len]);
            model[start as usize..start as usize + len].copy_from_slice(&b.as_slice()[..len]);
            qp.submit(IoRequest::write(start, len as u32, b, i as u64))
                .unwrap();
            expect.push(i as u64);
        }
        let mut got = Vec::new();
        while got.len() < n {
            qp.kick().unwrap();
            qp.reap(&mut |c| {
                c.result.clone().unwrap();
                got.push(c.tag);
            });
        }
        got.sort();
        assert_eq!(got, expect);
        if round % 8 == 0 {
            flush(&mut qp).unwrap();
        }
    }
    for off in (0..g.capacity_bytes).step_by(256 * 1024) {
        let len = (g.capacity_bytes - off).min(256 * 1024) as usize;
        let data = read(&mut qp, &pool, off, len).unwrap();
        assert!(
            data == model[off as usize..off as usize + len],
            "mismatch in [{off}, +{len})"
        );
    }
}

/// Bad requests are refused with the right error and never reach the device.
pub fn rejects_bad_requests(dev: &dyn BlockDev) {
    let g = dev.geometry();
    let lbs = g.logical_block_size;
    let pool = pool();
    let mut qp = queue(dev, &pool);
    let mut rej = |req: IoRequest| -> DevError {
        let had_buf = req.buf.is_some();
        let e = qp.submit(req).expect_err("must be rejected");
        assert_eq!(e.req.buf.is_some(), had_buf, "the buffer comes back");
        e.error
    };
    let b = || pool.try_get().unwrap();
    assert!(matches!(
        rej(IoRequest::read(u64::from(lbs) / 2, lbs, b(), 0)),
        DevError::Misaligned {
            field: AlignField::Offset,
            ..
        }
    ));
    assert!(matches!(
        rej(IoRequest::write(0, lbs + 1, b(), 0)),
        DevError::Misaligned {
            field: AlignField::Length,
            ..
        }
    ));
    assert!(matches!(
        rej(IoRequest::read(0, lbs, b(), 0).at_buf_offset(1)),
        DevError::Misaligned {
            field: AlignField::Buffer,
            ..
        }
    ));
    assert!(matches!(
        rej(IoRequest::read(0, 0, b(), 0)),
        DevError::ZeroLength(IoOp::Read)
    ));
    assert!(matches!(
        rej(IoRequest::write(0, 0, b(), 0)),
        DevError::ZeroLength(IoOp::Write)
    ));
    assert!(matches!(
        rej(IoRequest::read(g.capacity_bytes, lbs, b(), 0)),
        DevError::OutOfRange { .. }
    ));
    assert!(matches!(
        rej(IoRequest::read(
            g.capacity_bytes - u64::from(lbs),
            2 * lbs,
            b(),
            0
        )),
        DevError::OutOfRange { .. }
    ));
    assert!(matches!(
        rej(IoRequest::read(u64::MAX - u64::from(lbs) + 1, lbs, b(), 0)),
        DevError::OutOfRange { .. }
    ));
    assert!(matches!(
        rej(IoRequest::read(0, 512 * 1024, b(), 0)),
        DevError::BufferOverrun { .. }
    ));
    let mut f = IoRequest::flush(0);
    f.len_bytes = lbs;
    assert!(matches!(rej(f), DevError::FlushWithData));
    let mut r = IoRequest::read(0, lbs, b(), 0);
    r.buf = None;
    assert!(matches!(rej(r), DevError::NoBuffer(IoOp::Read)));
    assert_eq!(qp.in_flight(), 0, "nothing reached the device");
    assert_eq!(pool.available(), pool.count(), "every buffer came back");
}

/// Nothing reaches the device before `kick`... or at least nothing
/// completes before it; then the completion carries the tag.
pub fn requests_wait_for_kick(dev: &dyn BlockDev) {
    let pool = pool();
    let mut qp = queue(dev, &pool);
    qp.submit(IoRequest::write(0, 4096, pool.try_get().unwrap(), 9))
        .unwrap();
    assert_eq!(qp.reap(&mut |_| panic!("completed before kick")), 0);
    let mut tags = vec![];
    while tags.is_empty() {
        qp.kick().unwrap();
        qp.reap(&mut |c| tags.push(c.tag));
    }
    assert_eq!(tags, vec![9]);
}

/// A full queue refuses with QueueFull, hands the buffer back, and takes
/// requests again once completions are reaped.
pub fn full_queue_is_back_pressure(dev: &dyn BlockDev) {
    let pool = pool();
    let mut qp = open_queue(
        dev,
        &QueueConfig {
            depth: 2,
            pools: vec![pool.clone()],
        },
    )
    .unwrap();
    for i in 0..2 {
        qp.submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), i))
            .unwrap();
    }
    let r = qp
        .submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), 2))
        .unwrap_err();
    assert_eq!(r.error, DevError::QueueFull { depth: 2 });
    assert!(r.req.buf.is_some());
    drop(r);
    let mut n = 0;
    while n < 2 {
        qp.kick().unwrap();
        n += qp.reap(&mut |c| c.result.unwrap());
    }
    assert!(qp
        .submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), 3))
        .is_ok());
    while qp.in_flight() > 0 {
        qp.kick().unwrap();
        qp.reap(&mut |c| c.result.unwrap());
    }
}

/// Several queue pairs on one device at once, each with requests in
/// flight, see each other's completed writes.
pub fn many_queue_pairs(dev: &dyn BlockDev, queues: usize) {
    let pool = DmaPool::new(64 * 1024, 4 * queues).unwrap();
    let mut qps: Vec<QueuePair> = (0..queues).map(|_| queue(dev, &pool)).collect();
    let per = 64 * 1024u64;
    for (i, qp) in qps.iter_mut().enumerate() {
        for j in 0..4u64 {
            let mut b = pool.try_get().unwrap();
            b.as_mut_slice().fill((i * 4 + j as usize + 1) as u8);
            let off = (i as u64 * 4 + j) * per;
            qp.submit(IoRequest::write(off, per as u32, b, j)).unwrap();
        }
    }
    for qp in qps.iter_mut() {
        qp.kick().unwrap();
    }
    let mut left = queues * 4;
    while left > 0 {
        for qp in qps.iter_mut() {
            left -= qp.reap(&mut |c| c.result.unwrap());
        }
    }
    let n = qps.len();
    for i in 0..queues {
        // Read each queue's data back through a different queue.
        let qp = &mut qps[(i + 1) % n];
        for j in 0..4u64 {
            let off = (i as u64 * 4 + j) * per;
            let got = read(qp, &pool, off, per as usize).unwrap();
            assert!(got.iter().all(|&x| x == (i * 4 + j as usize + 1) as u8));
        }
    }
    for qp in qps.iter_mut() {
        flush(qp).unwrap();
    }
}

/// Discard: bad discards are refused before the device; a device without
/// discard refuses every one with `Unsupported`; otherwise a discarded range
/// reads as zeros (where the geometry promises it) once the discard
/// completes, its neighbours keep their data, and a flush after it works.
/// Discards are not bounded by the largest transfer.
pub fn discard_round_trip(dev: &dyn BlockDev) {
    let g = dev.geometry();
    let lbs = u64::from(g.logical_block_size);
    let pool = pool();
    let mut qp = queue(dev, &pool);
    let mut rej = |req: IoRequest| -> DevError {
        let e = qp.submit(req).expect_err("must be rejected");
        e.error
    };
    assert!(matches!(
        rej(IoRequest::discard(lbs / 2, lbs as u32, 0)),
        DevError::Misaligned {
            field: AlignField::Offset,
            ..
        }
    ));
    assert!(matches!(
        rej(IoRequest::discard(0, lbs as u32 + 1, 0)),
        DevError::Misaligned {
            field: AlignField::Length,
            ..
        }
    ));
    assert!(matches!(
        rej(IoRequest::discard(0, 0, 0)),
        DevError::ZeroLength(IoOp::Discard)
    ));
    assert!(matches!(
        rej(IoRequest::discard(g.capacity_bytes, lbs as u32, 0)),
        DevError::OutOfRange { .. }
    ));
    let mut with_buf = IoRequest::discard(0, lbs as u32, 0);
    with_buf.buf = Some(pool.try_get().unwrap());
    assert!(matches!(rej(with_buf), DevError::DiscardWithBuffer));
    assert_eq!(qp.in_flight(), 0, "nothing reached the device");

    let discard = |qp: &mut QueuePair, off: u64, len: u64| {
        qp.run_one(IoRequest::discard(off, len as u32, 7)).result
    };
    if !g.supports_discard() {
        let e = discard(&mut qp, 0, lbs).expect_err("device without discard");
        assert!(
            matches!(
                e,
                DevError::Unsupported {
                    op: IoOp::Discard,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.errno(), libc::EOPNOTSUPP);
        return;
    }
    let zeroes = g.discard == Discard::Zeroes;
    // Larger than the largest transfer, where the device is big enough.
    let big = (u64::from(g.max_transfer_bytes) * 2).min(g.capacity_bytes / 2 / lbs * lbs);
    let span = 64 * 1024u64;
    for (round, (off, len)) in [
        (0, span),
        (g.capacity_bytes - span, span),
        (g.capacity_bytes / 2 / lbs * lbs, big),
    ]
    .into_iter()
    .enumerate()
    {
        // Data around the range and inside it.
        let mut data = vec![0u8; span as usize];
        fill(round as u64 + 11, &mut data);
        for at in (off..off + len).step_by(span as usize) {
            write(&mut qp, &pool, at, &data).unwrap();
        }
        let (d_off, d_len) = (off + lbs, len - 2 * lbs);
        discard(&mut qp, d_off, d_len).unwrap();
        flush(&mut qp).unwrap();
        let first = read(&mut qp, &pool, off, span as usize).unwrap();
        assert_eq!(
            first[..lbs as usize],
            data[..lbs as usize],
            "before the range"
        );
        let last_at = off + len - span;
        let last = read(&mut qp, &pool, last_at, span as usize).unwrap();
        assert_eq!(
            last[(span - lbs) as usize..],
            data[(span - lbs) as usize..],
            "after the range"
        );
        if zeroes {
            for at in (off..off + len).step_by(span as usize) {
                let got = read(&mut qp, &pool, at, span as usize).unwrap();
                let from = d_off.saturating_sub(at).min(span) as usize;
                let to = (d_off + d_len).saturating_sub(at).min(span) as usize;
                assert!(
                    got[from..to].iter().all(|&b| b == 0),
                    "discarded [{d_off:#x}, +{d_len:#x}) reads zeros at {at:#x}"
                );
            }
        }
        // The range takes writes again.
        write(&mut qp, &pool, d_off, &data[..lbs as usize]).unwrap();
        let got = read(&mut qp, &pool, d_off, lbs as usize).unwrap();
        assert_eq!(got, data[..lbs as usize]);
    }
    assert_eq!(pool.available(), pool.count(), "every buffer came back");
}
