//! Reactor: tasks run and wake correctly, device I/O flows through attached
//! queues with back-pressure, an idle adaptive reactor sleeps, and shutdown
//! drains in-flight I/O.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::dev::uring::{UringDev, UringOptions};
use scoutfs_engine::dev::{open_queue, BlockDev, IoRequest, QueueConfig};
use scoutfs_engine::dma::DmaPool;
use scoutfs_engine::reactor::{
    CorePin, IdlePolicy, Local, QueueId, Reactor, ReactorConfig, ReactorError,
};

fn cfg(idle: IdlePolicy) -> ReactorConfig {
    ReactorConfig {
        idle,
        pin: CorePin::None,
        ..ReactorConfig::default()
    }
}

fn start_with_queue(
    dev: Arc<dyn BlockDev>,
    pool: DmaPool,
    depth: u32,
) -> (Reactor, Arc<std::sync::OnceLock<QueueId>>) {
    let qid = Arc::new(std::sync::OnceLock::new());
    let q2 = qid.clone();
    let r = Reactor::start(cfg(IdlePolicy::Adaptive), move |local: &Local| {
        let qp = open_queue(
            &*dev,
            &QueueConfig {
                depth,
                pools: vec![pool],
            },
        )?;
        q2.set(local.attach_queue(qp)).unwrap();
        Ok(())
    })
    .unwrap();
    (r, qid)
}

#[test]
fn many_tasks_interleave_and_wake_in_timer_order() {
    let r = Reactor::start(cfg(IdlePolicy::Adaptive), |_| Ok(())).unwrap();
    let order = r
        .remote()
        .call(|local: &Local| {
            let local = local.clone();
            async move {
                let order = Rc::new(RefCell::new(Vec::new()));
                let mut handles = Vec::new();
                // 500 tasks sleeping 0..50 ms in a scrambled order.
                for i in 0..500u64 {
                    let ms = (i * 37) % 50;
                    let (o, l) = (order.clone(), local.clone());
                    handles.push(local.spawn(async move {
                        l.sleep(Duration::from_millis(ms)).await;
                        o.borrow_mut().push(ms);
                        ms
                    }));
                }
                let mut sum = 0;
                for h in handles {
                    sum += h.await;
                }
                assert_eq!(sum, (0..500u64).map(|i| (i * 37) % 50).sum::<u64>());
                Rc::try_unwrap(order).unwrap().into_inner()
            }
        })
        .unwrap();
    assert_eq!(order.len(), 500);
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "timers fired out of order"
    );
    r.shutdown();
}

#[test]
fn tasks_woken_from_other_threads_run() {
    let r = Reactor::start(cfg(IdlePolicy::Adaptive), |_| Ok(())).unwrap();
    let pool = DmaPool::new(4096, 1).unwrap();
    let held = pool.try_get().unwrap();
    let p2 = pool.clone();
    let t = std::thread::spawn(move || {
        r.remote()
            .call(move |_: &Local| async move { p2.get().await.slot() })
            .unwrap()
    });
    // Let the reactor park the task and fall asleep, then free the buffer
    // from this thread: the waker must reach the sleeping reactor.
    std::thread::sleep(Duration::from_millis(100));
    let slot = held.slot();
    drop(held);
    assert_eq!(t.join().unwrap(), slot);
}

/// 64 tasks share a queue of depth 4 and a pool of 8 buffers: both kinds
/// of back-pressure are exercised and every byte must still be right.
fn concurrent_io(dev: Arc<dyn BlockDev>) {
    let pool = DmaPool::new(16384, 8).unwrap();
    let (r, qid) = start_with_queue(dev, pool.clone(), 4);
    let qid = *qid.get().unwrap();
    let p = pool.clone();
    let bad = r
        .remote()
        .call(move |local: &Local| {
            let local = local.clone();
            async move {
                let mut handles = Vec::new();
                for t in 0..64u64 {
                    let (l, p) = (local.clone(), p.clone());
                    handles.push(local.spawn(async move {
                        let off = t * 16384;
                        let mut b = p.get().await;
                        b.as_mut_slice().fill(t as u8 + 1);
                        let c = l.io(qid, IoRequest::write(off, 16384, b, 0)).await;
                        c.result.unwrap();
                        drop(c.buf);
                        let b = p.get().await;
                        let c = l.io(qid, IoRequest::read(off, 16384, b, 0)).await;
                        c.result.unwrap();
                        let ok = c.buf.unwrap().as_slice().iter().all(|&x| x == t as u8 + 1);
                        (!ok).then_some(t)
                    }));
                }
                let mut bad = Vec::new();
                for h in handles {
                    bad.extend(h.await);
                }
                bad
            }
        })
        .unwrap();
    assert!(bad.is_empty(), "tasks read wrong data: {bad:?}");
    let stats = r.shutdown();
    assert!(stats.completions >= 128);
    assert_eq!(pool.available(), pool.count());
}

#[test]
fn concurrent_io_on_mem() {
    concurrent_io(Arc::new(MemDev::new(4 << 20)));
}

#[test]
fn concurrent_io_on_uring() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dev.img");
    std::fs::File::create(&p).unwrap().set_len(4 << 20).unwrap();
    concurrent_io(Arc::new(
        UringDev::open(&p, UringOptions::default()).unwrap(),
    ));
}

fn thread_cpu_ns(tid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn idle_adaptive_reactor_uses_next_to_no_cpu() {
    let r = Reactor::start(cfg(IdlePolicy::Adaptive), |_| Ok(())).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let before = thread_cpu_ns(r.thread_id());
    let wall = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let used = thread_cpu_ns(r.thread_id()) - before;
    let elapsed = wall.elapsed().as_nanos() as u64;
    // Spinning would use ~100%; sleeping on the eventfd uses far under 1%.
    assert!(
        used * 100 < elapsed,
        "idle reactor used {used} ns of CPU in {elapsed} ns"
    );
    // And it still answers promptly once work arrives.
    assert_eq!(r.remote().call(|_: &Local| async { 7 }).unwrap(), 7);
    let s = r.shutdown();
    assert!(s.sleeps >= 1);
}

#[test]
fn busy_reactor_keeps_polling() {
    let r = Reactor::start(cfg(IdlePolicy::Busy), |_| Ok(())).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let a = r.remote().stats().loops;
    std::thread::sleep(Duration::from_millis(100));
    assert!(r.remote().stats().loops > a + 1000, "a busy reactor spins");
    assert_eq!(r.shutdown().sleeps, 0);
}

#[test]
fn shutdown_drains_in_flight_io() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dev.img");
    std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
    let dev: Arc<dyn BlockDev> = Arc::new(UringDev::open(&p, UringOptions::default()).unwrap());
    let pool = DmaPool::new(1 << 20, 8).unwrap();
    let (r, qid) = start_with_queue(dev, pool.clone(), 8);
    let qid = *qid.get().unwrap();
    let p2 = pool.clone();
    // Submit 8 large writes and drop their futures at once: the requests
    // stay in flight, owned by the queue, with nobody waiting.
    r.remote()
        .call(move |local: &Local| {
            let local = local.clone();
            async move {
                for i in 0..8u64 {
                    let b = p2.get().await;
                    let mut fut = Box::pin(local.io(qid, IoRequest::write(i << 20, 1 << 20, b, 0)));
                    let w = std::task::Waker::noop();
                    let _ = fut.as_mut().poll(&mut std::task::Context::from_waker(w));
                }
            }
        })
        .unwrap();
    r.shutdown();
    assert_eq!(
        pool.available(),
        8,
        "every buffer came back: nothing was left in flight"
    );
}

#[test]
fn shutdown_signal_reaches_long_running_tasks() {
    let r = Reactor::start(cfg(IdlePolicy::Adaptive), |local: &Local| {
        let l = local.clone();
        drop(local.spawn(async move {
            l.shutdown_signal().await;
        }));
        Ok(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    r.shutdown();
}

#[test]
fn full_request_queue_is_back_pressure() {
    let r = Reactor::start(
        ReactorConfig {
            remote_queue_depth: 2,
            ..cfg(IdlePolicy::Adaptive)
        },
        |_| Ok(()),
    )
    .unwrap();
    let remote = r.remote();
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    // Hold the reactor inside a job so the queue can't drain.
    remote
        .post(move |_| {
            g.wait();
            g.wait();
        })
        .unwrap();
    gate.wait();
    remote.post(|_| {}).unwrap();
    remote.post(|_| {}).unwrap();
    assert!(matches!(remote.post(|_| {}), Err(ReactorError::Full)));
    gate.wait();
    assert_eq!(remote.call(|_: &Local| async { 1 }).unwrap(), 1);
    r.shutdown();
    assert!(matches!(remote.post(|_| {}), Err(ReactorError::Stopped)));
}

#[test]
fn init_errors_stop_the_start() {
    let e = Reactor::start(cfg(IdlePolicy::Adaptive), |_| Err("no device".into())).unwrap_err();
    assert!(e.to_string().contains("no device"), "{e}");
}

#[test]
fn pinning_to_a_missing_core_is_an_error() {
    let c = ReactorConfig {
        pin: CorePin::Core(100_000),
        ..cfg(IdlePolicy::Adaptive)
    };
    assert!(Reactor::start(c, |_| Ok(())).is_err());
}

/// With 2 MiB hugepages reserved, the DMA pool takes them (MAP_HUGETLB).
/// Reserving needs root; the reservation is restored afterwards.
#[test]
fn dma_pool_uses_reserved_hugepages() {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: reserving hugepages needs root");
        return;
    }
    let path = "/proc/sys/vm/nr_hugepages";
    let Ok(before) = std::fs::read_to_string(path) else {
        eprintln!("skipped: no {path}");
        return;
    };
    let before: u64 = before.trim().parse().unwrap();
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write("/proc/sys/vm/nr_hugepages", self.0.to_string());
        }
    }
    let _restore = Restore(before);
    if std::fs::write(path, (before + 4).to_string()).is_err() {
        eprintln!("skipped: cannot reserve hugepages");
        return;
    }
    let pool = DmaPool::new(1 << 20, 4).unwrap();
    assert!(
        pool.uses_hugepages(),
        "4 MiB pool with 4 free hugepages must use them"
    );
    let mut b = pool.try_get().unwrap();
    b.as_mut_slice().fill(9);
    assert_eq!(b.as_ptr() as usize % 4096, 0);
    // A queue registers hugepage buffers like any others.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dev.img");
    std::fs::File::create(&p).unwrap().set_len(4 << 20).unwrap();
    let dev = UringDev::open(&p, UringOptions::default()).unwrap();
    let mut qp = open_queue(
        &dev,
        &QueueConfig {
            depth: 2,
            pools: vec![pool.clone()],
        },
    )
    .unwrap();
    assert!(qp
        .run_one(IoRequest::write(0, 1 << 20, b, 0))
        .result
        .is_ok());
}
