//! Run fio (with the same parameters as one of the raw cases, or any
//! job) and read its JSON.

use std::path::Path;
use std::process::Command;

use crate::raw::{Case, Figures, Pattern};

pub fn available() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One fio run: a job (or `numjobs` alike, reported as one group) on
/// one file.
#[derive(Clone, Debug)]
pub struct Job {
    pub ioengine: String,
    /// fio's `rw`: randread, randwrite, read, write.
    pub rw: &'static str,
    pub block_bytes: u32,
    pub iodepth: u32,
    pub numjobs: u32,
    pub path: std::path::PathBuf,
    pub size: u64,
    pub runtime_s: u64,
    /// Seconds run before measuring.
    pub ramp_s: u64,
    /// More arguments, e.g. "--fixedbufs=1".
    pub extra: Vec<String>,
}

impl Job {
    /// The command line, as RESULTS.md can quote it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("fio");
        cmd.args([
            "--name=scoutfs-ref",
            "--direct=1",
            "--time_based=1",
            "--norandommap=1",
            "--randrepeat=0",
            "--lat_percentiles=1",
            "--group_reporting=1",
            "--output-format=json",
        ]);
        cmd.arg(format!("--ioengine={}", self.ioengine))
            .arg(format!("--filename={}", self.path.display()))
            .arg(format!("--size={}", self.size))
            .arg(format!("--rw={}", self.rw))
            .arg(format!("--bs={}", self.block_bytes))
            .arg(format!("--iodepth={}", self.iodepth))
            .arg(format!("--numjobs={}", self.numjobs))
            .arg(format!("--runtime={}", self.runtime_s));
        if self.ramp_s > 0 {
            cmd.arg(format!("--ramp_time={}", self.ramp_s));
        }
        cmd.args(&self.extra);
        cmd
    }

    /// Run it and read the group's figures.
    pub fn run(&self) -> Result<Figures, String> {
        let out = self
            .command()
            .output()
            .map_err(|e| format!("running fio: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "fio failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let write = matches!(self.rw, "randwrite" | "write");
        figures(&String::from_utf8_lossy(&out.stdout), write)
    }
}

/// Run fio for `case` on `path` (`size` bytes) for `runtime_s`.
pub fn run(
    case: &Case,
    path: &Path,
    size: u64,
    runtime_s: u64,
    sqpoll: bool,
    cpu: Option<usize>,
) -> Result<Figures, String> {
    let rw = match case.pattern {
        Pattern::RandRead => "randread",
        Pattern::RandWrite => "randwrite",
        Pattern::SeqRead => "read",
        Pattern::SeqWrite => "write",
    };
    let mut extra = vec!["--registerfiles=1".to_string(), "--fixedbufs=1".to_string()];
    if sqpoll {
        extra.push("--sqthread_poll=1".into());
    }
    if let Some(c) = cpu {
        extra.push(format!("--cpus_allowed={c}"));
    }
    Job {
        ioengine: "io_uring".into(),
        rw,
        block_bytes: case.block_bytes,
        iodepth: case.queue_depth,
        numjobs: 1,
        path: path.to_path_buf(),
        size,
        runtime_s,
        ramp_s: 0,
        extra,
    }
    .run()
}

/// The figures of fio's first (with group reporting: only) job in its
/// JSON output.
fn figures(text: &str, write: bool) -> Result<Figures, String> {
    // fio may print notes before the JSON object.
    let start = text.find('{').ok_or("fio printed no JSON")?;
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let job = &v["jobs"][0];
    let dir = if write { &job["write"] } else { &job["read"] };
    let lat = &dir["lat_ns"];
    let pct = |k: &str| lat["percentile"][k].as_f64().unwrap_or(f64::NAN);
    Ok(Figures {
        iops: dir["iops"].as_f64().unwrap_or(0.0),
        bytes_per_s: dir["bw_bytes"].as_f64().unwrap_or(0.0),
        p50_us: pct("50.000000") / 1000.0,
        p99_us: pct("99.000000") / 1000.0,
        p999_us: pct("99.900000") / 1000.0,
        max_us: lat["max"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        syscalls_per_io: None,
    })
}
