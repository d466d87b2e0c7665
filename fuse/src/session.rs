//! The /dev/fuse transport: mount, handler threads, the mount's options
//! as they change, unmount.
//!
//! The mount is made here rather than by fuse-backend-rs's session, which
//! always mounts nosuid, nodev and noatime: mount(2) gets the standard
//! options' flags (`MountFlags`) as a kernel filesystem would, or
//! fusermount3 gets them when this process may not mount. A watcher
//! thread then follows the mount in /proc/self/mountinfo (the kernel asks
//! a FUSE server nothing at `mount -o remount`) and hands the engine the
//! atime policy and read-only state the kernel shows.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::transport::FuseSession;

use crate::mount_flags::MountFlags;
use crate::mount_watch::{MountSync, Watcher};
use crate::{ScoutFuse, ScoutServer};

/// The mount's file system type, as /proc/mounts shows it.
const FSTYPE: &str = "fuse.scoutfs";

/// A live FUSE mount served by handler threads.
pub struct FuseMount {
    session: FuseSession,
    threads: Vec<JoinHandle<()>>,
    mountpoint: PathBuf,
    watcher: Option<Watcher>,
}

impl std::fmt::Debug for FuseMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseMount")
            .field("mountpoint", &self.mountpoint)
            .field("threads", &self.threads.len())
            .finish()
    }
}

/// Mount `fs` at `mountpoint` with `flags` and serve it with
/// `fs.opts.threads` threads. `exited` hears from each thread when it
/// stops (the filesystem was unmounted from outside, or /dev/fuse
/// failed), so the caller can shut down.
pub fn mount(
    fs: ScoutFuse,
    mountpoint: &Path,
    fsname: &str,
    flags: MountFlags,
    exited: mpsc::Sender<String>,
) -> Result<FuseMount, String> {
    let threads_n = fs.opts.threads.max(1);
    let mut session = FuseSession::new(mountpoint, fsname, "scoutfs", flags.read_only)
        .map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    let file = kernel_mount(session.mountpoint(), fsname, &flags, session.bufsize())
        .map_err(|e| format!("mounting FUSE at {}: {e}", mountpoint.display()))?;
    // A descriptor of the connection for notifications (writeback.rs).
    let notify = file.try_clone().ok().map(std::os::fd::OwnedFd::from);
    session.set_fuse_file(file);
    fs.mounted_at(session.mountpoint(), notify);
    let mut fs = fs;
    let sync = match MountSync::new(fs.engine.clone(), session.mountpoint(), fsname) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = session.umount();
            return Err(e);
        }
    };
    fs.mount_sync = Some(sync.clone());
    let server = Arc::new(ScoutServer::new(fs));
    let mut threads = Vec::new();
    for i in 0..threads_n {
        let mut ch = match session.new_channel() {
            Ok(ch) => ch,
            Err(e) => {
                let _ = session.umount();
                return Err(format!("opening a FUSE channel: {e}"));
            }
        };
        let server = server.clone();
        let exited = exited.clone();
        let (mnt, source) = (session.mountpoint().to_path_buf(), fsname.to_string());
        let t = std::thread::Builder::new()
            .name(format!("fuse-{i}"))
            .spawn(move || {
                let why = loop {
                    // Threads take turns to read (server.rs: a FORGET is
                    // handled before the next request is read).
                    let intake = server.intake();
                    match ch.get_request() {
                        Ok(Some((reader, writer))) => {
                            if let Err(e) = server.handle_in_order(intake, reader, writer.into()) {
                                // A reply the kernel no longer wants (the
                                // caller was interrupted) is not fatal.
                                tracing::debug!("FUSE request: {e}");
                            }
                        }
                        Ok(None) => break "unmounted".to_string(),
                        // The kernel ends the connection (an error on the
                        // /dev/fuse poll) when the mount goes away, or when
                        // it is aborted through /sys/fs/fuse/connections,
                        // which leaves a dead mount behind.
                        Err(e) => match mounted_at(&mnt, &source) {
                            Ok(false) => break UNMOUNTED_OUTSIDE.to_string(),
                            Ok(true) => break format!("the FUSE connection was aborted ({e})"),
                            Err(m) => break format!("reading /dev/fuse: {e} (and {m})"),
                        },
                    }
                };
                let _ = exited.send(why);
            })
            .map_err(|e| format!("starting a FUSE thread: {e}"))?;
        threads.push(t);
    }
    let mut mount = FuseMount {
        session,
        threads,
        mountpoint: mountpoint.to_path_buf(),
        watcher: None,
    };
    match Watcher::start(sync) {
        Ok(w) => mount.watcher = Some(w),
        Err(e) => {
            let _ = mount.unmount();
            return Err(e);
        }
    }
    tracing::info!(
        "mounted at {} with {threads_n} FUSE threads",
        mountpoint.display()
    );
    Ok(mount)
}

/// Mount FUSE at `mountpoint` (canonical) with `flags`, as mount(2) with
/// the options libfuse gives: the kernel checks permissions
/// (`default_permissions`) and lets other users in (`allow_other`), as
/// for any filesystem. Without the privilege to mount, fusermount3 does
/// it. The /dev/fuse descriptor to serve, non-blocking.
fn kernel_mount(
    mountpoint: &Path,
    fsname: &str,
    flags: &MountFlags,
    max_read: usize,
) -> Result<File, String> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| format!("/dev/fuse: {e}"))?;
    let root = std::fs::metadata(mountpoint).map_err(|e| e.to_string())?;
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid},default_permissions,allow_other,max_read={max_read}",
        dev.as_raw_fd(),
        root.mode() & libc::S_IFMT,
    );
    let c = |s: &[u8]| std::ffi::CString::new(s).map_err(|_| "a NUL in a name".to_string());
    let (source, target, fstype, data) = (
        c(fsname.as_bytes())?,
        c(mountpoint.as_os_str().as_bytes())?,
        c(FSTYPE.as_bytes())?,
        c(data.as_bytes())?,
    );
    // SAFETY: NUL-terminated strings that outlive the call; mount(2) only
    // reads them.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags.ms_flags(),
            data.as_ptr().cast(),
        )
    };
    let file = if r == 0 {
        dev
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(e.to_string());
        }
        drop(dev);
        fusermount(mountpoint, fsname, flags, max_read)?
    };
    // SAFETY: fcntl on a descriptor we own.
    let r = unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK)
    };
    if r < 0 {
        return Err(format!("/dev/fuse: {}", std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// A mount option value with commas and backslashes escaped, as
/// fusermount3 reads them.
fn escape_option(v: &str) -> String {
    v.replace('\\', "\\\\").replace(',', "\\,")
}

/// Mount through fusermount3 (setuid root), which opens /dev/fuse, mounts
/// and passes the descriptor back over a socket (`_FUSE_COMMFD`).
fn fusermount(
    mountpoint: &Path,
    fsname: &str,
    flags: &MountFlags,
    max_read: usize,
) -> Result<File, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    // SAFETY: fcntl on a descriptor we own: fusermount3 inherits it.
    if unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let mut opts = vec![
        format!("fsname={}", escape_option(fsname)),
        "subtype=scoutfs".to_string(),
        "default_permissions".to_string(),
        "allow_other".to_string(),
        format!("max_read={max_read}"),
    ];
    opts.extend(flags.fusermount_options().iter().map(|s| s.to_string()));
    let status = std::process::Command::new("fusermount3")
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .arg("-o")
        .arg(opts.join(","))
        .arg("--")
        .arg(mountpoint)
        .status()
        .map_err(|e| format!("running fusermount3: {e}"))?;
    drop(theirs);
    if !status.success() {
        // Its own message (an option it doesn't know, say) went to stderr.
        return Err(format!(
            "fusermount3 -o {} failed ({status})",
            opts.join(",")
        ));
    }
    receive_fd(&ours)
}

/// The descriptor fusermount3 sends (one byte with SCM_RIGHTS).
fn receive_fd(sock: &UnixStream) -> Result<File, String> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // Room for one descriptor's control message, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg points at iov and control, which outlive the call and
    // are as long as it says.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(format!(
            "receiving /dev/fuse from fusermount3: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR stays within
    // msg_controllen, and a header it returns has room for its data.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err("fusermount3 sent no /dev/fuse descriptor".into());
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Ok(File::from_raw_fd(fd))
    }
}

impl FuseMount {
    /// Unmount and wait for the handler threads. Requests in flight finish
    /// first; the kernel refuses an unmount while the mount is in use
    /// (EBUSY), in which case it is detached lazily.
    pub fn unmount(mut self) -> Result<(), String> {
        if let Some(w) = self.watcher.take() {
            w.stop();
        }
        let source = self.session.fsname().to_string();
        let r = match self.session.umount() {
            // An aborted connection leaves a dead mount that the session's
            // unmount skips: detach it.
            Ok(()) if mounted_at(self.session.mountpoint(), &source) == Ok(true) => {
                tracing::warn!(
                    "{}: the FUSE connection is dead; detaching",
                    self.mountpoint.display()
                );
                lazy_unmount(&self.mountpoint)
            }
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!("unmount of {}: {e}; detaching", self.mountpoint.display());
                lazy_unmount(&self.mountpoint)
            }
        };
        let _ = self.session.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        r.map_err(|e| format!("unmounting {}: {e}", self.mountpoint.display()))
    }
}

/// Why the handler threads stop when `umount DIR` took the mount away.
pub const UNMOUNTED_OUTSIDE: &str = "umount from outside";

/// Whether this process's mount table has a mount of `source` at
/// `mountpoint` (a canonical path).
fn mounted_at(mountpoint: &Path, source: &str) -> Result<bool, String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    Ok(mountinfo_has(&table, mountpoint, source))
}

/// Whether a mountinfo table (proc(5)) has a line with mount point
/// `mountpoint` and mount source `source`.
fn mountinfo_has(table: &str, mountpoint: &Path, source: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let want = mountpoint.as_os_str().as_bytes();
    table.lines().any(|line| {
        let mut fields = line.split(' ');
        let Some(point) = fields.nth(4) else {
            return false;
        };
        // After the optional fields and "-": fs type, then source.
        let mut tail = fields.skip_while(|f| *f != "-").skip(2);
        tail.next() == Some(source) && unescape_octal(point) == want
    })
}

/// A mountinfo path: the kernel writes space, tab, newline and backslash
/// as `\` and three octal digits.
pub(crate) fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b.get(i + 1..i + 4);
        match digits {
            Some(d) if b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

fn lazy_unmount(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path; umount2 only reads it.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
43 27 0:39 / /tmp/fx/mnt rw,nosuid,nodev,noatime - fuse.scoutfs scoutfs:c7ae rw,user_id=0
44 27 0:40 / /tmp/a\\040b rw shared:7 master:2 - fuse.scoutfs scoutfs:0001 rw
";

    #[test]
    fn mountinfo_finds_the_mount_by_point_and_source() {
        assert!(mountinfo_has(
            TABLE,
            Path::new("/tmp/fx/mnt"),
            "scoutfs:c7ae"
        ));
        assert!(!mountinfo_has(
            TABLE,
            Path::new("/tmp/fx/mnt"),
            "scoutfs:0001"
        ));
        assert!(!mountinfo_has(TABLE, Path::new("/tmp/fx"), "scoutfs:c7ae"));
        assert!(mountinfo_has(TABLE, Path::new("/tmp/a b"), "scoutfs:0001"));
        assert!(!mountinfo_has("garbage\n\n- - -", Path::new("/"), "-"));
    }

    /// The mount without CAP_SYS_ADMIN, through fusermount3, run here as
    /// root: the options reach the mount (with nosuid, which fusermount3
    /// always adds unless told `suid`, an option only root may give) and
    /// the descriptor comes back. Nothing serves it; it is detached
    /// unused.
    #[test]
    fn fusermount_mounts_with_the_flags_and_hands_back_the_descriptor() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let have = std::process::Command::new("fusermount3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !root || !have || !Path::new("/dev/fuse").exists() {
            eprintln!("skipping: needs root, /dev/fuse and fusermount3");
            return;
        }
        let dir = std::env::temp_dir().join(format!("scoutfs-fusermount-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        // What fusermount3 3.14 (Debian 12) knows; later ones also take
        // nodiratime, strictatime and lazytime.
        let flags = MountFlags {
            nodev: true,
            noexec: true,
            noatime: true,
            relatime: true,
            ..MountFlags::default()
        };
        let file = fusermount(&dir, "/some,source", &flags, 1 << 20).unwrap();
        assert!(file.as_raw_fd() >= 0);
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = table
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
            .map(str::to_string);
        drop(file);
        let _ = lazy_unmount(&dir);
        let _ = std::fs::remove_dir(&dir);
        let line = line.expect("mounted");
        let (left, right) = line.split_once(" - ").unwrap();
        assert_eq!(
            left.split(' ').nth(5),
            Some("rw,nosuid,nodev,noexec,noatime")
        );
        let right: Vec<&str> = right.split(' ').collect();
        assert_eq!(right[..2], ["fuse.scoutfs", "/some,source"]);
        assert!(right[2].starts_with("rw,user_id=0,"), "{}", right[2]);
    }

    #[test]
    fn option_values_escape_commas() {
        assert_eq!(escape_option("/a,b\\c"), "/a\\,b\\\\c");
    }

    #[test]
    fn octal_escapes_decode() {
        assert_eq!(unescape_octal("a\\134b\\011"), b"a\\b\t");
        assert_eq!(unescape_octal("end\\04"), b"end\\04");
    }
}
