//! Free space as statfs reports it against what writers can allocate:
//! blocks a deleted file frees count as free when the unlink returns (as
//! on ext4), though they become allocatable only at the next commit; a
//! writer that finds the device full makes that commit, so it gets all
//! that statfs promised and ENOSPC only past it.

mod file_harness;

use file_harness::{errno, BS, T};
use scoutfs_engine::data::Prealloc;
use scoutfs_engine::util::ready;

/// 4 MiB of data blocks (mkfs keeps the first 256 KiB of the device).
const DATA_BYTES: u64 = (4 << 20) + (256 << 10);

fn fill(t: &mut T, name: &str, blocks: u64, chunk: u64) -> u64 {
    let ino = t.create(name);
    let buf = vec![9u8; chunk as usize];
    let mut off = 0;
    while off < blocks * BS {
        let n = chunk.min(blocks * BS - off);
        t.write(ino, off, &buf[..n as usize]);
        off += n;
    }
    ino
}

#[test]
fn a_deleted_file_is_free_at_once_and_a_writer_gets_all_of_it() {
    // Whole blocks, unaligned chunks, and preallocation on or off.
    for (prealloc, chunk) in [
        (Prealloc::default(), 64 << 10),
        (Prealloc::default(), 100_000),
        (Prealloc::NONE, 4096),
    ] {
        let mut t = T::new(prealloc, DATA_BYTES);
        let total = t.free_blocks();
        let old = fill(&mut t, "old", total - 10, 1 << 20);
        t.commit();
        let used = t.attr(old).online_blocks;
        assert_eq!(t.free_blocks(), total - used);
        t.unlink("old");
        let promised = t.free_blocks();
        assert_eq!(promised, total, "freed blocks count when unlink returns");
        // Exactly what statfs promised fits, with no short write and no
        // ENOSPC on the way.
        let g = fill(&mut t, "new", promised, chunk);
        assert_eq!(t.free_blocks(), 0);
        assert_eq!(t.attr(g).online_blocks, promised);
        // And not a block more.
        assert_eq!(
            errno(t.try_write(g, promised * BS, b"x")),
            libc::ENOSPC,
            "{prealloc:?} {chunk}"
        );
        t.check();
        t.remount();
        assert_eq!(t.free_blocks(), 0);
        t.check();
    }
}

/// A write that fills the device part way through its buffer goes on
/// after the commit instead of returning short.
#[test]
fn a_write_across_the_full_point_is_not_short() {
    let mut t = T::new(Prealloc::NONE, DATA_BYTES);
    let total = t.free_blocks();
    fill(&mut t, "old", total / 2, 1 << 20);
    t.commit();
    t.unlink("old");
    let g = t.create("g");
    let all = vec![3u8; (total * BS) as usize];
    assert_eq!(t.try_write(g, 0, &all), Ok(total * BS));
    assert_eq!(t.read(g, 0, all.len()), all);
    t.check();
}

/// A write-back (a kernel page cache's flush) that the device can hold
/// only part of is ENOSPC, not a short count: the kernel's write-back
/// takes a short count as success and would drop the rest silently. What
/// fitted stays written; a write(2) of the same bytes returns short.
#[test]
fn a_write_back_that_fills_the_device_is_enospc_not_short() {
    let mut t = T::new(Prealloc::NONE, DATA_BYTES);
    let total = t.free_blocks();
    assert_eq!(ready(t.fs().free_data_bytes()).unwrap(), total * BS);
    let keep = total - 4;
    fill(&mut t, "old", keep, 1 << 20);
    assert_eq!(ready(t.fs().free_data_bytes()).unwrap(), 4 * BS);
    let g = t.create("g");
    let buf = vec![5u8; (8 * BS) as usize];
    assert_eq!(errno(ready(t.fs().write_back(g, 0, &buf))), libc::ENOSPC);
    assert_eq!(t.attr(g).size, 4 * BS);
    assert_eq!(t.read(g, 0, (4 * BS) as usize), buf[..(4 * BS) as usize]);
    assert_eq!(ready(t.fs().free_data_bytes()).unwrap(), 0);
    let h = t.create("h");
    t.unlink("g");
    // free_data_bytes counts the blocks the unlink freed, as statfs does.
    assert_eq!(ready(t.fs().free_data_bytes()).unwrap(), 4 * BS);
    assert_eq!(t.try_write(h, 0, &buf), Ok(4 * BS));
    assert_eq!(errno(t.try_write(h, 4 * BS, &buf)), libc::ENOSPC);
    t.check();
}
