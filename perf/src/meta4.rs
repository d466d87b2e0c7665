//! `scoutfs-perf meta4`: whether metadata operations from several
//! processes overlap. Creates (empty files), stats and unlinks of N files
//! by one process, then by 4 processes at once, each in its own
//! directory; each phase starts with the caches dropped. The aggregate
//! rate of the 4 over the rate of the one is the figure (the concurrency
//! issue's goal for scoutfs: at least 2x). ext4 on a loop device shows
//! what the client side allows on the same CPUs; the FUSE floor what
//! FUSE alone allows.
//!
//! The processes are this binary's hidden `meta-worker`, one per
//! directory and phase; a phase's time runs from starting the first to
//! reaping the last.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::env;
use crate::target::{
    drop_caches, each_target, is_root, parse_kinds, split_cpus, work_dir, Common, Kind, Target,
    WorkDir,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Params {
    /// Files each process creates, stats and unlinks.
    #[arg(long, default_value_t = 5000)]
    pub files: usize,
    /// Processes of the concurrent run (each in its own directory).
    #[arg(long, default_value_t = 4)]
    pub procs: usize,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Filesystems to run on, in this order (scoutfs, ext4, floor).
    #[arg(long, default_value = "scoutfs,ext4")]
    pub targets: String,
    #[command(flatten)]
    pub params: Params,
}

/// The hidden subcommand: one phase in one directory.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// create, stat or unlink.
    #[arg(long)]
    pub phase: String,
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub files: usize,
}

const PHASES: [&str; 3] = ["create", "stat", "unlink"];

/// Per phase: ops/s of one process, aggregate ops/s of `procs`.
#[derive(Clone, Debug)]
pub struct Rates {
    pub phase: &'static str,
    pub one: f64,
    pub many: f64,
}

pub type Report = Vec<(Kind, Vec<Rates>)>;

pub fn worker(a: &WorkerArgs) -> i32 {
    let path = |i: usize| a.dir.join(format!("f{i}"));
    let r = (0..a.files).try_for_each(|i| match a.phase.as_str() {
        "create" => std::fs::File::create(path(i)).map(drop),
        "stat" => std::fs::metadata(path(i)).map(drop),
        "unlink" => std::fs::remove_file(path(i)),
        _ => Err(std::io::Error::other(format!(
            "unknown phase {:?}",
            a.phase
        ))),
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("meta-worker {} in {}: {e}", a.phase, a.dir.display());
            1
        }
    }
}

pub fn run(a: &Args) -> i32 {
    let r = parse_kinds(&a.targets).and_then(|k| run_with(&a.common, &k, &a.params));
    match r {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("scoutfs-perf meta4: {e}");
            1
        }
    }
}

pub fn run_with(c: &Common, kinds: &[Kind], p: &Params) -> Result<Report, String> {
    if !is_root() {
        return Err("needs root (loop devices, mounts, dropping caches)".into());
    }
    if p.files == 0 || p.procs < 2 {
        return Err("--files at least 1 and --procs at least 2".into());
    }
    let split = split_cpus(c.no_cpu_split);
    eprintln!("{split}");
    let before = env::machine_state();
    let work = WorkDir(work_dir(&c.dir, "meta4")?);
    let report = each_target(kinds, &work.0, 4 << 30, c, |t, _| measure(t, p))?;
    let mut header = vec![
        split,
        format!("at the start: {before}"),
        format!("at the end: {}", env::machine_state()),
    ];
    for k in kinds {
        header.push(format!("{}: {}", k.name(), Target::describe(*k, c)));
    }
    header.push(format!(
        "{} files per process, 1 process then {} at once, each in its own directory; caches dropped before each phase",
        p.files, p.procs
    ));
    env::print_header("meta4", &header);
    print(&report, p.procs);
    Ok(report)
}

fn print(report: &Report, procs: usize) {
    println!();
    println!("| target | phase | 1 process ops/s | {procs} processes ops/s | {procs}/1 |");
    println!("|---|---|---:|---:|---:|");
    for (k, rates) in report {
        for r in rates {
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.2}x |",
                k.name(),
                r.phase,
                r.one,
                r.many,
                r.many / r.one
            );
        }
    }
    println!();
    println!("(goal for scoutfs: {procs}/1 >= 2x)");
}

fn measure(t: &Target, p: &Params) -> Result<Vec<Rates>, String> {
    let mut one = Vec::new();
    let mut many = Vec::new();
    for (n, out) in [(1usize, &mut one), (p.procs, &mut many)] {
        let base = t.mnt().join(format!("meta{n}"));
        let dirs: Vec<PathBuf> = (0..n).map(|i| base.join(format!("p{i}"))).collect();
        for d in &dirs {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        for phase in PHASES {
            drop_caches();
            let secs = run_phase(phase, &dirs, p.files)?;
            out.push((n * p.files) as f64 / secs);
        }
        std::fs::remove_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    }
    Ok(PHASES
        .iter()
        .zip(one.iter().zip(&many))
        .map(|(phase, (o, m))| Rates {
            phase,
            one: *o,
            many: *m,
        })
        .collect())
}

/// Run `phase` in each of `dirs` at once, a process each; seconds from
/// the first start to the last exit.
fn run_phase(phase: &str, dirs: &[PathBuf], files: usize) -> Result<f64, String> {
    let bin = std::env::current_exe().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut children = Vec::with_capacity(dirs.len());
    let mut failed = None;
    for d in dirs {
        match spawn_worker(&bin, phase, d, files) {
            Ok(c) => children.push(c),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    for mut c in children {
        match c.wait() {
            Ok(st) if st.success() => {}
            Ok(st) => failed = Some(format!("a {phase} worker failed ({st})")),
            Err(e) => failed = Some(e.to_string()),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    failed.map_or(Ok(secs), Err)
}

fn spawn_worker(
    bin: &Path,
    phase: &str,
    dir: &Path,
    files: usize,
) -> Result<std::process::Child, String> {
    Command::new(bin)
        .arg("meta-worker")
        .arg("--phase")
        .arg(phase)
        .arg("--dir")
        .arg(dir)
        .arg("--files")
        .arg(files.to_string())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))
}
