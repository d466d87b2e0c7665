//! `mount -o remount,...` through mount(8)'s helper: mount(8) runs
//! mount.scoutfs (or mount.fuse.scoutfs) for a remount too, with the
//! mount's options as mountinfo and fstab have them plus the new ones.
//! The helper makes the mount(2) call mount(8) would make for a kernel
//! filesystem (`MS_REMOUNT` with the standard options' flags); the kernel
//! changes the mount and its superblock without asking the engine, and
//! the engine follows what /proc/self/mountinfo then shows (its atime
//! policy, read-only or read-write).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use scoutfs_fuse::{MountFlags, STANDARD_OPTIONS};

use crate::mount::parse_options;

/// Options that mountinfo shows for a FUSE mount and mount(8) passes back
/// at a remount: the kernel's FUSE options, fixed at mount.
const FUSE_KERNEL_OPTIONS: [&str; 9] = [
    "fd",
    "rootmode",
    "user_id",
    "group_id",
    "default_permissions",
    "allow_other",
    "max_read",
    "blksize",
    "subtype",
];

/// What a remount asks for: the flags, and whether it is a bind remount
/// (this mount point only).
#[derive(Debug, PartialEq, Eq)]
pub struct Remount {
    pub flags: MountFlags,
    pub bind: bool,
}

/// Whether a helper's options ask for a remount.
pub fn is_remount(options: &[&str]) -> bool {
    options.contains(&"remount")
}

/// Sort a remount's options: the standard ones become flags; the FUSE
/// options mountinfo shows, the device and log options and mount(8)'s
/// own are dropped; scoutfs's own options (`noacl`, `discard`, ...) are
/// accepted but keep their mount-time values until the next mount (fstab
/// passes them at every remount); anything else is refused.
pub fn plan(options: &[&str], userspace_only: &[&str]) -> Result<Remount, String> {
    let mut r = Remount {
        flags: MountFlags::default(),
        bind: false,
    };
    for &opt in options {
        let key = opt.split_once('=').map_or(opt, |(k, _)| k);
        match key {
            "remount" => {}
            "bind" => r.bind = true,
            k if k == opt && r.flags.apply(k) => {}
            k if FUSE_KERNEL_OPTIONS.contains(&k) => {}
            "data" | "metadev_path" | "log" | "comment" | "user" => {}
            k if k.starts_with("x-") || userspace_only.contains(&k) => {}
            _ => {
                parse_options(opt).map_err(|e| {
                    format!("{e}; a remount changes only the standard options ({STANDARD_OPTIONS})")
                })?;
            }
        }
    }
    Ok(r)
}

/// mount(2) with `MS_REMOUNT` at `dir`.
pub fn remount(dir: &Path, r: &Remount) -> Result<(), String> {
    let target = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a NUL in the path", dir.display()))?;
    let bind = if r.bind { libc::MS_BIND } else { 0 };
    // SAFETY: a NUL-terminated path that outlives the call; a remount
    // reads no source, type or data.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | bind | r.flags.ms_flags(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::EBUSY) => "mount point is busy (a file is open for writing?)".to_string(),
            _ => e.to_string(),
        };
        return Err(format!("remounting {}: {why}", dir.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Vec<&str> {
        s.split(',').collect()
    }

    #[test]
    fn a_remount_takes_what_mount_8_passes_back() {
        // What mount(8) gives the helper for `mount -o remount,ro DIR`.
        let o = opts("ro,nosuid,noatime,nodiratime,lazytime,remount,user_id=0,group_id=0,default_permissions,allow_other,max_read=1052672");
        assert!(is_remount(&o));
        let r = plan(&o, &["defaults"]).unwrap();
        assert_eq!(
            r.flags.ms_flags(),
            libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NOATIME
                | libc::MS_NODIRATIME
                | libc::MS_LAZYTIME
        );
        assert!(!r.bind);
        // fstab's: the devices, mount(8)'s own, scoutfs's (kept as mounted).
        let r = plan(
            &opts("remount,bind,rw,data=/d,defaults,x-a=b,noacl,discard"),
            &["defaults"],
        )
        .unwrap();
        assert_eq!((r.flags.ms_flags(), r.bind), (0, true));
        assert!(!is_remount(&opts("rw,nodev")));
    }

    #[test]
    fn a_remount_refuses_what_nothing_knows() {
        let e = plan(&opts("remount,sync"), &[]).unwrap_err();
        assert!(e.contains("unknown mount option \"sync\""), "{e}");
        assert!(
            e.contains("a remount changes only the standard options"),
            "{e}"
        );
        assert!(plan(&opts("remount,ino_alloc_per_lock=0"), &[]).is_err());
    }
}
