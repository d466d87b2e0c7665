//! `scoutfs mount META DATA --fuse DIR`: the engine process. Opens and
//! claims both devices, recovers the volume, mounts it through FUSE and
//! serves until SIGINT or SIGTERM (or until the mount is unmounted from
//! outside), then unmounts, commits and exits. `scoutfs counters` reads
//! its counters through the admin socket.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::fs::FsOptions;
use scoutfs_engine::reactor::{CorePin, IdlePolicy, ReactorConfig};
use scoutfs_engine::serve::admin::proto::AdminRequest;
use scoutfs_engine::serve::admin::{AdminError, AdminServer, CounterSource};
use scoutfs_engine::serve::{Caller, Engine, EngineError, EngineOptions, Op, Request, SessionId};
use scoutfs_engine::txn::devices::{check_data_device, check_meta_size};
use scoutfs_engine::txn::{read_meta_super, TxnError, TxnOptions};
use scoutfs_fuse::{Counters, FuseOptions, MountFlags, ScoutFuse, STANDARD_OPTIONS};

use crate::device;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The metadata device (file or block device).
    pub meta: PathBuf,
    /// The data device.
    pub data: PathBuf,
    /// Mount through FUSE at this directory.
    #[arg(long, value_name = "DIR")]
    pub fuse: PathBuf,
    /// Mount options, comma separated: scoutfs's ino_alloc_per_lock=N,
    /// data_prealloc_blocks=N (2048), data_prealloc_contig_only=0|1 (1),
    /// discard (freed data blocks are discarded once their commit is
    /// durable) or nodiscard (the default), acl (the default) or noacl;
    /// and a kernel filesystem's ro|rw, suid|nosuid, dev|nodev,
    /// exec|noexec, relatime (the default), noatime, strictatime,
    /// nodiratime, lazytime (and atime, norelatime, nostrictatime,
    /// diratime, nolazytime), rw, suid, dev, exec by default.
    #[arg(short = 'o', long = "options", value_name = "OPTS")]
    pub options: Option<String>,
    /// Pin the reactor to this core ("auto": the last core when there are
    /// several; "none": don't pin).
    #[arg(long, default_value = "auto")]
    pub core: String,
    /// Reactor idle policy: "adaptive" (spin briefly, then sleep) or
    /// "busy" (spin forever: lowest latency, one core always busy).
    #[arg(long, default_value = "adaptive")]
    pub idle: String,
    /// With --idle adaptive: microseconds the reactor spins for more work
    /// before it sleeps (longer: lower latency, more CPU). Default: 0 on
    /// machines with 2 CPUs or fewer, where a spinning reactor takes the
    /// CPU the FUSE threads and the callers need (measured: FUSE stat
    /// rates 4x lower with 200 us on 2 vCPUs), else 200.
    #[arg(long)]
    pub spin_us: Option<u64>,
    /// Metadata block cache budget (K, M, G suffixes).
    #[arg(long, default_value = "256M")]
    pub cache: String,
    /// Seconds the kernel may cache name lookups. Other frontends'
    /// changes reach it at once (change notifications); this bounds only
    /// what they don't cover.
    #[arg(long, default_value_t = 60.0)]
    pub entry_timeout: f64,
    /// Seconds the kernel may cache attributes (as --entry-timeout).
    #[arg(long, default_value_t = 60.0)]
    pub attr_timeout: f64,
    /// Seconds the kernel may remember that a name doesn't exist (0: not
    /// at all; a name another frontend creates drops it at once).
    #[arg(long, default_value_t = 0.0)]
    pub negative_timeout: f64,
    /// FUSE writeback caching (the default): the kernel gathers writes in
    /// its page cache and sends them in large batches.
    #[arg(long, overrides_with = "no_writeback_cache")]
    pub writeback_cache: bool,
    /// Every write(2) is a round trip to the engine (other frontends see
    /// it at once; a full device is ENOSPC at that write).
    #[arg(long)]
    pub no_writeback_cache: bool,
    /// With the writeback cache: below this much free data space, files
    /// opened write-only are written through, so a full device is ENOSPC
    /// at write(2) (K, M, G suffixes; default twice the kernel's dirty
    /// limit for the mount).
    #[arg(long, value_name = "SIZE")]
    pub writeback_headroom: Option<String>,
    /// Don't answer directory reads with attributes (readdirplus).
    #[arg(long)]
    pub no_readdirplus: bool,
    /// FUSE handler threads: how many requests can be in the engine at
    /// once (each waits for its reply).
    #[arg(long, default_value_t = 8)]
    pub fuse_threads: usize,
    /// The admin socket `scoutfs counters` talks to (default: derived
    /// from the mount point, under /run/scoutfs).
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
    /// The mount's source as /proc/mounts, `mount` and `df` show it
    /// (default: the metadata device's absolute path, as an fstab line
    /// names it, so `mount -a` sees the volume mounted).
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
}

/// The mount options we understand.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub ino_alloc_per_lock: Option<u64>,
    /// The standard options (`ro`, `nodev`, `noatime`, ...).
    pub flags: MountFlags,
    pub noacl: bool,
    pub data_prealloc_blocks: Option<u64>,
    pub data_prealloc_contig_only: Option<bool>,
    pub discard: bool,
}

pub fn parse_options(s: &str) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    for opt in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let num = |v: Option<&str>| -> Result<u64, String> {
            v.ok_or(format!("mount option {k} needs a value"))?
                .parse::<u64>()
                .map_err(|_| format!("mount option {k}={}: not a number", v.unwrap_or("")))
        };
        match k {
            "ino_alloc_per_lock" => {
                let n = num(v)?;
                if n == 0 {
                    return Err("ino_alloc_per_lock must be at least 1".into());
                }
                o.ino_alloc_per_lock = Some(n);
            }
            "data_prealloc_blocks" => o.data_prealloc_blocks = Some(num(v)?),
            "data_prealloc_contig_only" => match num(v)? {
                0 => o.data_prealloc_contig_only = Some(false),
                1 => o.data_prealloc_contig_only = Some(true),
                _ => return Err("data_prealloc_contig_only is 0 or 1".into()),
            },
            _ if v.is_none() && o.flags.apply(k) => {}
            "discard" => o.discard = true,
            "nodiscard" => o.discard = false,
            "acl" => o.noacl = false,
            "noacl" => o.noacl = true,
            _ => {
                return Err(format!(
                    "unknown mount option {opt:?} (known: ino_alloc_per_lock=N, data_prealloc_blocks=N, data_prealloc_contig_only=0|1, discard, nodiscard, acl, noacl, {STANDARD_OPTIONS})"
                ))
            }
        }
    }
    Ok(o)
}

/// A mount point as a file name: `mount` and its absolute path with
/// everything but letters and digits as `_` (the admin socket's and the
/// mount helper's log file's names).
pub fn mount_name(mountpoint: &Path) -> String {
    let canon = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    let name: String = canon
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("mount{name}")
}

/// Where a mount's admin socket lives when not given.
pub fn default_socket(mountpoint: &Path) -> PathBuf {
    let dir = if is_root() {
        PathBuf::from("/run/scoutfs")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join("scoutfs")
    };
    dir.join(format!("{}.sock", mount_name(mountpoint)))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn default_spin_us() -> u64 {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() <= 2 => 0,
        _ => 200,
    }
}

fn secs(s: f64, what: &str) -> Result<Duration, String> {
    if !(0.0..=86400.0 * 365.0).contains(&s) {
        return Err(format!("{what} {s} is out of range"));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Block SIGINT and SIGTERM in this thread (and the threads it starts),
/// and wait for them in one thread that reports to `tx`.
fn catch_signals(tx: mpsc::Sender<String>) -> Result<(), String> {
    // SAFETY: sigset operations on a local set, then pthread_sigmask on
    // the calling thread; sigwait in the spawned thread only reads the set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err("blocking signals failed".into());
        }
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut sig = 0;
                if libc::sigwait(&set, &mut sig) == 0 {
                    let name = match sig {
                        libc::SIGINT => "SIGINT",
                        libc::SIGTERM => "SIGTERM",
                        _ => "SIGHUP",
                    };
                    if tx.send(format!("received {name}")).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Write a line to stderr; a closed stderr must not stop (or panic) an
/// engine that is serving a volume.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

pub fn run(a: &Args) -> i32 {
    // The engine writes to sockets (the admin socket's clients) and to a
    // stderr that may be a pipe: a reader going away is an error on that
    // write, never a signal that kills the mount.
    crate::ignore_sigpipe();
    match serve(a) {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("scoutfs mount: {e}"));
            1
        }
    }
}

/// What would make the FUSE mount at `dir` fail or misbehave, checked
/// before the volume is recovered: not a directory, a dead FUSE mount, or
/// already a mount point (a second mount there would hide the first, and
/// its admin socket is the first's). A non-empty directory is fine, as
/// for the kernel's mount and fusermount3.
pub fn check_mountpoint(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{}: not a directory", dir.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!(
                "{}: a dead FUSE mount is left there (its engine was killed); \
                 detach it with `fusermount3 -u -z {}` and mount again",
                dir.display(),
                dir.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    let canon = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    if let Some((fstype, source)) = mounted_at(&mountinfo, &canon) {
        return Err(format!(
            "{} is already a mount point ({fstype} {source}); unmount it or mount elsewhere",
            dir.display()
        ));
    }
    Ok(())
}

/// The file system type and source of the last mount at `path` in a
/// mountinfo listing.
fn mounted_at(mountinfo: &str, path: &Path) -> Option<(String, String)> {
    let want = path.to_string_lossy();
    mountinfo.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = unescape_mountinfo(left.split(' ').nth(4)?);
        if point != want {
            return None;
        }
        let mut r = right.split(' ');
        let fstype = r.next()?.to_string();
        let source = unescape_mountinfo(r.next().unwrap_or(""));
        Some((fstype, source))
    })
}

/// mountinfo writes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether this process has capability `cap` in its effective set.
fn has_cap(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|bits| bits & (1 << cap) != 0)
}

const CAP_SYS_ADMIN: u32 = 21;

/// What mounting FUSE needs from this process, checked before the volume
/// is recovered: read-write /dev/fuse; without CAP_SYS_ADMIN (not root),
/// fusermount3 to mount through and `user_allow_other` in /etc/fuse.conf
/// (the mount lets other users in, as a filesystem does).
pub fn check_fuse_access() -> Result<(), String> {
    const FUSE_DEV: &str = "/dev/fuse";
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(FUSE_DEV)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{FUSE_DEV} is missing: load the fuse module (modprobe fuse)"
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            return Err(format!(
                "{FUSE_DEV}: {e}: mounting needs root (uid {uid} may not open {FUSE_DEV})"
            ));
        }
        Err(e) => return Err(format!("{FUSE_DEV}: {e}")),
    }
    if has_cap(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()));
    if !on_path {
        return Err(
            "mounting without root goes through fusermount3, which is not installed \
             (Debian package fuse3); install it or run as root"
                .into(),
        );
    }
    let allow_other = std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|c| {
        c.lines()
            .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other")
    });
    if !allow_other {
        return Err(
            "mounting without root needs `user_allow_other` in /etc/fuse.conf \
             (the mount lets other users in, as a filesystem does); add it or run as root"
                .into(),
        );
    }
    Ok(())
}

/// Check that `meta` and `data` are one volume's metadata and data
/// devices before anything else happens (Engine::start checks again once
/// it has claimed them).
fn check_devices(
    meta_path: &Path,
    meta: &dyn BlockDev,
    data_path: &Path,
    data: &dyn BlockDev,
) -> Result<(), String> {
    let devs = [(meta_path, meta), (data_path, data)];
    let explain = |e: TxnError| device::explain(&e, &devs);
    let (_, sb) = read_meta_super(meta).map_err(explain)?;
    check_meta_size(meta, &sb).map_err(explain)?;
    check_data_device(data, &sb).map_err(explain)?;
    Ok(())
}

fn serve(a: &Args) -> Result<(), String> {
    let mo = parse_options(a.options.as_deref().unwrap_or(""))?;
    let pin = match a.core.as_str() {
        "auto" => CorePin::Auto,
        "none" => CorePin::None,
        n => CorePin::Core(n.parse().map_err(|_| format!("bad --core {n:?}"))?),
    };
    let idle: IdlePolicy = a.idle.parse()?;
    let cache_bytes = device::parse_size(&a.cache)? as usize;
    let fuse_opts = FuseOptions {
        entry_timeout: secs(a.entry_timeout, "--entry-timeout")?,
        attr_timeout: secs(a.attr_timeout, "--attr-timeout")?,
        negative_timeout: secs(a.negative_timeout, "--negative-timeout")?,
        writeback_cache: !a.no_writeback_cache,
        writeback_headroom: match &a.writeback_headroom {
            Some(s) => Some(device::parse_size(s)?),
            None => None,
        },
        readdirplus: !a.no_readdirplus,
        threads: a.fuse_threads.clamp(1, 64),
        read_only: mo.flags.read_only,
        posix_acl: !mo.noacl,
        ..FuseOptions::default()
    };
    check_mountpoint(&a.fuse)?;
    let socket = a
        .admin_socket
        .clone()
        .unwrap_or_else(|| default_socket(&a.fuse));
    if UnixStream::connect(&socket).is_ok() {
        return Err(format!(
            "{}: another scoutfs mount answers on this admin socket",
            socket.display()
        ));
    }

    // Open errors name the device.
    let meta: Arc<dyn BlockDev> = device::open(&a.meta)?;
    let data: Arc<dyn BlockDev> = device::open(&a.data)?;
    check_devices(&a.meta, &*meta, &a.data, &*data)?;
    check_fuse_access()?;

    let (tx, rx) = mpsc::channel::<String>();
    catch_signals(tx.clone())?;

    let mut fs = FsOptions {
        acl: !mo.noacl,
        atime: mo.flags.atime_policy(),
        ..FsOptions::default()
    };
    if let Some(n) = mo.data_prealloc_blocks {
        fs.data_prealloc.blocks = n;
    }
    if let Some(c) = mo.data_prealloc_contig_only {
        fs.data_prealloc.contig_only = c;
    }
    if let Some(n) = mo.ino_alloc_per_lock {
        fs.ino_alloc_per_lock = n;
    }
    let opts = EngineOptions {
        reactor: ReactorConfig {
            pin,
            idle,
            spin_before_sleep: Duration::from_micros(a.spin_us.unwrap_or_else(default_spin_us)),
            ..ReactorConfig::default()
        },
        txn: TxnOptions {
            cache_bytes,
            discard: mo.discard,
            ..TxnOptions::default()
        },
        fs,
        read_only: mo.flags.read_only,
    };
    let devs = (meta.clone(), data.clone());
    let engine = Engine::start(meta, data, opts).map_err(|e| match e {
        EngineError::Txn(t) => device::explain(&t, &[(&a.meta, &*devs.0), (&a.data, &*devs.1)]),
        e => e.to_string(),
    })?;
    drop(devs);
    let engine = Arc::new(engine);
    let statfs = engine
        .call_op(Request::new(SessionId::ENGINE, Caller::root(), Op::Statfs))
        .and_then(|r| r.into_statfs())
        .map_err(|e| format!("statfs of the recovered volume: {e}"))?;
    tracing::info!(
        "volume {:#018x} recovered at seq {}",
        statfs.fsid,
        statfs.committed_seq
    );

    let counters = Arc::new(Counters::default());
    let fuse_counters: CounterSource = {
        let c = counters.clone();
        Arc::new(move || {
            c.snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        })
    };
    // `serve` refused a socket another mount answers on; what is left
    // there is stale.
    let admin =
        AdminServer::start(&socket, &engine, vec![fuse_counters]).map_err(|e| e.to_string())?;

    let handler = ScoutFuse::new(engine.clone(), fuse_opts, counters);
    let fsname = a.source.clone().unwrap_or_else(|| source_name(&a.meta));
    let mount = match scoutfs_fuse::mount(handler, &a.fuse, &fsname, mo.flags, tx) {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            shutdown_engine(engine)?;
            return Err(e);
        }
    };
    say(&format!(
        "scoutfs: serving volume {:#018x} at {} (admin socket {}); Ctrl-C or SIGTERM unmounts",
        statfs.fsid,
        a.fuse.display(),
        socket.display()
    ));

    notify(&format!(
        "READY=1\nSTATUS=serving {} at {}\nMAINPID={}",
        fsname,
        a.fuse.display(),
        std::process::id()
    ));

    let why = rx.recv().unwrap_or_else(|_| "all senders gone".into());
    tracing::info!("stopping: {why}");
    notify(&format!("STOPPING=1\nSTATUS=stopping: {why}"));
    let unmounted = mount.unmount();
    drop(admin);
    let seq = shutdown_engine(engine)?;
    say(&format!(
        "scoutfs: unmounted {} ({why}); committed seq {seq}",
        a.fuse.display()
    ));
    unmounted
}

/// The mount source a device path gives: a file or block device as its
/// absolute path without symlinks (as mount(8) writes an fstab source),
/// anything else (`nvme://...`) as given.
pub fn source_name(dev: &Path) -> String {
    dev.canonicalize()
        .unwrap_or_else(|_| dev.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// The environment variable naming the socket a supervisor waits on for
/// the mount's state (systemd's `Type=notify`, or mount.scoutfs).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tell a supervisor that waits for it how the mount is doing, in
/// sd_notify(3)'s protocol: one datagram of `KEY=value` lines to the
/// socket `$NOTIFY_SOCKET` names (a path, or an abstract name after
/// `@`). Without the variable, or if the send fails, nothing happens: the
/// mount serves either way.
fn notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(name) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let addr = match name.as_bytes().strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
        None => SocketAddr::from_pathname(Path::new(&name)),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        // A supervisor that stopped listening (mount.scoutfs exits once
        // the mount is live) is no reason to stop serving.
        tracing::debug!("{NOTIFY_SOCKET}={}: {e}", name.to_string_lossy());
    }
}

fn shutdown_engine(engine: Arc<Engine>) -> Result<u64, String> {
    // Handler threads are joined, so the engine has one owner left; the
    // admin thread may still hold a clone for a moment.
    let mut engine = engine;
    for _ in 0..100 {
        match Arc::try_unwrap(engine) {
            Ok(e) => return e.shutdown().map_err(|e| format!("unmount: {e}")),
            Err(e) => {
                engine = e;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Err("the engine is still in use; not committed cleanly".into())
}

#[derive(Debug, clap::Args)]
pub struct CountersArgs {
    /// The mount point (its admin socket is found from it) or the socket.
    pub target: PathBuf,
}

pub fn counters(a: &CountersArgs) -> i32 {
    let is_socket = std::fs::metadata(&a.target).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_socket()
    });
    let path = if is_socket {
        a.target.clone()
    } else {
        default_socket(&a.target)
    };
    match scoutfs_engine::serve::admin::ask(&path, AdminRequest::Counters) {
        Ok(lines) => {
            // Dies of SIGPIPE on a closed stdout, quietly, as coreutils.
            for l in lines {
                println!("{l}");
            }
            0
        }
        Err(e @ AdminError::Connect { .. }) => {
            eprintln!(
                "scoutfs counters: {e} (is a scoutfs mount serving {}?)",
                a.target.display()
            );
            1
        }
        Err(e) => {
            eprintln!("scoutfs counters: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_parse_and_reject_clearly() {
        assert_eq!(parse_options("").unwrap(), MountOptions::default());
        let o = parse_options("ino_alloc_per_lock=64,ro,noacl").unwrap();
        assert_eq!(
            (o.ino_alloc_per_lock, o.flags.read_only, o.noacl),
            (Some(64), true, true)
        );
        assert!(parse_options("bogus")
            .unwrap_err()
            .contains("unknown mount option"));
        assert!(parse_options("ino_alloc_per_lock=x")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_options("ino_alloc_per_lock")
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_options("ino_alloc_per_lock=0").is_err());
        let o = parse_options("data_prealloc_blocks=0,data_prealloc_contig_only=0").unwrap();
        assert_eq!(
            (o.data_prealloc_blocks, o.data_prealloc_contig_only),
            (Some(0), Some(false))
        );
        assert!(parse_options("data_prealloc_contig_only=2").is_err());
        assert!(parse_options("discard").unwrap().discard);
        assert!(!parse_options("discard,nodiscard").unwrap().discard);
    }

    #[test]
    fn standard_mount_options_are_taken_as_the_kernel_does() {
        let o = parse_options("nodev,nosuid,noexec,ro,noatime,nodiratime,lazytime").unwrap();
        assert_eq!(
            o.flags.ms_flags(),
            libc::MS_NODEV
                | libc::MS_NOSUID
                | libc::MS_NOEXEC
                | libc::MS_RDONLY
                | libc::MS_NOATIME
                | libc::MS_NODIRATIME
                | libc::MS_LAZYTIME
        );
        // Defaults: rw, dev, suid, exec, relatime.
        assert_eq!(parse_options("").unwrap().flags.ms_flags(), 0);
        let o = parse_options("nodev,dev,strictatime,ro,rw").unwrap();
        assert_eq!(o.flags.ms_flags(), libc::MS_STRICTATIME);
        // Not with a value, and not the ones we don't implement.
        assert!(parse_options("nodev=1").is_err());
        let e = parse_options("sync").unwrap_err();
        assert!(
            e.contains("unknown mount option \"sync\"") && e.contains("nolazytime"),
            "{e}"
        );
    }
}
