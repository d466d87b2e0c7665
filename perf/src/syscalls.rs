//! Count the syscalls one thread makes during a window, with a real tool:
//! `perf stat -e raw_syscalls:sys_enter -t TID` when perf and its
//! tracepoints work, otherwise `strace -c -p TID`.

use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct SyscallCount {
    pub tool: &'static str,
    pub count: u64,
}

/// Count `tid`'s syscalls for `window`. Blocks for the window.
pub fn count(tid: i32, window: Duration) -> Option<SyscallCount> {
    perf(tid, window).or_else(|| strace(tid, window))
}

fn perf(tid: i32, window: Duration) -> Option<SyscallCount> {
    let out = Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "raw_syscalls:sys_enter",
            "-t",
            &tid.to_string(),
            "--",
            "sleep",
        ])
        .arg(format!("{:.3}", window.as_secs_f64()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))?;
    let count = line.split(',').next()?.trim().parse().ok()?;
    Some(SyscallCount {
        tool: "perf stat -e raw_syscalls:sys_enter -t TID",
        count,
    })
}

fn strace(tid: i32, window: Duration) -> Option<SyscallCount> {
    let dir = std::env::temp_dir().join(format!("scoutfs-perf-strace-{}", std::process::id()));
    let mut child = Command::new("strace")
        .args(["-c", "-o"])
        .arg(&dir)
        .args(["-p", &tid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(window);
    // strace that already exited could not attach: no figure.
    if child.try_wait().ok()?.is_some() {
        return None;
    }
    // SAFETY: kill with a pid we spawned; SIGINT makes strace detach and
    // write its summary.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().ok()?;
    let text = std::fs::read_to_string(&dir).ok()?;
    let _ = std::fs::remove_file(&dir);
    // The "total" line: % time, seconds, usecs/call, calls, errors, total.
    // A thread that made no syscall at all gets a summary without one.
    let count = match text.lines().find(|l| l.trim_end().ends_with("total")) {
        Some(total) => {
            let fields: Vec<&str> = total.split_whitespace().collect();
            fields.get(fields.len().checked_sub(3)?)?.parse().ok()?
        }
        None => 0,
    };
    Some(SyscallCount {
        tool: "strace -c -p TID",
        count,
    })
}
