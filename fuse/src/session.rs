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
                        Err(e) => break format!("reading /dev/fuse: {e}"),
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
        let r = self.session.umount().or_else(|e| {
            tracing::warn!("unmount of {}: {e}; detaching", self.mountpoint.display());
            lazy_unmount(&self.mountpoint)
        });
        let _ = self.session.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        r.map_err(|e| format!("unmounting {}: {e}", self.mountpoint.display()))
    }
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
