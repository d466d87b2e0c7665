//! The standard mount options of a kernel filesystem (`ro`, `nosuid`,
//! `nodev`, `noexec`, the atime options, `lazytime`) as mount(2) flags,
//! and the state of a mount as /proc/self/mountinfo shows it.
//!
//! The kernel applies what these flags mean at the VFS, above FUSE:
//! EACCES for device nodes under `nodev` and for exec under `noexec`, no
//! setuid under `nosuid`, EROFS under `ro`. The one thing it leaves to a
//! FUSE server is atime (every FUSE inode is `S_NOATIME`), so the engine
//! follows the atime flags itself, reading them back from mountinfo (what
//! the kernel made of them, after any `mount -o remount`).

use scoutfs_engine::fs::{AtimeMode, AtimePolicy};

/// mount(2) flags from the standard options. The default is what a
/// kernel filesystem mounted by root gets: read-write, suid, dev, exec,
/// relatime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountFlags {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub noatime: bool,
    /// Asked for explicitly; the kernel's default anyway unless
    /// `noatime` or `strictatime`.
    pub relatime: bool,
    pub strictatime: bool,
    pub nodiratime: bool,
    pub lazytime: bool,
}

/// The options [`MountFlags::apply`] takes, for messages.
pub const STANDARD_OPTIONS: &str = "ro, rw, suid, nosuid, dev, nodev, exec, noexec, \
     atime, noatime, relatime, norelatime, strictatime, nostrictatime, diratime, nodiratime, \
     lazytime, nolazytime";

impl MountFlags {
    /// Apply one option as mount(8) does (a later option overrides an
    /// earlier one); false if it is not a standard option.
    pub fn apply(&mut self, opt: &str) -> bool {
        let (flag, on) = match opt {
            "ro" => (&mut self.read_only, true),
            "rw" => (&mut self.read_only, false),
            "nosuid" => (&mut self.nosuid, true),
            "suid" => (&mut self.nosuid, false),
            "nodev" => (&mut self.nodev, true),
            "dev" => (&mut self.nodev, false),
            "noexec" => (&mut self.noexec, true),
            "exec" => (&mut self.noexec, false),
            "noatime" => (&mut self.noatime, true),
            "atime" => (&mut self.noatime, false),
            "relatime" => (&mut self.relatime, true),
            "norelatime" => (&mut self.relatime, false),
            "strictatime" => (&mut self.strictatime, true),
            "nostrictatime" => (&mut self.strictatime, false),
            "nodiratime" => (&mut self.nodiratime, true),
            "diratime" => (&mut self.nodiratime, false),
            "lazytime" => (&mut self.lazytime, true),
            "nolazytime" => (&mut self.lazytime, false),
            _ => return false,
        };
        *flag = on;
        true
    }

    /// The flags for mount(2).
    pub fn ms_flags(&self) -> libc::c_ulong {
        [
            (self.read_only, libc::MS_RDONLY),
            (self.nosuid, libc::MS_NOSUID),
            (self.nodev, libc::MS_NODEV),
            (self.noexec, libc::MS_NOEXEC),
            (self.noatime, libc::MS_NOATIME),
            (self.relatime, libc::MS_RELATIME),
            (self.strictatime, libc::MS_STRICTATIME),
            (self.nodiratime, libc::MS_NODIRATIME),
            (self.lazytime, libc::MS_LAZYTIME),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |f, (_, bit)| f | bit)
    }

    /// The options as fusermount3 takes them (for a mount without
    /// CAP_SYS_ADMIN). fusermount3 makes such a mount nosuid and nodev
    /// whatever it is told, and calls `suid` and `dev` unsafe: they are
    /// left out, and so is `relatime`, the kernel's default, which an
    /// older fusermount3 (3.14, Debian 12's) doesn't know (nor
    /// `nodiratime`, `strictatime` or `lazytime`: asked for, they fail
    /// the mount with its message).
    pub fn fusermount_options(&self) -> Vec<&'static str> {
        let mut v = vec![if self.read_only { "ro" } else { "rw" }];
        for (on, name) in [
            (self.nosuid, "nosuid"),
            (self.nodev, "nodev"),
            (self.noexec, "noexec"),
            (self.noatime, "noatime"),
            (self.strictatime, "strictatime"),
            (self.nodiratime, "nodiratime"),
            (self.lazytime, "lazytime"),
        ] {
            if on {
                v.push(name);
            }
        }
        v
    }

    /// The atime policy the kernel makes of these flags at mount
    /// (`path_mount`: relatime unless noatime; strictatime overrides
    /// both).
    pub fn atime_policy(&self) -> AtimePolicy {
        let mode = if self.strictatime {
            AtimeMode::Strict
        } else if self.noatime {
            AtimeMode::Never
        } else {
            AtimeMode::Relatime
        };
        AtimePolicy {
            mode,
            nodiratime: self.nodiratime,
            lazytime: self.lazytime,
            read_only: self.read_only,
        }
    }
}

/// A mount as a mountinfo line shows it (proc(5)): its own options and
/// its superblock's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountState {
    /// The mount's ID (the first field), which remounts keep.
    pub id: u64,
    /// This mount point is read-only (`mount -o remount,bind,ro`, or the
    /// superblock's).
    pub mount_read_only: bool,
    /// The superblock is read-only (`-o ro`, `mount -o remount,ro`).
    pub sb_read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub atime: AtimeMode,
    pub nodiratime: bool,
    pub lazytime: bool,
}

impl MountState {
    /// Parse one mountinfo line.
    pub fn parse(line: &str) -> Option<MountState> {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let id = left.first()?.parse().ok()?;
        let opts: Vec<&str> = left.get(5)?.split(',').collect();
        // After " - ": fs type, source, superblock options.
        let sb_opts: Vec<&str> = right.split(' ').nth(2)?.split(',').collect();
        let has = |o: &[&str], name: &str| o.contains(&name);
        let atime = if has(&opts, "noatime") {
            AtimeMode::Never
        } else if has(&opts, "relatime") {
            AtimeMode::Relatime
        } else {
            // The kernel shows neither for strictatime.
            AtimeMode::Strict
        };
        Some(MountState {
            id,
            mount_read_only: has(&opts, "ro"),
            sb_read_only: has(&sb_opts, "ro"),
            nosuid: has(&opts, "nosuid"),
            nodev: has(&opts, "nodev"),
            noexec: has(&opts, "noexec"),
            atime,
            nodiratime: has(&opts, "nodiratime"),
            lazytime: has(&sb_opts, "lazytime"),
        })
    }

    /// The line of mount `id` in a mountinfo table.
    pub fn find(table: &str, id: u64) -> Option<MountState> {
        table
            .lines()
            .filter_map(MountState::parse)
            .find(|m| m.id == id)
    }

    /// The atime policy the engine follows for this mount: the kernel's
    /// for a local filesystem, no update through a read-only mount.
    pub fn atime_policy(&self) -> AtimePolicy {
        AtimePolicy {
            mode: self.atime,
            nodiratime: self.nodiratime,
            lazytime: self.lazytime,
            read_only: self.mount_read_only || self.sb_read_only,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(opts: &str) -> MountFlags {
        let mut f = MountFlags::default();
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            assert!(f.apply(o), "{o}");
        }
        f
    }

    #[test]
    fn standard_options_become_mount_flags_later_ones_winning() {
        assert_eq!(flags("").ms_flags(), 0, "rw,suid,dev,exec,relatime");
        assert_eq!(
            flags("ro,nosuid,nodev,noexec").ms_flags(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC
        );
        assert_eq!(flags("nosuid,suid,ro,rw,nodev,dev").ms_flags(), 0);
        assert_eq!(
            flags("noatime,nodiratime,lazytime").ms_flags(),
            libc::MS_NOATIME | libc::MS_NODIRATIME | libc::MS_LAZYTIME
        );
        assert_eq!(flags("noatime,atime").ms_flags(), 0);
        assert_eq!(flags("strictatime").ms_flags(), libc::MS_STRICTATIME);
        assert!(!MountFlags::default().apply("sync"));
        assert!(!MountFlags::default().apply("noacl"));
    }

    #[test]
    fn atime_options_mean_what_the_kernel_makes_of_them() {
        let mode = |o: &str| flags(o).atime_policy().mode;
        assert_eq!(mode(""), AtimeMode::Relatime);
        assert_eq!(mode("norelatime"), AtimeMode::Relatime);
        assert_eq!(mode("noatime"), AtimeMode::Never);
        assert_eq!(mode("relatime,noatime"), AtimeMode::Never);
        assert_eq!(mode("strictatime"), AtimeMode::Strict);
        assert_eq!(mode("noatime,strictatime"), AtimeMode::Strict);
        assert_eq!(mode("strictatime,noatime"), AtimeMode::Strict);
        let p = flags("nodiratime,lazytime,ro").atime_policy();
        assert!(p.nodiratime && p.lazytime && p.read_only);
    }

    #[test]
    fn fusermount_gets_the_safe_options() {
        assert_eq!(flags("relatime").fusermount_options(), ["rw"]);
        assert_eq!(
            flags("ro,suid,dev,noexec,strictatime,lazytime").fusermount_options(),
            ["ro", "noexec", "strictatime", "lazytime"]
        );
    }

    const TABLE: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
45 27 0:41 / /tmp/a/mnt rw,nosuid,nodev,noatime - fuse.scoutfs /tmp/a/meta rw,user_id=0,group_id=0,default_permissions,allow_other,max_read=1052672
46 27 0:42 / /tmp/b/mnt ro,noexec,nodiratime shared:3 - fuse.scoutfs /tmp/b/meta ro,lazytime,user_id=0
47 27 0:42 / /tmp/c\\040d ro,relatime - fuse.scoutfs /tmp/b/meta rw,user_id=0
";

    #[test]
    fn mountinfo_lines_give_the_mount_state() {
        let a = MountState::find(TABLE, 45).unwrap();
        assert_eq!(
            a,
            MountState {
                id: 45,
                mount_read_only: false,
                sb_read_only: false,
                nosuid: true,
                nodev: true,
                noexec: false,
                atime: AtimeMode::Never,
                nodiratime: false,
                lazytime: false,
            }
        );
        let b = MountState::find(TABLE, 46).unwrap();
        assert!(b.mount_read_only && b.sb_read_only && b.noexec && b.nodiratime && b.lazytime);
        assert_eq!(b.atime, AtimeMode::Strict, "neither noatime nor relatime");
        assert!(!b.nosuid && !b.nodev);
        // Read-only through this mount point only: no atime either.
        let c = MountState::find(TABLE, 47).unwrap();
        assert!(c.mount_read_only && !c.sb_read_only);
        assert!(c.atime_policy().read_only);
        assert_eq!(MountState::find(TABLE, 48), None);
        assert_eq!(MountState::parse("garbage"), None);
        assert_eq!(MountState::parse("x 1 2 3 4 5 - a b"), None);
    }
}
