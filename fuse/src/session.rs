//! The /dev/fuse transport: mount, handler threads, unmount.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::transport::FuseSession;

use crate::{ScoutFuse, ScoutServer};

/// A live FUSE mount served by handler threads.
pub struct FuseMount {
    session: FuseSession,
    threads: Vec<JoinHandle<()>>,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for FuseMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseMount")
            .field("mountpoint", &self.mountpoint)
            .field("threads", &self.threads.len())
            .finish()
    }
}

/// Mount `fs` at `mountpoint` and serve it with `fs.opts.threads` threads.
/// `exited` hears from each thread when it stops (the filesystem was
/// unmounted from outside, or /dev/fuse failed), so the caller can shut
/// down.
pub fn mount(
    fs: ScoutFuse,
    mountpoint: &Path,
    fsname: &str,
    exited: mpsc::Sender<String>,
) -> Result<FuseMount, String> {
    let threads_n = fs.opts.threads.max(1);
    let read_only = fs.opts.read_only;
    let mut session = FuseSession::new(mountpoint, fsname, "scoutfs", read_only)
        .map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    // Other users may use the mount; the kernel checks permissions
    // (default_permissions) as for any filesystem.
    session.set_allow_other(true);
    session
        .mount()
        .map_err(|e| format!("mounting FUSE at {}: {e}", mountpoint.display()))?;
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
                    match ch.get_request() {
                        Ok(Some((reader, writer))) => {
                            if let Err(e) = server.handle_message(reader, writer.into(), None, None)
                            {
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
    tracing::info!(
        "mounted at {} with {threads_n} FUSE threads",
        mountpoint.display()
    );
    Ok(FuseMount {
        session,
        threads,
        mountpoint: mountpoint.to_path_buf(),
    })
}

impl FuseMount {
    /// Unmount and wait for the handler threads. Requests in flight finish
    /// first; the kernel refuses an unmount while the mount is in use
    /// (EBUSY), in which case it is detached lazily.
    pub fn unmount(mut self) -> Result<(), String> {
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
fn unescape_octal(s: &str) -> Vec<u8> {
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

    #[test]
    fn octal_escapes_decode() {
        assert_eq!(unescape_octal("a\\134b\\011"), b"a\\b\t");
        assert_eq!(unescape_octal("end\\04"), b"end\\04");
    }
}
