//! Readdir passes at the engine: a pass bounded where it began
//! (`Fs::readdir_pass_end`, `Fs::readdir_until`) ends and never meets an
//! entry twice however entries are renamed meanwhile, leaves later
//! entries to the next pass, and resumes at any position.
//! tests/readdir_pass.rs shows the same through the FUSE mount.

mod file_harness;

use std::collections::HashSet;

use file_harness::{entry_name, root, ROOT, T};
use scoutfs_engine::data::Prealloc;
use scoutfs_engine::util::ready;

fn volume() -> T {
    T::new(Prealloc::default(), 64 << 20)
}

/// Every name of one whole pass of `dir` begun now, in batches of `batch`.
fn one_pass(t: &mut T, dir: u64, batch: usize) -> Vec<String> {
    let end = ready(t.fs().readdir_pass_end(dir)).unwrap();
    let mut names = Vec::new();
    let mut pos = 2;
    loop {
        let list = ready(t.fs().readdir_until(dir, pos, end, batch)).unwrap();
        let Some(last) = list.last() else {
            return names;
        };
        pos = last.pos + 1;
        names.extend(list.iter().map(entry_name));
    }
}

/// generic/736's shape at 15 000 entries: every entry read is renamed at
/// once, so each takes a new position past the end of the directory.
#[test]
fn a_pass_meets_each_entry_once_while_every_entry_read_is_renamed() {
    const N: usize = 15_000;
    let mut t = volume();
    let d = t.mkdir_in(ROOT, "d");
    for i in 0..N {
        t.create_in(d, &format!("f{i}"));
    }
    let end = ready(t.fs().readdir_pass_end(d)).unwrap();
    let mut seen = HashSet::new();
    let (mut pos, mut visited) = (2, 0);
    // Bounded however the pass behaves: a pass that met renamed entries
    // again would go on for ever.
    for _ in 0..4 * N {
        let list = ready(t.fs().readdir_until(d, pos, end, 128)).unwrap();
        let Some(last) = list.last() else { break };
        pos = last.pos + 1;
        for e in &list {
            visited += 1;
            let n = entry_name(e);
            assert!(seen.insert(n.clone()), "{n} met twice");
            t.rename_in(d, &n, &format!("{n}.renamed"));
        }
    }
    assert_eq!(visited, N, "each entry that was there once, and no other");
    assert!(seen.iter().all(|n| !n.ends_with(".renamed")));
    // The next pass (rewinddir) meets the new names, each once.
    let next = one_pass(&mut t, d, 1000);
    assert_eq!(next.len(), N);
    assert!(next.iter().all(|n| n.ends_with(".renamed")));
    assert_eq!(next.iter().collect::<HashSet<_>>().len(), N);
    t.check();
}

/// Why a pass needs its end: read on to the end of the directory, the
/// entries renamed behind the reader come round again under their new
/// names, as many times as the reader renames them.
#[test]
fn read_to_the_end_renamed_entries_come_round_again() {
    let mut t = volume();
    let d = t.mkdir_in(ROOT, "d");
    for i in 0..100 {
        t.create_in(d, &format!("f{i}"));
    }
    let mut pos = 2;
    let mut visited = 0;
    while visited < 300 {
        let list = ready(t.fs().readdir(d, pos, 10)).unwrap();
        let last = list.last().expect("the directory never runs out").pos;
        for e in &list {
            visited += 1;
            t.rename_in(d, &entry_name(e), &format!("{}+", entry_name(e)));
        }
        pos = last + 1;
    }
    // 300 entries read from a directory of 100: each met three times.
    assert_eq!(one_pass(&mut t, d, 1000).len(), 100);
    t.check();
}

/// POSIX: an entry created, removed or renamed after a pass began may or
/// may not appear in it; one that stays put appears once. Positions
/// (telldir cookies) keep their meaning across passes and removals.
#[test]
fn a_pass_leaves_later_entries_to_the_next_and_resumes_at_any_position() {
    let mut t = volume();
    let d = t.mkdir_in(ROOT, "d");
    let names: Vec<String> = (b'a'..=b'j').map(|c| (c as char).to_string()).collect();
    for n in &names {
        t.create_in(d, n);
    }
    let end = ready(t.fs().readdir_pass_end(d)).unwrap();
    let first = ready(t.fs().readdir_until(d, 0, end, 7)).unwrap();
    let first: Vec<String> = first.iter().map(entry_name).collect();
    assert_eq!(first, [".", "..", "a", "b", "c", "d", "e"]);
    // e's position + 1: where a reader that stopped after e resumes.
    let cookie = ready(t.fs().readdir_until(d, 0, end, 7)).unwrap()[6].pos + 1;
    t.create_in(d, "k");
    ready(t.fs().unlink(&root(), d, b"c")).unwrap();
    ready(t.fs().unlink(&root(), d, b"f")).unwrap();
    t.rename_in(d, "b", "z");
    t.rename_in(d, "h", "y");
    let rest = ready(t.fs().readdir_until(d, cookie, end, 100)).unwrap();
    let rest: Vec<String> = rest.iter().map(entry_name).collect();
    assert_eq!(
        rest,
        ["g", "i", "j"],
        "f removed, h renamed past the end, k new"
    );
    // A removed entry's position still resumes the listing after it.
    let f_cookie = cookie + 1;
    let after_f = ready(t.fs().readdir_until(d, f_cookie, end, 100)).unwrap();
    assert_eq!(after_f.first().map(entry_name).as_deref(), Some("g"));
    // The next pass meets what is there now, each once, in position
    // order (renamed and new entries last).
    assert_eq!(
        one_pass(&mut t, d, 3),
        ["a", "d", "e", "g", "i", "j", "k", "z", "y"]
    );
    t.check();
}
