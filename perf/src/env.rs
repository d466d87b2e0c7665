//! The environment a benchmark ran in, printed with its figures so that
//! results can be compared later.

pub fn describe() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    // The machine's, whatever CPUs this process was since confined to.
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    // The checkout this binary was built from, wherever it runs.
    let commit = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    vec![
        ("cpu".into(), format!("{cpu} ({cores} cores)")),
        ("kernel".into(), kernel),
        ("commit".into(), commit),
    ]
}

/// How busy the machine is: the load averages and how many compilers
/// are running (figures taken beside a build are not comparable).
pub fn machine_state() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let rustc = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "rustc")
                })
                .count()
        })
        .unwrap_or(0);
    format!(
        "load average {}, rustc processes running: {rustc}",
        load.join(" ")
    )
}

/// The header every mount benchmark prints before its figures.
pub fn print_header(title: &str, lines: &[String]) {
    println!("# scoutfs-perf {title}");
    for (k, v) in describe() {
        println!("{k}: {v}");
    }
    for l in lines {
        println!("{l}");
    }
}
