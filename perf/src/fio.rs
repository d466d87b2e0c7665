//! Run fio with the same parameters as one of our cases and read its JSON.

use std::path::Path;
use std::process::Command;

use crate::raw::{Case, Figures, Pattern};

pub fn available() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
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
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=scoutfs-ref",
        "--ioengine=io_uring",
        "--direct=1",
        "--registerfiles=1",
        "--fixedbufs=1",
        "--time_based=1",
        "--norandommap=1",
        "--randrepeat=0",
        "--lat_percentiles=1",
        "--output-format=json",
    ]);
    cmd.arg(format!("--filename={}", path.display()))
        .arg(format!("--size={size}"))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={}", case.block_bytes))
        .arg(format!("--iodepth={}", case.queue_depth))
        .arg(format!("--runtime={runtime_s}"));
    if sqpoll {
        cmd.arg("--sqthread_poll=1");
    }
    if let Some(c) = cpu {
        cmd.arg(format!("--cpus_allowed={c}"));
    }
    let out = cmd.output().map_err(|e| format!("running fio: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print notes before the JSON object.
    let start = text.find('{').ok_or("fio printed no JSON")?;
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let job = &v["jobs"][0];
    let dir = match case.pattern {
        Pattern::RandRead | Pattern::SeqRead => &job["read"],
        Pattern::RandWrite | Pattern::SeqWrite => &job["write"],
    };
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
