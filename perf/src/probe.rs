//! `scoutfs-perf probe`: how long a small request waits while others
//! work. A probe (a thread of this process) stats a small directory and
//! lists it every millisecond and records how long each probe took;
//! first with the filesystem idle, then while another process writes
//! 512 MiB files with fsync in a loop (`dd conv=fsync`), then while a
//! shell loop creates 20 000 empty files. Per phase: the probes' p50,
//! p99 and max, and the p99 against the same filesystem's idle p99 (the
//! concurrency issue's goal for scoutfs: within 2x under load). ext4 on a
//! loop device over a file in the same directory is the reference, the
//! FUSE floor (`--targets floor`) shows what FUSE alone costs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::env;
use crate::target::{
    each_target, is_root, kill_group, parse_kinds, parse_size, spawn_shell, split_cpus, work_dir,
    Common, Kind, Target, WorkDir,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Params {
    /// Seconds probed idle, and again while the fsync writer runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Microseconds from one probe's start to the next's.
    #[arg(long, default_value_t = 1000)]
    pub interval_us: u64,
    /// Size of each file the writer writes and fsyncs (K, M, G).
    #[arg(long, default_value = "512M")]
    pub write_size: String,
    /// Empty files the shell loop creates.
    #[arg(long, default_value_t = 20_000)]
    pub creates: usize,
    /// Files in the probed directory.
    #[arg(long, default_value_t = 10)]
    pub probe_entries: usize,
    /// Phases to run, comma separated: idle, writes, creates.
    #[arg(long, default_value = "idle,writes,creates")]
    pub phases: String,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Filesystems to probe, in this order (scoutfs, ext4, floor).
    #[arg(long, default_value = "scoutfs,ext4")]
    pub targets: String,
    #[command(flatten)]
    pub params: Params,
}

/// One phase's probes.
#[derive(Clone, Debug)]
pub struct Phase {
    pub name: &'static str,
    pub probes: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// What the load did meanwhile.
    pub load: String,
}

pub type Report = Vec<(Kind, Vec<Phase>)>;

pub fn run(a: &Args) -> i32 {
    let r = parse_kinds(&a.targets).and_then(|k| run_with(&a.common, &k, &a.params));
    match r {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("scoutfs-perf probe: {e}");
            1
        }
    }
}

/// Probe each of `kinds` and print the figures.
pub fn run_with(c: &Common, kinds: &[Kind], p: &Params) -> Result<Report, String> {
    if !is_root() {
        return Err("needs root (loop devices and mounts)".into());
    }
    let write_bytes = parse_size(&p.write_size)?;
    if write_bytes < 1 << 20 {
        return Err("--write-size is at least 1M".into());
    }
    let split = split_cpus(c.no_cpu_split);
    eprintln!("{split}");
    let before = env::machine_state();
    let work = WorkDir(work_dir(&c.dir, "probe")?);
    let bytes = (4u64 << 30).max(2 * write_bytes + (1 << 30));
    let report = each_target(kinds, &work.0, bytes, c, |t, scratch| {
        measure(t, scratch, p, write_bytes)
    })?;
    let mut header = vec![
        split,
        format!("at the start: {before}"),
        format!("at the end: {}", env::machine_state()),
    ];
    for k in kinds {
        header.push(format!("{}: {}", k.name(), Target::describe(*k, c)));
    }
    header.push(format!(
        "probe: stat + list of a directory of {} files every {} us; idle and fsync-writer phases {} s; writer: dd bs=1M conv=fsync of {} MiB files in a loop; creates: a sh loop of {} `: > fN`",
        p.probe_entries,
        p.interval_us,
        p.seconds,
        write_bytes >> 20,
        p.creates
    ));
    env::print_header("probe", &header);
    print(&report);
    Ok(report)
}

fn print(report: &Report) {
    println!();
    println!("| target | phase | probes | p50 us | p99 us | max us | p99 / idle p99 | load |");
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    for (k, phases) in report {
        let idle = phases.iter().find(|p| p.name == "idle").map(|p| p.p99_us);
        for p in phases {
            let ratio = idle.map_or("-".to_string(), |i| format!("{:.2}x", p.p99_us / i));
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {ratio} | {} |",
                k.name(),
                p.name,
                p.probes,
                p.p50_us,
                p.p99_us,
                p.max_us,
                p.load
            );
        }
    }
    println!();
    for (k, phases) in report {
        let Some(idle) = phases.iter().find(|p| p.name == "idle") else {
            continue;
        };
        let loaded: Vec<String> = phases
            .iter()
            .filter(|p| p.name != "idle")
            .map(|p| format!("{} {:.2}x", p.name, p.p99_us / idle.p99_us))
            .collect();
        if !loaded.is_empty() {
            println!(
                "{}: p99 under load / idle p99: {} (goal for scoutfs: <= 2x)",
                k.name(),
                loaded.join(", ")
            );
        }
    }
}

fn measure(t: &Target, scratch: &Path, p: &Params, write_bytes: u64) -> Result<Vec<Phase>, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let probed = t.mnt().join("probe");
    std::fs::create_dir(&probed).map_err(|e| io("probe dir", e))?;
    for i in 0..p.probe_entries {
        std::fs::File::create(probed.join(format!("e{i}"))).map_err(|e| io("probe dir", e))?;
    }
    let load = t.mnt().join("load");
    std::fs::create_dir(&load).map_err(|e| io("load dir", e))?;
    let want = |ph: &str| p.phases.split(',').any(|x| x.trim() == ph);
    let secs = Duration::from_secs(p.seconds.max(1));
    let mut out = Vec::new();
    if want("idle") {
        settle();
        let (h, _) = probing(&probed, p, || {
            std::thread::sleep(secs);
            Ok("-".to_string())
        })?;
        out.push(phase("idle", &h, "-".into()));
    }
    if want("writes") {
        settle();
        let count = scratch.join("writes.count");
        let file = load.join("w");
        let mib = (write_bytes >> 20).to_string();
        let (h, what) = probing(&probed, p, || {
            let mut sh = spawn_shell(
                r#"n=0; while dd if=/dev/zero of="$1" bs=1M count="$2" conv=fsync status=none; do n=$((n+1)); echo $n > "$3"; done"#,
                &[file.as_os_str(), mib.as_ref(), count.as_os_str()],
            )?;
            std::thread::sleep(secs);
            let exited = sh.try_wait().ok().flatten();
            kill_group(&mut sh);
            if let Some(st) = exited {
                return Err(format!("the writer stopped early ({st})"));
            }
            let n: u64 = std::fs::read_to_string(&count)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            Ok(format!(
                "{n} files written+fsynced, {:.0} MB/s",
                (n * write_bytes) as f64 / secs.as_secs_f64() / 1e6
            ))
        })?;
        let _ = std::fs::remove_file(&file);
        out.push(phase("fsync writes", &h, what));
    }
    if want("creates") {
        settle();
        let dir = load.join("creates");
        std::fs::create_dir(&dir).map_err(|e| io("creates dir", e))?;
        let n = p.creates.to_string();
        let (h, what) = probing(&probed, p, || {
            let start = Instant::now();
            let mut sh = spawn_shell(
                r#"cd "$1" || exit 1; i=0; while [ $i -lt "$2" ]; do : > f$i || exit 1; i=$((i+1)); done"#,
                &[dir.as_os_str(), n.as_ref()],
            )?;
            let st = sh.wait().map_err(|e| e.to_string())?;
            let took = start.elapsed().as_secs_f64();
            if !st.success() {
                return Err(format!("the create loop failed ({st})"));
            }
            Ok(format!(
                "{} creates in {took:.2} s, {:.0}/s",
                p.creates,
                p.creates as f64 / took
            ))
        })?;
        out.push(phase("creates", &h, what));
        std::fs::remove_dir_all(&dir).map_err(|e| io("removing the created files", e))?;
    }
    Ok(out)
}

/// Let the previous phase's write-back finish before the next one.
fn settle() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_secs(1));
}

fn phase(name: &'static str, h: &Histogram<u64>, load: String) -> Phase {
    let us = |ns: u64| ns as f64 / 1000.0;
    Phase {
        name,
        probes: h.len(),
        p50_us: us(h.value_at_quantile(0.50)),
        p99_us: us(h.value_at_quantile(0.99)),
        max_us: us(h.max()),
        load,
    }
}

/// Probe `dir` from another thread while `load` runs; the probes'
/// latencies (ns) and what `load` says.
fn probing(
    dir: &Path,
    p: &Params,
    load: impl FnOnce() -> Result<String, String>,
) -> Result<(Histogram<u64>, String), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (dir, stop) = (dir.to_path_buf(), stop.clone());
        let interval = Duration::from_micros(p.interval_us.max(1));
        let entries = p.probe_entries;
        std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || probe(dir, entries, interval, &stop))
            .map_err(|e| e.to_string())?
    };
    let what = load();
    stop.store(true, Ordering::Relaxed);
    let h = prober
        .join()
        .unwrap_or_else(|_| Err("the probe panicked".into()))?;
    Ok((h, what?))
}

/// Stat `dir` and list it every `interval` (a probe that overruns its
/// slot is followed at once by the next, late ones are not made up),
/// until `stop`.
fn probe(
    dir: PathBuf,
    entries: usize,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<Histogram<u64>, String> {
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        std::fs::metadata(&dir).map_err(|e| format!("stat {}: {e}", dir.display()))?;
        let mut n = 0;
        for e in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            e.map_err(|e| format!("{}: {e}", dir.display()))?;
            n += 1;
        }
        let ns = t.elapsed().as_nanos() as u64;
        if n != entries {
            return Err(format!("{}: {n} entries, not {entries}", dir.display()));
        }
        h.saturating_record(ns.max(1));
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    Ok(h)
}
