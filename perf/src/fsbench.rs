//! `scoutfs-perf fs`: the filesystem through its FUSE mount against ext4
//! on a loop device backed by a file on the same disk, in the same run.
//!
//! - metadata (mdtest-like): create + write 4 KiB + close, stat, readdir,
//!   `ls -l` (caches dropped, then again), unlink of N files in one
//!   directory, then of N files spread over many directories; operations
//!   (or entries) per second.
//! - streaming: a multi-GiB file written with 1 MiB writes (fsync
//!   included), caches dropped, read back with 1 MiB reads; MB/s.
//! - small appends: millions of write(2)s of a few bytes to a file opened
//!   O_APPEND, by one writer, then by four at once (each its own open of
//!   one file); from open to close, appends per second.
//!
//! Both run as root (loop devices, mounts). The scoutfs binary is the one
//! next to this one (target/release/scoutfs).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::target::{drop_caches, leave_last_cpu_to_the_reactor, parse_size, work_dir, Target};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the backing files go (the disk being measured).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Files per metadata phase.
    #[arg(long, default_value_t = 10_000)]
    pub files: usize,
    /// Directories the spread phase uses.
    #[arg(long, default_value_t = 100)]
    pub dirs: usize,
    /// Size of the streamed file (K, M, G suffixes).
    #[arg(long, default_value = "2G")]
    pub stream_size: String,
    /// Extra arguments for `scoutfs mount` (e.g. "--writeback-cache").
    #[arg(long, default_value = "")]
    pub mount_args: String,
    /// Only this target: "scoutfs" or "ext4" (default both).
    #[arg(long)]
    pub only: Option<String>,
    /// The phases to run, comma separated: metadata, stream, appends.
    #[arg(long, default_value = "metadata,stream,appends")]
    pub cases: String,
    /// Appends in each appends phase.
    #[arg(long, default_value_t = 3_000_000)]
    pub appends: usize,
    /// Bytes per append.
    #[arg(long, default_value_t = 8)]
    pub append_bytes: usize,
}

#[derive(Debug, Default, Clone)]
struct Figures {
    rows: Vec<(String, f64, &'static str)>,
}

fn rate(n: usize, t: Duration) -> f64 {
    n as f64 / t.as_secs_f64()
}

fn metadata(root: &Path, files: usize, dirs: usize, f: &mut Figures) -> std::io::Result<()> {
    let block = vec![0x5au8; 4096];
    for (phase, ndirs) in [("one dir", 1usize), ("spread", dirs.max(1))] {
        let base = root.join(format!("md-{}", ndirs));
        std::fs::create_dir(&base)?;
        let dirs: Vec<PathBuf> = (0..ndirs).map(|d| base.join(format!("d{d}"))).collect();
        for d in &dirs {
            std::fs::create_dir(d)?;
        }
        let path = |i: usize| dirs[i % ndirs].join(format!("file.{i}"));
        drop_caches();
        let t = Instant::now();
        for i in 0..files {
            let mut fh = std::fs::File::create(path(i))?;
            fh.write_all(&block)?;
        }
        f.rows.push((
            format!("create+4K ({phase})"),
            rate(files, t.elapsed()),
            "ops/s",
        ));
        drop_caches();
        let t = Instant::now();
        for i in 0..files {
            std::fs::metadata(path(i))?;
        }
        f.rows
            .push((format!("stat ({phase})"), rate(files, t.elapsed()), "ops/s"));
        drop_caches();
        let t = Instant::now();
        let mut seen = 0;
        for d in &dirs {
            seen += std::fs::read_dir(d)?.count();
        }
        assert_eq!(seen, files);
        f.rows.push((
            format!("readdir entries ({phase})"),
            rate(files, t.elapsed()),
            "ent/s",
        ));
        // `ls -l`: readdir, stat, and the ACL and security label queries
        // coreutils makes per file; cold (caches dropped), then again.
        for cache in ["cold", "warm"] {
            if cache == "cold" {
                drop_caches();
            }
            let t = Instant::now();
            ls_l(&dirs)?;
            f.rows.push((
                format!("ls -l {cache} ({phase})"),
                rate(files, t.elapsed()),
                "ent/s",
            ));
        }
        let t = Instant::now();
        for i in 0..files {
            std::fs::remove_file(path(i))?;
        }
        f.rows.push((
            format!("unlink ({phase})"),
            rate(files, t.elapsed()),
            "ops/s",
        ));
    }
    Ok(())
}

/// `ls -l` of `dirs` in one process, output discarded.
fn ls_l(dirs: &[PathBuf]) -> std::io::Result<()> {
    let st = Command::new("ls")
        .arg("-l")
        .args(dirs)
        .stdout(Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("ls -l: {st}")))
    }
}

fn streaming(root: &Path, bytes: u64, f: &mut Figures) -> std::io::Result<()> {
    let p = root.join("stream");
    let buf = vec![0xa5u8; 1 << 20];
    let n = bytes >> 20;
    let t = Instant::now();
    {
        let mut fh = std::fs::File::create(&p)?;
        for _ in 0..n {
            fh.write_all(&buf)?;
        }
        fh.sync_all()?;
    }
    f.rows.push((
        "stream write 1M (+fsync)".into(),
        (n << 20) as f64 / t.elapsed().as_secs_f64() / 1e6,
        "MB/s",
    ));
    drop_caches();
    let t = Instant::now();
    let mut fh = std::fs::File::open(&p)?;
    let mut rb = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let k = fh.read(&mut rb)?;
        if k == 0 {
            break;
        }
        total += k as u64;
    }
    assert_eq!(total, n << 20);
    f.rows.push((
        "stream read 1M".into(),
        total as f64 / t.elapsed().as_secs_f64() / 1e6,
        "MB/s",
    ));
    std::fs::remove_file(&p)?;
    Ok(())
}

/// `total` appends of `len` bytes to one file opened O_APPEND by each of
/// `writers` threads (each its own open, its share of the appends), from
/// the opens to the closes; checked by the file's size.
fn appends(
    root: &Path,
    total: usize,
    len: usize,
    writers: usize,
    f: &mut Figures,
) -> std::io::Result<()> {
    let p = root.join(format!("appends.{writers}"));
    let each = total / writers;
    let t = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let p = &p;
                s.spawn(move || -> std::io::Result<()> {
                    let rec = vec![b'a' + w as u8; len];
                    let mut fh = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(p)?;
                    for _ in 0..each {
                        // One write(2) each: std's File::write is the call.
                        if fh.write(&rec)? != len {
                            return Err(std::io::Error::other("a short append"));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
        })
    })?;
    let elapsed = t.elapsed();
    let size = std::fs::metadata(&p)?.len();
    if size != (each * writers * len) as u64 {
        return Err(std::io::Error::other(format!(
            "{}: {size} bytes after {} appends of {len}",
            p.display(),
            each * writers
        )));
    }
    f.rows.push((
        format!(
            "appends {len}B ({writers} writer{})",
            if writers == 1 { "" } else { "s" }
        ),
        rate(each * writers, elapsed),
        "ops/s",
    ));
    std::fs::remove_file(&p)
}

fn bench(t: &Target, a: &Args, stream: u64) -> Result<Figures, String> {
    let mut f = Figures::default();
    let want = |c: &str| a.cases.split(',').any(|x| x.trim() == c);
    if want("metadata") {
        metadata(t.mnt(), a.files, a.dirs, &mut f).map_err(|e| format!("metadata: {e}"))?;
    }
    if want("stream") {
        streaming(t.mnt(), stream, &mut f).map_err(|e| format!("streaming: {e}"))?;
    }
    if want("appends") {
        for writers in [1, 4] {
            appends(
                t.mnt(),
                a.appends,
                a.append_bytes.clamp(1, 4096),
                writers,
                &mut f,
            )
            .map_err(|e| format!("appends: {e}"))?;
        }
    }
    Ok(f)
}

pub fn run(a: &Args) -> i32 {
    match run_inner(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("scoutfs-perf fs: {e}");
            1
        }
    }
}

fn run_inner(a: &Args) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (loop devices and mounts)".into());
    }
    // Before this process leaves a CPU to the reactor (the count follows
    // its affinity).
    let env = crate::env::describe();
    match leave_last_cpu_to_the_reactor() {
        Some(c) => eprintln!(
            "client on CPUs 0..{}, CPU {c} left to the engine's reactor",
            c - 1
        ),
        None => eprintln!("one CPU: client and reactor share it"),
    }
    let stream = parse_size(&a.stream_size)?;
    let work = work_dir(&a.dir, "fs")?;
    let want = |name: &str| a.only.as_deref().is_none_or(|o| o == name);
    let mut results: Vec<(&str, Figures)> = Vec::new();
    if want("ext4") {
        let t = Target::ext4(&work, stream + (4 << 30))?;
        eprintln!("ext4 (loop, direct-io) at {}", t.mnt().display());
        results.push(("ext4", bench(&t, a, stream)?));
    }
    if want("scoutfs") {
        let t = Target::scoutfs(&work, stream + (4 << 30), &a.mount_args)?;
        eprintln!("scoutfs (FUSE) at {} {}", t.mnt().display(), a.mount_args);
        results.push(("scoutfs", bench(&t, a, stream)?));
    }
    let _ = std::fs::remove_dir_all(&work);

    for (k, v) in env {
        println!("{k}: {v}");
    }
    // The load while it ran: figures from a busy machine differ.
    println!("load average at the end: {}", crate::target::load_average());
    println!("scoutfs mount arguments: {:?}", a.mount_args);
    println!(
        "files {} (spread over {} dirs), stream {} MiB, appends {} of {} bytes",
        a.files,
        a.dirs,
        stream >> 20,
        a.appends,
        a.append_bytes
    );
    print!("{:<34}", "");
    for (name, _) in &results {
        print!("{name:>14}");
    }
    if results.len() == 2 {
        print!("{:>16}", "scoutfs/ext4");
    }
    println!();
    let rows = results[0].1.rows.len();
    for i in 0..rows {
        let (label, _, unit) = &results[0].1.rows[i];
        print!("{:<34}", format!("{label} {unit}"));
        for (_, f) in &results {
            print!("{:>14.1}", f.rows[i].1);
        }
        if results.len() == 2 {
            print!("{:>15.2}x", results[1].1.rows[i].1 / results[0].1.rows[i].1);
        }
        println!();
    }
    Ok(())
}
