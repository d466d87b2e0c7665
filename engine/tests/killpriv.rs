//! The privileges a change to a file drops (Linux's file_remove_privs and
//! setattr_should_drop_suidgid), on the engine alone: setuid and setgid
//! by who writes, truncates or fallocates, security.capability by any
//! of them, nothing for pages written back from a frontend's cache, and
//! the kernel's own capability removal for a frontend whose kernel
//! checked the caller. tests/fuse_perm.rs compares the same through the
//! mount with ext4.

mod file_harness;

use scoutfs_engine::data::Prealloc;
use scoutfs_engine::fs::{Creds, SetAttr};
use scoutfs_engine::util::ready;

use file_harness::{errno, root, BS, T};

const CAP_XATTR: &[u8] = b"security.capability";

/// cap_net_raw+ep as setcap writes it (VFS_CAP_REVISION_2).
fn cap_value() -> Vec<u8> {
    let mut v = vec![0x01, 0x00, 0x00, 0x02];
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&[0; 12]);
    v
}

/// A file of 2 blocks owned by 1000:1000 at `mode`, with a capability if
/// `cap`.
fn file(t: &mut T, name: &str, mode: u32, cap: bool) -> u64 {
    let ino = t.create(name);
    t.write(ino, 0, &[7u8; 2 * BS as usize]);
    let set = SetAttr {
        uid: Some(1000),
        gid: Some(1000),
        ..SetAttr::default()
    };
    ready(t.fs().setattr(&root(), ino, &set)).unwrap();
    let set = SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    };
    ready(t.fs().setattr(&root(), ino, &set)).unwrap();
    if cap {
        ready(t.fs().set_xattr(&root(), ino, CAP_XATTR, &cap_value(), 0)).unwrap();
    }
    ino
}

fn has_cap(t: &mut T, ino: u64) -> bool {
    match ready(t.fs().get_xattr(&root(), ino, CAP_XATTR)) {
        Ok(v) => v == cap_value(),
        Err(e) => {
            assert_eq!(e.errno(), libc::ENODATA);
            false
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Write,
    Truncate,
    Fallocate,
}

fn change(t: &mut T, c: &Creds, ino: u64, how: Change) {
    match how {
        Change::Write => {
            ready(t.fs().write(c, ino, 0, b"x")).unwrap();
        }
        Change::Truncate => {
            let set = SetAttr {
                size: Some(100),
                handle_writable: true,
                ..SetAttr::default()
            };
            ready(t.fs().setattr(c, ino, &set)).unwrap();
        }
        Change::Fallocate => ready(t.fs().fallocate(c, ino, 0, 0, 4 * BS)).unwrap(),
    }
}

#[test]
fn changes_drop_setuid_and_setgid_by_who_makes_them() {
    let mut t = T::new(Prealloc::NONE, 16 << 20);
    let owner = Creds::user(1000, 1000);
    let member = Creds {
        uid: 2000,
        gid: 2000,
        groups: vec![1000],
        umask: 0,
    };
    let other = Creds::user(2000, 2000);
    // (caller, mode before, mode after): setuid always goes; setgid with
    // group x always, without it only for a caller outside the group;
    // root keeps both.
    let cases = [
        (&owner, 0o4777, 0o0777),
        (&owner, 0o2777, 0o0777),
        (&owner, 0o2767, 0o2767),
        (&member, 0o2767, 0o2767),
        (&other, 0o2767, 0o0767),
        (&other, 0o6777, 0o0777),
        (&root(), 0o6777, 0o6777),
    ];
    let mut n = 0;
    for how in [Change::Write, Change::Truncate, Change::Fallocate] {
        for (c, before, after) in cases {
            n += 1;
            let ino = file(&mut t, &format!("f{n}"), before, false);
            change(&mut t, c, ino, how);
            let mode = t.attr(ino).mode;
            assert_eq!(
                mode,
                libc::S_IFREG | after,
                "{how:?} by {c:?} of {before:o} gave {mode:o}"
            );
        }
    }
    t.remount();
    t.check();
}

#[test]
fn any_change_by_anyone_removes_the_capability() {
    let mut t = T::new(Prealloc::NONE, 16 << 20);
    let other = Creds::user(2000, 2000);
    let mut n = 0;
    for how in [Change::Write, Change::Truncate, Change::Fallocate] {
        for c in [&other, &root()] {
            n += 1;
            let ino = file(&mut t, &format!("f{n}"), 0o777, true);
            assert!(has_cap(&mut t, ino));
            change(&mut t, c, ino, how);
            assert!(!has_cap(&mut t, ino), "{how:?} by {c:?}");
        }
    }
    t.remount();
    t.check();
}

#[test]
fn pages_written_back_drop_nothing() {
    let mut t = T::new(Prealloc::NONE, 16 << 20);
    let ino = file(&mut t, "mapped", 0o6777, true);
    let before = t.attr(ino);
    let n = ready(t.fs().write_back(ino, BS, b"stored through a mapping")).unwrap();
    assert_eq!(n, 24);
    let after = t.attr(ino);
    assert_eq!(after.mode, libc::S_IFREG | 0o6777);
    assert!(has_cap(&mut t, ino));
    // Otherwise a write: contents, times and data_version.
    assert_eq!(t.read(ino, BS, 24), b"stored through a mapping");
    assert!(after.mtime > before.mtime && after.ctime > before.ctime);
    assert_eq!(after.data_version, before.data_version + 1);
    t.remount();
    assert!(has_cap(&mut t, ino));
    t.check();
}

#[test]
fn the_kernels_capability_removal_needs_no_privilege_unlike_removexattr() {
    let mut t = T::new(Prealloc::NONE, 16 << 20);
    let other = Creds::user(2000, 2000);
    let ino = file(&mut t, "f", 0o777, true);
    // A caller's own removal needs CAP_SETFCAP (root here) ...
    assert_eq!(
        errno(ready(t.fs().remove_xattr(&other, ino, CAP_XATTR))),
        libc::EPERM
    );
    assert!(has_cap(&mut t, ino));
    // ... the kernel's killpriv, made for any writer, does not.
    let before = t.attr(ino);
    ready(t.fs().kill_capability(ino)).unwrap();
    assert!(!has_cap(&mut t, ino));
    let after = t.attr(ino);
    assert!(after.ctime > before.ctime);
    assert_eq!(after.mode, before.mode);
    assert_eq!(errno(ready(t.fs().kill_capability(ino))), libc::ENODATA);
    // Set again after it went: found again.
    ready(t.fs().set_xattr(&root(), ino, CAP_XATTR, &cap_value(), 0)).unwrap();
    ready(t.fs().kill_capability(ino)).unwrap();
    assert!(!has_cap(&mut t, ino));
    // Other xattrs are untouched.
    ready(t.fs().set_xattr(&root(), ino, b"user.keep", b"v", 0)).unwrap();
    assert_eq!(errno(ready(t.fs().kill_capability(ino))), libc::ENODATA);
    assert_eq!(
        ready(t.fs().get_xattr(&root(), ino, b"user.keep")).unwrap(),
        b"v"
    );
    t.remount();
    assert!(!has_cap(&mut t, ino));
    t.check();
}
