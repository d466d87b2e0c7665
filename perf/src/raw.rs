//! `scoutfs-perf raw`: the device layer through the reactor, against fio.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use scoutfs_engine::dev::nvme::NvmeAddr;
use scoutfs_engine::dev::open_any;
use scoutfs_engine::dev::uring::UringOptions;
use scoutfs_engine::dev::{open_queue, BlockDev, IoRequest, QueueConfig};
use scoutfs_engine::dma::DmaPool;
use scoutfs_engine::reactor::{CorePin, IdlePolicy, Local, Reactor, ReactorConfig};
use scoutfs_engine::util::rng::SimRng;

use crate::{env, fio, syscalls};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// File, block device or NVMe namespace (`nvme://0000:00:04.0/1`,
    /// bound to vfio-pci) to run on. Default: a temporary file in the
    /// current directory, removed afterwards.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Bytes of the device to use (K, M, G suffixes). Default 2G for a new
    /// temporary file, the whole device otherwise.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Seconds per case.
    #[arg(long, default_value_t = 10)]
    pub runtime: u64,
    /// Reactor idle policy (busy spins; adaptive sleeps when idle).
    #[arg(long, default_value = "busy")]
    pub idle: IdlePolicy,
    /// Use SQPOLL (ours and fio's): no submission syscalls in steady state.
    #[arg(long)]
    pub sqpoll: bool,
    /// Skip the fio reference.
    #[arg(long)]
    pub no_fio: bool,
    /// Run only these cases (comma separated: seqwrite, seqread,
    /// randread1, randread32, randwrite1, randwrite32).
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Core for the reactor (and fio). Default: the last core when there
    /// are several, else unpinned.
    #[arg(long)]
    pub core: Option<usize>,
    /// Allow writing to an existing file or device given with --file
    /// (its contents are destroyed).
    #[arg(long)]
    pub destroy: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub pattern: Pattern,
    pub block_bytes: u32,
    pub queue_depth: u32,
}

pub fn all_cases() -> Vec<Case> {
    let c = |name, pattern, block_bytes, queue_depth| Case {
        name,
        pattern,
        block_bytes,
        queue_depth,
    };
    vec![
        c("seqwrite", Pattern::SeqWrite, 1 << 20, 8),
        c("seqread", Pattern::SeqRead, 1 << 20, 8),
        c("randread1", Pattern::RandRead, 4096, 1),
        c("randread32", Pattern::RandRead, 4096, 32),
        c("randwrite1", Pattern::RandWrite, 4096, 1),
        c("randwrite32", Pattern::RandWrite, 4096, 32),
    ]
}

#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub iops: f64,
    pub bytes_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub syscalls_per_io: Option<(f64, &'static str)>,
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run(a: &Args) -> i32 {
    match run_inner(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("scoutfs-perf raw: {e}");
            1
        }
    }
}

fn run_inner(a: &Args) -> Result<(), String> {
    let cases: Vec<Case> = if a.cases.is_empty() {
        all_cases()
    } else {
        let all = all_cases();
        a.cases
            .iter()
            .map(|n| {
                all.iter()
                    .find(|c| c.name == n)
                    .cloned()
                    .ok_or(format!("unknown case {n:?}"))
            })
            .collect::<Result<_, _>>()?
    };
    let (path, _temp) = match &a.file {
        Some(p) => {
            if !a.destroy {
                return Err(format!(
                    "{} would be overwritten; add --destroy to allow it",
                    p.display()
                ));
            }
            (p.clone(), None)
        }
        None => {
            let p = std::env::current_dir()
                .map_err(|e| e.to_string())?
                .join(format!(".scoutfs-perf-raw-{}.img", std::process::id()));
            let size = a.size.unwrap_or(2 << 30);
            let f =
                std::fs::File::create(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            f.set_len(size)
                .map_err(|e| format!("sizing {}: {e}", p.display()))?;
            (p.clone(), Some(TempFile(p)))
        }
    };
    let opts = UringOptions {
        sqpoll_idle_ms: a.sqpoll.then_some(1000),
        ..Default::default()
    };
    let spec = path.to_string_lossy().into_owned();
    // A userspace driver owns the device: nvme:// (ours) or spdk://.
    let nvme = NvmeAddr::is_nvme(&spec) || spec.starts_with("spdk://");
    let dev: Arc<dyn BlockDev> = open_any(&spec, opts).map_err(|e| e.to_string())?;
    let size = a
        .size
        .unwrap_or(dev.geometry().capacity_bytes)
        .min(dev.geometry().capacity_bytes);
    let size = size / (1 << 20) * (1 << 20);
    if size < 64 << 20 {
        return Err(format!("{} MiB is too small; use at least 64M", size >> 20));
    }
    // fio reaches a device through the kernel, which an nvme:// namespace
    // has left; compare against the kernel path in a separate run instead.
    let fio_ok = !a.no_fio && !nvme && fio::available();
    let cpu = a.core.or_else(core_for_reactor);

    println!("# scoutfs-perf raw");
    for (k, v) in env::describe() {
        println!("{k}: {v}");
    }
    println!(
        "device: {} ({} MiB used, logical block {} B)",
        path.display(),
        size >> 20,
        dev.geometry().logical_block_size
    );
    let backend = if spec.starts_with("spdk://") {
        "spdk (SPDK 25.09's NVMe driver, polled qpairs)".to_string()
    } else if nvme {
        "nvme (userspace driver through VFIO, polled queues)".to_string()
    } else {
        format!(
            "uring, O_DIRECT, fixed file + fixed buffers, sqpoll {}",
            if a.sqpoll { "on" } else { "off" }
        )
    };
    println!(
        "backend: {backend}, reactor idle {:?}, pinned to core {}",
        a.idle,
        cpu.map_or("none".to_string(), |c| c.to_string())
    );
    println!(
        "reference: {}",
        if fio_ok {
            "fio --ioengine=io_uring --direct=1 --registerfiles --fixedbufs, same file, same core"
        } else {
            "none (fio not installed or --no-fio)"
        }
    );
    println!("runtime: {} s per case", a.runtime);
    println!();

    eprintln!(
        "prefilling {} MiB so reads hit written blocks ...",
        size >> 20
    );
    let fill = Case {
        name: "prefill",
        pattern: Pattern::SeqWrite,
        block_bytes: 1 << 20,
        queue_depth: 8,
    };
    run_ours(&dev, &fill, size, None, a.idle, cpu, true)?;

    println!("| case | engine | IOPS | MB/s | p50 us | p99 us | p99.9 us | max us | syscalls/IO |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for case in &cases {
        let ours = run_ours(
            &dev,
            case,
            size,
            Some(Duration::from_secs(a.runtime)),
            a.idle,
            cpu,
            false,
        )?;
        print_row(case, "scoutfs", &ours);
        if fio_ok {
            let f = fio::run(case, &path, size, a.runtime, a.sqpoll, cpu)?;
            print_row(case, "fio", &f);
            ratios.push((case.clone(), ours, f));
        }
    }
    if !ratios.is_empty() {
        println!();
        println!("| case | IOPS ours/fio | MB/s ours/fio | p50 ours-fio us |");
        println!("|---|---:|---:|---:|");
        for (c, o, f) in &ratios {
            println!(
                "| {} | {:.3} | {:.3} | {:+.1} |",
                c.name,
                o.iops / f.iops,
                o.bytes_per_s / f.bytes_per_s,
                o.p50_us - f.p50_us
            );
        }
    }
    Ok(())
}

fn core_for_reactor() -> Option<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n > 1).then_some(n - 1)
}

fn print_row(case: &Case, engine: &str, f: &Figures) {
    let sc = f
        .syscalls_per_io
        .map_or("-".to_string(), |(v, _)| format!("{v:.3}"));
    println!(
        "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
        case.name,
        engine,
        f.iops,
        f.bytes_per_s / 1e6,
        f.p50_us,
        f.p99_us,
        f.p999_us,
        f.max_us,
        sc
    );
}

struct Shared {
    hist: RefCell<Histogram<u64>>,
    ops: Cell<u64>,
    next_seq: Cell<u64>,
    errors: RefCell<Vec<String>>,
}

/// Run one case through a fresh reactor. With `runtime` None, run one pass
/// over the device (sequential only; used to prefill). Counts the reactor
/// thread's syscalls in the middle of a timed run.
fn run_ours(
    dev: &Arc<dyn BlockDev>,
    case: &Case,
    size: u64,
    runtime: Option<Duration>,
    idle: IdlePolicy,
    cpu: Option<usize>,
    one_pass: bool,
) -> Result<Figures, String> {
    let pool = DmaPool::new(case.block_bytes as usize, case.queue_depth as usize)
        .map_err(|e| e.to_string())?;
    let qcfg = QueueConfig {
        depth: case.queue_depth,
        pools: vec![pool.clone()],
    };
    let d = dev.clone();
    let qid = Arc::new(std::sync::OnceLock::new());
    let q2 = qid.clone();
    let rcfg = ReactorConfig {
        name: "scoutfs-perf-reactor".into(),
        pin: cpu.map_or(CorePin::None, CorePin::Core),
        idle,
        ..ReactorConfig::default()
    };
    let reactor = Reactor::start(rcfg, move |local: &Local| {
        let qp = open_queue(&*d, &qcfg)?;
        q2.set(local.attach_queue(qp))
            .map_err(|_| "queue set twice")?;
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    let qid = *qid.get().ok_or("no queue")?;
    let tid = reactor.thread_id();
    let (c, p) = (case.clone(), pool.clone());
    let deadline_after = runtime;
    let measure = std::thread::spawn(move || {
        let window = deadline_after?.checked_div(2)?;
        std::thread::sleep(window / 2);
        let before = Instant::now();
        let sc = syscalls::count(tid, window)?;
        Some((sc, before.elapsed()))
    });
    let remote = reactor.remote();
    let (figs, samples) = remote
        .call(move |local: &Local| {
            let local = local.clone();
            async move {
                let sh = Rc::new(Shared {
                    hist: RefCell::new(
                        Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
                    ),
                    ops: Cell::new(0),
                    next_seq: Cell::new(0),
                    errors: RefCell::new(Vec::new()),
                });
                let start = Instant::now();
                let deadline = runtime.map(|r| start + r);
                let bs = u64::from(c.block_bytes);
                let blocks = size / bs;
                // Sample the op count every 10 ms for the syscall window.
                let samples = Rc::new(RefCell::new(Vec::new()));
                let (sl, ssh, ss) = (local.clone(), sh.clone(), samples.clone());
                let sampler = local.spawn(async move {
                    while deadline.is_some_and(|d| Instant::now() < d) {
                        ss.borrow_mut().push((Instant::now(), ssh.ops.get()));
                        sl.sleep(Duration::from_millis(10)).await;
                    }
                });
                let mut workers = Vec::new();
                for w in 0..c.queue_depth {
                    let (l, sh, p, c) = (local.clone(), sh.clone(), p.clone(), c.clone());
                    workers.push(local.spawn(async move {
                        let mut rng = SimRng::new(0x5eed ^ u64::from(w));
                        let mut buf = Some(p.get().await);
                        if matches!(c.pattern, Pattern::SeqWrite | Pattern::RandWrite) {
                            if let Some(b) = buf.as_mut() {
                                b.as_mut_slice().fill(0x5a ^ w as u8);
                            }
                        }
                        loop {
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                break;
                            }
                            let blk = match c.pattern {
                                Pattern::RandRead | Pattern::RandWrite => rng.below(blocks),
                                Pattern::SeqRead | Pattern::SeqWrite => {
                                    let n = sh.next_seq.get();
                                    if one_pass && n >= blocks {
                                        break;
                                    }
                                    sh.next_seq.set(n + 1);
                                    n % blocks
                                }
                            };
                            let b = buf.take().expect("buffer returned by the last completion");
                            let req = match c.pattern {
                                Pattern::RandRead | Pattern::SeqRead => {
                                    IoRequest::read(blk * bs, c.block_bytes, b, 0)
                                }
                                _ => IoRequest::write(blk * bs, c.block_bytes, b, 0),
                            };
                            let t0 = Instant::now();
                            let done = l.io(qid, req).await;
                            let ns = t0.elapsed().as_nanos() as u64;
                            buf = done.buf;
                            if let Err(e) = done.result {
                                sh.errors.borrow_mut().push(e.to_string());
                                break;
                            }
                            let _ = sh.hist.borrow_mut().record(ns.max(1));
                            sh.ops.set(sh.ops.get() + 1);
                            if buf.is_none() {
                                break;
                            }
                        }
                    }));
                }
                for w in workers {
                    w.await;
                }
                if one_pass {
                    let f = l_flush(&local, qid).await;
                    if let Err(e) = f {
                        sh.errors.borrow_mut().push(e);
                    }
                }
                sampler.await;
                let elapsed = start.elapsed().as_secs_f64();
                if let Some(e) = sh.errors.borrow().first() {
                    return (Err(e.clone()), Vec::new());
                }
                let h = sh.hist.borrow();
                let ops = sh.ops.get() as f64;
                let figs = Figures {
                    iops: ops / elapsed,
                    bytes_per_s: ops * bs as f64 / elapsed,
                    p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
                    p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
                    p999_us: h.value_at_quantile(0.999) as f64 / 1000.0,
                    max_us: h.max() as f64 / 1000.0,
                    syscalls_per_io: None,
                };
                let s = samples.borrow().clone();
                (Ok(figs), s)
            }
        })
        .map_err(|e| e.to_string())?;
    reactor.shutdown();
    let mut figs = figs?;
    if let Ok(Some((sc, _))) = measure.join() {
        // I/Os completed during the counting window, from the samples.
        let window_ios = ios_in_window(&samples, runtime.unwrap_or_default());
        if window_ios > 0 {
            figs.syscalls_per_io = Some((sc.count as f64 / window_ios as f64, sc.tool));
        }
    }
    Ok(figs)
}

/// I/Os completed in the syscall-counting window ([runtime/4, 3*runtime/4)
/// after the start), from the periodic samples of the op count.
fn ios_in_window(samples: &[(Instant, u64)], runtime: Duration) -> u64 {
    let Some(&(t0, _)) = samples.first() else {
        return 0;
    };
    let at = |d: Duration| {
        samples
            .iter()
            .find(|(t, _)| t.duration_since(t0) >= d)
            .map(|s| s.1)
    };
    match (at(runtime / 4), at(runtime * 3 / 4)) {
        (Some(a), Some(b)) => b - a,
        _ => 0,
    }
}

async fn l_flush(local: &Local, qid: scoutfs_engine::reactor::QueueId) -> Result<(), String> {
    local
        .io(qid, IoRequest::flush(0))
        .await
        .result
        .map_err(|e| e.to_string())
}
