//! The mount(8) helper: `/sbin/mount.scoutfs` (for `mount -t scoutfs` and
//! fstab lines of type `scoutfs`) and `/sbin/mount.fuse.scoutfs` (type
//! `fuse.scoutfs`, what /proc/mounts shows) are symlinks to the `scoutfs`
//! binary, which acts as the helper when run under either name (one
//! file to install and keep in step; the options are parsed by the same
//! code as `scoutfs mount -o`).
//!
//! mount(8) runs `mount.scoutfs SOURCE DIR [-sfnv] [-N NS] [-o OPTS] [-t
//! TYPE]`. The devices come as the original's kernel mount names them
//! (`mount -t scoutfs -o metadev_path=META DATA DIR`) or metadata device
//! first (`mount -t scoutfs -o data=DATA META DIR`). The helper starts
//! `scoutfs mount META DATA --fuse DIR --source SOURCE -o REST` as a
//! daemon (its own session, stdin /dev/null, stdout and stderr appended
//! to a log file), waits until the engine reports the mount live
//! (`READY=1` on `$NOTIFY_SOCKET`, sd_notify's protocol) and exits 0
//! while the engine serves on; if the engine exits first, the helper
//! prints what it said and exits 32, mount(8)'s "mount failure".

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::mount::{mount_name, NOTIFY_SOCKET};

/// The names the binary answers to as mount(8)'s helper.
pub const MOUNT_HELPERS: [&str; 2] = ["mount.scoutfs", "mount.fuse.scoutfs"];

/// mount(8)'s exit codes: bad invocation, mount failure.
pub const EX_USAGE: i32 = 1;
pub const EX_FAIL: i32 = 32;

/// Options mount(8) acts on itself (or passes for the record) that mean
/// nothing to the engine: dropped.
const USERSPACE_ONLY: [&str; 12] = [
    "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner",
    "noowner", "group", "nogroup",
];

/// Run as the helper if `argv0` is one of its names; `None` otherwise.
pub fn dispatch(argv0: &OsStr, args: &[OsString]) -> Option<i32> {
    let name = Path::new(argv0).file_name()?;
    let name = MOUNT_HELPERS.iter().find(|h| OsStr::new(h) == name)?;
    Some(match mount_helper(name, args) {
        Ok(()) => 0,
        Err((code, msg)) => {
            let _ = writeln!(std::io::stderr(), "{name}: {msg}");
            code
        }
    })
}

/// The helper's command line, as mount(8) gives it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HelperArgs {
    pub source: OsString,
    pub dir: PathBuf,
    pub options: String,
    /// `-f`: do everything but mount.
    pub fake: bool,
    pub verbose: bool,
}

pub fn parse_args(args: &[OsString]) -> Result<HelperArgs, String> {
    let usage = "usage: mount.scoutfs SOURCE DIR [-sfnv] [-o OPTIONS] [-t TYPE]";
    let mut a = HelperArgs::default();
    let mut positional: Vec<&OsString> = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let bytes = arg.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'-' {
            positional.push(arg);
            continue;
        }
        let flags = &arg.to_str().ok_or(format!("{arg:?}: {usage}"))?[1..];
        for (i, c) in flags.char_indices() {
            match c {
                'f' => a.fake = true,
                'v' => a.verbose = true,
                // Sloppy (ignore options we don't know) and no mtab:
                // every option goes to the engine, which knows them all,
                // and there is no mtab to write.
                's' | 'n' => {}
                'o' | 't' | 'N' => {
                    let rest = &flags[i + 1..];
                    let value = if rest.is_empty() {
                        it.next()
                            .and_then(|v| v.to_str())
                            .ok_or(format!("-{c} needs a value; {usage}"))?
                            .to_string()
                    } else {
                        rest.to_string()
                    };
                    match c {
                        'o' => opts.push(value),
                        // The type (scoutfs or fuse.scoutfs) picked us.
                        't' => {}
                        _ => {
                            return Err(format!(
                                "-N {value}: mounting in another namespace is not supported"
                            ))
                        }
                    }
                    break;
                }
                _ => return Err(format!("unknown flag -{c}; {usage}")),
            }
        }
    }
    match positional.as_slice() {
        [source, dir] => {
            a.source = (*source).clone();
            a.dir = PathBuf::from(dir);
        }
        _ => return Err(usage.to_string()),
    }
    a.options = opts.join(",");
    Ok(a)
}

/// Split a mount option string at commas outside double quotes (libmount
/// allows `opt="a,b"`).
fn split_options(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|o| !o.is_empty()).collect()
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// What the helper runs: the devices, the options for `scoutfs mount -o`
/// and where the engine's log goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub meta: PathBuf,
    pub data: PathBuf,
    pub engine_options: Vec<String>,
    pub log: Option<PathBuf>,
}

/// Sort mount(8)'s options: `data=` or `metadev_path=` name the other
/// device, `log=` the log file, mount(8)'s own (`defaults`, `noauto`,
/// `nofail`, `_netdev`, `user`, `x-*`, `comment=`, ...) are dropped, and
/// every other option goes to `scoutfs mount -o`, which refuses what it
/// doesn't know (so an option is never silently ignored).
pub fn plan(source: &OsStr, options: &str) -> Result<Plan, String> {
    let (mut data, mut metadev, mut log) = (None, None, None);
    let mut engine_options = Vec::new();
    for opt in split_options(options) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(unquote(v))),
            None => (opt, None),
        };
        let path = |v: Option<&str>| match v {
            Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
            _ => Err(format!("mount option {key} needs a path")),
        };
        match key {
            "data" => data = Some(path(value)?),
            "metadev_path" => metadev = Some(path(value)?),
            "log" => log = Some(path(value)?),
            k if USERSPACE_ONLY.contains(&k) && value.is_none() => {}
            k if k.starts_with("x-") || k == "comment" || k == "user" => {}
            _ => engine_options.push(opt.to_string()),
        }
    }
    let source = PathBuf::from(source);
    let (meta, data) = match (data, metadev) {
        (Some(data), None) => (source, data),
        (None, Some(meta)) => (meta, source),
        (Some(_), Some(_)) => {
            return Err(
                "give the other device once: -o data=DATA (source: the metadata device) \
                 or -o metadev_path=META (source: the data device), not both"
                    .into(),
            )
        }
        (None, None) => {
            return Err("which is the data device? mount META DIR -o data=DATA, \
                 or as the kernel's scoutfs, mount DATA DIR -o metadev_path=META"
                .into())
        }
    };
    Ok(Plan {
        meta,
        data,
        engine_options,
        log,
    })
}

/// Where the engine's log goes unless `-o log=PATH` says: one file per
/// mount point, `/var/log/scoutfs/mount_<mount point>.log` for root.
pub fn default_log(dir: &Path) -> PathBuf {
    let base = if crate::mount::is_root() {
        PathBuf::from("/var/log/scoutfs")
    } else {
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir)
            .join("scoutfs")
    };
    base.join(format!("{}.log", mount_name(dir)))
}

type Failure = (i32, String);

fn fail(msg: impl Into<String>) -> Failure {
    (EX_FAIL, msg.into())
}

fn mount_helper(name: &str, args: &[OsString]) -> Result<(), Failure> {
    // The engine's writes to its log must not kill it; ours to a closed
    // stderr neither.
    crate::ignore_sigpipe();
    let a = parse_args(args).map_err(|e| (EX_USAGE, e))?;
    let options = split_options(&a.options);
    if crate::remount::is_remount(&options) {
        // mount(8) runs the helper for `mount -o remount` too.
        let r = crate::remount::plan(&options, &USERSPACE_ONLY).map_err(fail)?;
        if a.verbose {
            let _ = writeln!(
                std::io::stderr(),
                "{name}: remounting {} with {r:?}",
                a.dir.display()
            );
        }
        if a.fake {
            return Ok(());
        }
        return crate::remount::remount(&a.dir, &r).map_err(fail);
    }
    let p = plan(&a.source, &a.options).map_err(fail)?;
    let exe =
        std::env::current_exe().map_err(|e| fail(format!("finding the scoutfs binary: {e}")))?;
    // The engine runs from / (so it keeps no directory busy): paths
    // relative to where mount(8) ran are made absolute first.
    let mut cmd = Command::new(&exe);
    cmd.current_dir("/")
        .arg("mount")
        .arg(absolute(&p.meta))
        .arg(absolute(&p.data))
        .arg("--fuse")
        .arg(absolute(&a.dir))
        .arg("--source")
        .arg(absolute(Path::new(&a.source)));
    if !p.engine_options.is_empty() {
        cmd.arg("-o").arg(p.engine_options.join(","));
    }
    let log = absolute(&p.log.clone().unwrap_or_else(|| default_log(&a.dir)));
    let shown = format!("{cmd:?}");
    if a.verbose {
        let _ = writeln!(
            std::io::stderr(),
            "{name}: running {shown}, logging to {}",
            log.display()
        );
    }
    if a.fake {
        return Ok(());
    }

    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(format!("{}: {e}", parent.display())))?;
    }
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&log)
        .map_err(|e| fail(format!("{}: {e}", log.display())))?;
    let _ = writeln!(log_file, "{name}: {shown}");
    let start = log_file
        .metadata()
        .map_err(|e| fail(format!("{}: {e}", log.display())))?
        .len();
    let clone = |f: &std::fs::File| {
        f.try_clone()
            .map_err(|e| fail(format!("{}: {e}", log.display())))
    };
    let (out, err) = (clone(&log_file)?, clone(&log_file)?);

    let (listener, socket_name) = notify_listener().map_err(fail)?;
    cmd.env(NOTIFY_SOCKET, format!("@{socket_name}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches nothing of the
    // parent's; it detaches the engine from mount(8)'s session and
    // terminal, so it outlives both.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("starting {}: {e}", exe.display())))?;
    let _ = writeln!(log_file, "{name}: engine pid {}", child.id());

    let mut buf = [0u8; 4096];
    loop {
        match listener.recv(&mut buf) {
            Ok(n) if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") => {
                if a.verbose {
                    let _ = writeln!(
                        std::io::stderr(),
                        "{name}: {} mounted at {} by engine {}",
                        a.source.to_string_lossy(),
                        a.dir.display(),
                        child.id()
                    );
                }
                return Ok(());
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // Don't leave an engine behind that mount(8) was told
                // failed: SIGTERM stops it cleanly.
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let _ = child.wait();
                return Err(fail(format!("waiting for the engine: {e}")));
            }
        }
        let status = child
            .try_wait()
            .map_err(|e| fail(format!("waiting for the engine: {e}")))?;
        if let Some(status) = status {
            // The engine's own words (not the helper's lines) explain it.
            let said = read_from(&log, start);
            let prefix = format!("{name}: ");
            for line in said.lines().filter(|l| !l.starts_with(&prefix)) {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            return Err(fail(format!(
                "mounting {} at {} failed: the engine exited ({status}); its log: {}",
                a.source.to_string_lossy(),
                a.dir.display(),
                log.display()
            )));
        }
    }
}

/// A datagram socket under a fresh abstract name for the engine's
/// `READY=1`; it wakes every 100 ms so the helper also sees the engine
/// exit.
fn notify_listener() -> Result<(std::os::unix::net::UnixDatagram, String), String> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let mut nonce = [0u8; 8];
    // SAFETY: getrandom writes at most nonce.len() bytes into nonce.
    let n = unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
    if n != nonce.len() as isize {
        return Err(format!("getrandom: {}", std::io::Error::last_os_error()));
    }
    let name = format!(
        "scoutfs-mount/{}/{:016x}",
        std::process::id(),
        u64::from_le_bytes(nonce)
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string())?;
    let sock = UnixDatagram::bind_addr(&addr).map_err(|e| format!("{NOTIFY_SOCKET}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    Ok((sock, name))
}

/// A path relative to the current directory made absolute; absolute
/// paths and device URLs (`nvme://...`) as they are.
fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() || p.as_os_str().as_bytes().windows(3).any(|w| w == b"://") {
        return p.to_path_buf();
    }
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// What a file holds from byte `start` on (the engine's words this time).
fn read_from(path: &Path, start: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(start)).is_ok() {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn mount_8_command_lines_parse() {
        let a = parse_args(&os(&["/m", "/d", "-s", "-n", "-v", "-o", "rw,data=/x"])).unwrap();
        assert_eq!(
            a,
            HelperArgs {
                source: "/m".into(),
                dir: "/d".into(),
                options: "rw,data=/x".into(),
                fake: false,
                verbose: true,
            }
        );
        let a = parse_args(&os(&[
            "-fv",
            "/m",
            "-orw",
            "/d",
            "-t",
            "fuse.scoutfs",
            "-o",
            "ro",
        ]))
        .unwrap();
        assert_eq!(
            (a.fake, a.verbose, a.options.as_str()),
            (true, true, "rw,ro")
        );
        assert!(parse_args(&os(&["/m"])).is_err());
        assert!(parse_args(&os(&["/m", "/d", "/e"])).is_err());
        assert!(parse_args(&os(&["/m", "/d", "-o"])).is_err());
        assert!(parse_args(&os(&["/m", "/d", "-x"])).is_err());
        assert!(parse_args(&os(&["/m", "/d", "-N", "/proc/1/ns/mnt"]))
            .unwrap_err()
            .contains("not supported"));
    }

    #[test]
    fn options_sort_into_devices_engine_options_and_dropped() {
        let p = plan(
            OsStr::new("/dev/meta"),
            "rw,defaults,data=\"/dev/a,b\",_netdev,nofail,user,x-systemd.requires=x,comment=hi,noatime,ino_alloc_per_lock=4,log=/l",
        )
        .unwrap();
        assert_eq!(
            p,
            Plan {
                meta: "/dev/meta".into(),
                data: "/dev/a,b".into(),
                engine_options: vec!["rw".into(), "noatime".into(), "ino_alloc_per_lock=4".into()],
                log: Some("/l".into()),
            }
        );
        let p = plan(OsStr::new("/dev/data"), "metadev_path=/dev/meta,ro").unwrap();
        assert_eq!(
            (p.meta, p.data, p.engine_options),
            (
                "/dev/meta".into(),
                "/dev/data".into(),
                vec!["ro".to_string()]
            )
        );
        assert!(plan(OsStr::new("/m"), "rw")
            .unwrap_err()
            .contains("data device"));
        assert!(plan(OsStr::new("/m"), "data=/d,metadev_path=/m").is_err());
        assert!(plan(OsStr::new("/m"), "data=")
            .unwrap_err()
            .contains("needs a path"));
        // An option with a value that only looks like a dropped one goes on.
        let p = plan(OsStr::new("/m"), "data=/d,defaults=1").unwrap();
        assert_eq!(p.engine_options, vec!["defaults=1".to_string()]);
    }
}
