//! `scoutfs-perf randread`: whether reads through the mount overlap.
//! fio 4 KiB random reads with direct=1 of a 1 GiB file inside the mount
//! (written first, so every read finds data) by 1, 8 and 32 concurrent
//! readers (fio jobs, psync: one read in flight each), beside fio with
//! io_uring on a raw file of the same size on the same disk at the same
//! total depth (one job, iodepth = readers). Per depth: IOPS and
//! latency; the scaling against one reader (the concurrency issue's
//! goal for scoutfs: at least 6x from 1 to 8) and the ratio to the raw
//! file (goal: at least 0.5x at the same depth). The FUSE floor
//! (`--targets floor`) answers reads from memory: what FUSE alone allows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::env;
use crate::fio::{self, Job};
use crate::raw::Figures;
use crate::target::{
    drop_caches, each_target, is_root, parse_kinds, parse_size, split_cpus, work_dir, Common, Kind,
    Target, WorkDir,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Params {
    /// Concurrent readers (fio jobs) on the mount, comma separated; the
    /// raw file is read by one io_uring job at the same depth.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub depths: Vec<u32>,
    /// Seconds per fio run (after one second of ramp).
    #[arg(long, default_value_t = 10)]
    pub runtime: u64,
    /// Size of the file read, in the mount and raw (K, M, G).
    #[arg(long, default_value = "1G")]
    pub file_size: String,
    /// fio's ioengine for the readers on the mount (each job keeps one
    /// read in flight).
    #[arg(long, default_value = "psync")]
    pub reader_ioengine: String,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Filesystems to read through, in this order (scoutfs, ext4, floor).
    #[arg(long, default_value = "scoutfs")]
    pub targets: String,
    #[command(flatten)]
    pub params: Params,
}

#[derive(Debug)]
pub struct Report {
    /// io_uring on the raw file, per depth.
    pub raw: Vec<(u32, Figures)>,
    /// Readers through each target, per depth.
    pub targets: Vec<(Kind, Vec<(u32, Figures)>)>,
}

pub fn run(a: &Args) -> i32 {
    let r = parse_kinds(&a.targets).and_then(|k| run_with(&a.common, &k, &a.params));
    match r {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("scoutfs-perf randread: {e}");
            1
        }
    }
}

pub fn run_with(c: &Common, kinds: &[Kind], p: &Params) -> Result<Report, String> {
    if !is_root() {
        return Err("needs root (loop devices, mounts, dropping caches)".into());
    }
    if !fio::available() {
        return Err("needs fio".into());
    }
    let size = parse_size(&p.file_size)? / (1 << 20) * (1 << 20);
    if size < 16 << 20 || p.depths.is_empty() || p.depths.contains(&0) {
        return Err("--file-size at least 16M, --depths at least 1 each".into());
    }
    let split = split_cpus(c.no_cpu_split);
    eprintln!("{split}");
    let before = env::machine_state();
    let work = WorkDir(work_dir(&c.dir, "randread")?);

    // The reference first: a raw file on the same disk.
    let raw_file = work.0.join("raw.dat");
    fill(&raw_file, size).map_err(|e| format!("writing {}: {e}", raw_file.display()))?;
    let raw_job = |depth: u32| Job {
        ioengine: "io_uring".into(),
        rw: "randread",
        block_bytes: 4096,
        iodepth: depth,
        numjobs: 1,
        path: raw_file.clone(),
        size,
        runtime_s: p.runtime,
        ramp_s: 1,
        extra: vec!["--registerfiles=1".into(), "--fixedbufs=1".into()],
    };
    let mut raw = Vec::new();
    for &d in &p.depths {
        eprintln!("raw file, io_uring QD {d}");
        raw.push((d, raw_job(d).run()?));
    }
    let _ = std::fs::remove_file(&raw_file);

    let mount_job = |file: PathBuf, readers: u32| Job {
        ioengine: p.reader_ioengine.clone(),
        rw: "randread",
        block_bytes: 4096,
        iodepth: 1,
        numjobs: readers,
        path: file,
        size,
        runtime_s: p.runtime,
        ramp_s: 1,
        extra: Vec::new(),
    };
    let targets = each_target(kinds, &work.0, size + (4 << 30), c, |t, _| {
        let file = t.mnt().join("randread.dat");
        fill(&file, size).map_err(|e| format!("writing {}: {e}", file.display()))?;
        drop_caches();
        let mut out = Vec::new();
        for &d in &p.depths {
            eprintln!("{} readers through {}", d, t.mnt().display());
            out.push((d, mount_job(file.clone(), d).run()?));
        }
        Ok(out)
    })?;

    let mut header = vec![
        split,
        format!("at the start: {before}"),
        format!("at the end: {}", env::machine_state()),
    ];
    for k in kinds {
        header.push(format!("{}: {}", k.name(), Target::describe(*k, c)));
    }
    let d = p.depths[p.depths.len() - 1];
    header.push(format!(
        "raw (QD {d}): {}",
        cmdline(&raw_job(d).command(), &work.0)
    ));
    header.push(format!(
        "mount ({d} readers): {}",
        cmdline(
            &mount_job(PathBuf::from("MNT/randread.dat"), d).command(),
            &work.0
        )
    ));
    env::print_header("randread", &header);
    let report = Report { raw, targets };
    print(&report);
    Ok(report)
}

/// A command line as one can paste it, the work directory shown as WORK.
fn cmdline(cmd: &Command, work: &Path) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| {
        a.to_string_lossy()
            .replace(&*work.to_string_lossy(), "WORK")
    }));
    words.join(" ")
}

fn print(r: &Report) {
    println!();
    println!("| target | readers (raw: QD) | IOPS | p50 us | p99 us | max us | vs 1 reader | / raw at the depth |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let rows = |name: &str, figs: &[(u32, Figures)], raw: Option<&[(u32, Figures)]>| {
        let one = figs.iter().find(|(d, _)| *d == 1).map(|(_, f)| f.iops);
        for (d, f) in figs {
            let scale = one.map_or("-".to_string(), |o| format!("{:.2}x", f.iops / o));
            let vs_raw = raw
                .and_then(|r| r.iter().find(|(rd, _)| rd == d))
                .map_or("-".to_string(), |(_, rf)| {
                    format!("{:.2}x", f.iops / rf.iops)
                });
            println!(
                "| {name} | {d} | {:.0} | {:.1} | {:.1} | {:.1} | {scale} | {vs_raw} |",
                f.iops, f.p50_us, f.p99_us, f.max_us
            );
        }
    };
    rows("raw io_uring", &r.raw, None);
    for (k, figs) in &r.targets {
        rows(k.name(), figs, Some(&r.raw));
    }
    println!();
    println!("(goals for scoutfs: 8 readers >= 6x one reader; >= 0.5x raw at the same depth)");
}

/// Write `size` bytes (1 MiB at a time) to `path` and fsync it.
fn fill(path: &Path, size: u64) -> std::io::Result<()> {
    let buf = vec![0xa5u8; 1 << 20];
    let mut f = std::fs::File::create(path)?;
    for _ in 0..size >> 20 {
        f.write_all(&buf)?;
    }
    f.sync_all()
}
