//! Inodes the kernel still references (FUSE's lookup counts, kept in
//! `KernelRefs`) when their last name goes: they stay, with nlink 0, until
//! the kernel forgets them, with open handles, as rename victims, across
//! an unmount, and statfs counts them gone from the unlink on.
//! tests/dir_stress.rs shows the same through the FUSE mount, against
//! ext4.

mod file_harness;

use file_harness::{entry_name, errno, root, ROOT, T};
use scoutfs_engine::data::Prealloc;
use scoutfs_engine::fs::{orphan_key, SetAttr, MAY_READ};
use scoutfs_engine::util::ready;

fn volume() -> T {
    T::new(Prealloc::default(), 64 << 20)
}

/// A removed directory a process still stands in, and a removed file the
/// kernel still holds (an O_PATH descriptor): as on ext4, both answer
/// getattr with nlink 0, take chmod and xattrs, refuse new entries with
/// ENOENT, keep a file's data, and count as inodes; the kernel's last
/// FORGET deletes them and frees their blocks.
#[test]
fn an_unlinked_inode_the_kernel_references_stays_until_forgotten() {
    let mut t = volume();
    let refs = t.fs().kernel_refs();
    let free = t.free_blocks();
    let d = t.mkdir_in(ROOT, "d");
    let f = t.create("f");
    t.write(f, 0, &[7; 100_000]);
    let inodes = ready(t.fs().statfs()).unwrap().inode_count;
    // The kernel looked both up, the file twice (a revalidation).
    refs.remember(d);
    refs.remember(f);
    refs.remember(f);
    ready(t.fs().rmdir(&root(), ROOT, b"d")).unwrap();
    t.unlink("f");
    assert_eq!(refs.len(), (2, 2));
    for ino in [d, f] {
        assert_eq!(t.attr(ino).nlink, 0);
        assert!(t.vol().lookup(&orphan_key(1, ino)).unwrap().is_some());
    }
    assert_eq!(t.read(f, 0, 5), [7; 5]);
    // statfs counts them gone already, as ext4 does right after `rm` (a
    // written file's FORGET can come after the next request).
    assert_eq!(ready(t.fs().statfs()).unwrap().inode_count, inodes - 2);
    assert_eq!(t.free_blocks(), free);
    let chmod = SetAttr {
        mode: Some(0o700),
        ..SetAttr::default()
    };
    ready(t.fs().setattr(&root(), d, &chmod)).unwrap();
    ready(t.fs().set_xattr(&root(), d, b"user.a", b"1", 0)).unwrap();
    assert_eq!(
        errno(ready(t.fs().create(&root(), d, b"x", 0o644))),
        libc::ENOENT
    );
    assert_eq!(
        errno(ready(t.fs().mkdir(&root(), d, b"x", 0o755))),
        libc::ENOENT
    );
    assert_eq!(errno(ready(t.fs().lookup(&root(), d, b"x"))), libc::ENOENT);
    let listing = ready(t.fs().readdir(d, 0, 10)).unwrap();
    assert_eq!(
        listing.iter().map(entry_name).collect::<Vec<_>>(),
        [".", ".."]
    );
    t.check();

    // One of the file's two lookups forgotten: it stays.
    assert!(!refs.forget(f, 1));
    assert_eq!(t.attr(f).nlink, 0);
    // The last: the frontend is told to delete it.
    assert!(refs.forget(f, 1));
    ready(t.fs().forgotten(f)).unwrap();
    assert_eq!(errno(ready(t.fs().getattr(f))), libc::ENOENT);
    assert!(t.vol().lookup(&orphan_key(1, f)).unwrap().is_none());
    assert!(refs.forget(d, 1));
    ready(t.fs().forgotten(d)).unwrap();
    assert_eq!(errno(ready(t.fs().getattr(d))), libc::ENOENT);
    assert_eq!(refs.len(), (0, 0));
    assert_eq!(ready(t.fs().statfs()).unwrap().inode_count, inodes - 2);
    assert_eq!(t.free_blocks(), free, "the file's blocks are free again");
    t.check();
}

/// statfs counted the blocks of a removed file only the kernel still
/// references as free: a writer that needs them before the kernel's
/// FORGET comes gets them, and the file is gone.
#[test]
fn a_writer_gets_the_blocks_of_a_removed_file_only_the_kernel_holds() {
    const DATA_BYTES: u64 = (4 << 20) + (256 << 10);
    let mut t = T::new(Prealloc::NONE, DATA_BYTES);
    let refs = t.fs().kernel_refs();
    let total = t.free_blocks();
    let old = t.create("old");
    t.write(old, 0, &vec![1; (total * 4096) as usize]);
    t.commit();
    assert_eq!(t.free_blocks(), 0);
    refs.remember(old);
    t.unlink("old");
    assert_eq!(t.free_blocks(), total, "what df shows right after rm");
    assert_eq!(t.attr(old).nlink, 0, "still there for the kernel");
    let new = t.create("new");
    t.write(new, 0, &vec![2; (total * 4096) as usize]);
    assert_eq!(t.attr(new).online_blocks, total);
    assert_eq!(errno(ready(t.fs().getattr(old))), libc::ENOENT);
    // Its FORGET comes later and finds nothing to do.
    assert!(!refs.forget(old, 1));
    assert_eq!(refs.len(), (0, 0));
    t.check();
}

/// An open handle and the kernel's references each keep an unlinked
/// inode; whichever goes last deletes it. A rename's victim is kept the
/// same way.
#[test]
fn handles_and_kernel_references_keep_an_unlinked_inode_together() {
    let mut t = volume();
    let refs = t.fs().kernel_refs();
    for release_first in [true, false] {
        let f = t.create("f");
        ready(t.fs().open_ino(&root(), f, MAY_READ)).unwrap();
        refs.remember(f);
        t.unlink("f");
        if release_first {
            ready(t.fs().release(f)).unwrap();
            assert_eq!(t.attr(f).nlink, 0, "the kernel still references it");
            assert!(refs.forget(f, 1));
            ready(t.fs().forgotten(f)).unwrap();
        } else {
            assert!(refs.forget(f, 1));
            ready(t.fs().forgotten(f)).unwrap();
            assert_eq!(t.attr(f).nlink, 0, "still open");
            ready(t.fs().release(f)).unwrap();
        }
        assert_eq!(errno(ready(t.fs().getattr(f))), libc::ENOENT);
        t.check();
    }
    // rename over a referenced file and a referenced empty directory.
    let victim = t.create("victim");
    t.create("src");
    let vd = t.mkdir("vd");
    t.mkdir("sd");
    refs.remember(victim);
    refs.remember(vd);
    t.rename_in(ROOT, "src", "victim");
    t.rename_in(ROOT, "sd", "vd");
    assert_eq!(t.attr(victim).nlink, 0);
    assert_eq!(t.attr(vd).nlink, 0);
    for ino in [victim, vd] {
        assert!(refs.forget(ino, 1));
        ready(t.fs().forgotten(ino)).unwrap();
        assert_eq!(errno(ready(t.fs().getattr(ino))), libc::ENOENT);
    }
    t.check();
}

/// Forgetting a linked inode deletes nothing; a count forgotten beyond
/// what was remembered is the kernel's word and ends the references.
#[test]
fn forgetting_linked_inodes_changes_nothing() {
    let mut t = volume();
    let refs = t.fs().kernel_refs();
    let f = t.create("f");
    refs.remember(f);
    assert!(!refs.forget(f, 5), "linked: never kept");
    assert_eq!(refs.count(f), 0);
    assert!(!refs.forget(f, 1), "unknown");
    ready(t.fs().forgotten(f)).unwrap();
    assert_eq!(t.attr(f).nlink, 1);
    // Looked up again after it was kept, then forgotten: kept until the
    // last FORGET, whichever it is.
    refs.remember(f);
    t.unlink("f");
    refs.remember(f);
    assert!(!refs.forget(f, 1));
    assert!(refs.forget(f, 1));
    ready(t.fs().forgotten(f)).unwrap();
    assert_eq!(errno(ready(t.fs().getattr(f))), libc::ENOENT);
    t.check();
}

/// The kernel's references and the handles end with the mount: the
/// unmount's `end_mount` deletes what was kept for them; an engine
/// stopped without it leaves orphans the next mount deletes.
#[test]
fn inodes_kept_for_the_kernel_go_at_unmount_or_the_next_mount() {
    for flush in [true, false] {
        let mut t = volume();
        let refs = t.fs().kernel_refs();
        let free = t.free_blocks();
        let f = t.create("f");
        t.write(f, 0, &[1; 50_000]);
        let d = t.mkdir("d");
        let open = t.create("open");
        ready(t.fs().open_ino(&root(), open, MAY_READ)).unwrap();
        for ino in [f, d, open] {
            refs.remember(ino);
        }
        t.unlink("f");
        t.unlink("open");
        ready(t.fs().rmdir(&root(), ROOT, b"d")).unwrap();
        if flush {
            ready(t.fs().end_mount()).unwrap();
            assert_eq!(refs.len(), (0, 0));
            // The handle ends with the mount too: its RELEASE may never
            // come once the connection is gone.
            for ino in [f, d, open] {
                assert_eq!(errno(ready(t.fs().getattr(ino))), libc::ENOENT);
                assert!(t.vol().lookup(&orphan_key(1, ino)).unwrap().is_none());
            }
        }
        t.remount();
        for ino in [f, d, open] {
            assert_eq!(errno(ready(t.fs().getattr(ino))), libc::ENOENT);
            assert!(t.vol().lookup(&orphan_key(1, ino)).unwrap().is_none());
        }
        assert_eq!(t.free_blocks(), free);
        t.check();
    }
}
