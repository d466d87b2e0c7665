//! Corruption met while serving: a directory's btree leaf is damaged on
//! the (mem) metadata device, and every operation that needs it fails
//! with EIO — lookups, and the operations that must prove a name free or
//! find a rename's target, which never proceed on a guess — while the
//! block is logged once (device, 64 KiB block number, byte offset, what
//! differed) however many operations meet it. Once the block is repaired
//! the namespace is exactly what it was: the failed operations changed
//! nothing.

use std::io::Write;
use std::sync::{Arc, Mutex};

use scoutfs_engine::btree::walk_blocks;
use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::format::block::{BlockRef, BLOCK_LG_SIZE};
use scoutfs_engine::format::btree::btree_items;
use scoutfs_engine::format::key::{item_type, zone};
use scoutfs_engine::format::{BtreeItem, Key};
use scoutfs_engine::fs::{name_hash, Creds, Fs, FsError, FsOptions};
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{open_store, TxnOptions, Volume};
use scoutfs_engine::util::ready;

const ROOT: u64 = 1;
const NR_ENTRIES: usize = 400;

fn entry_name(i: usize) -> Vec<u8> {
    format!("entry-{i:04}-with-a-longer-name-to-fill-leaves").into_bytes()
}

fn mount(meta: &MemDev, data: &MemDev) -> Fs<Volume> {
    let opts = TxnOptions {
        cache_bytes: 16 << 20,
        meta_targets: (32, 48),
        ..TxnOptions::default()
    };
    let mut vol = Volume::open(meta, opts).expect("open");
    vol.attach_data_device(data).expect("data device");
    ready(Fs::open(vol, FsOptions::default())).expect("fs")
}

/// Log lines, captured from `tracing` for the test's duration.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The fs root's leaves: reference and item keys.
fn fs_root_leaves(meta: &MemDev) -> Vec<(BlockRef, Vec<Key>)> {
    let (mut store, sb) = open_store(meta, 16 << 20).expect("open store");
    let mut leaves = Vec::new();
    walk_blocks(&mut store, &sb.fs_root, &mut |level, r, b| {
        if level == 0 {
            leaves.push((*r, btree_items(b).iter().map(BtreeItem::key).collect()));
        }
    })
    .expect("walk the fs root");
    leaves
}

fn is_dirent_of(k: &Key, dir: u64, ty: u8) -> bool {
    k.zone == zone::FS && k.first == dir && k.ty == ty
}

fn eio<T: std::fmt::Debug>(what: &str, r: Result<T, FsError>) {
    match r {
        Err(e) if e.errno() == libc::EIO => {}
        other => panic!("{what}: expected EIO, got {other:?}"),
    }
}

#[test]
fn a_corrupt_directory_block_fails_each_operation_with_eio_and_is_logged_once() {
    let meta = MemDev::new(64 << 20);
    let data = MemDev::new(16 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).expect("mkfs");
    let c = Creds::root();

    // A directory of a few hundred entries, merged into the fs root (so
    // its items span several leaves there), and a file to rename onto
    // one of them.
    let mut fs = mount(&meta, &data);
    let dir = ready(fs.mkdir(&c, ROOT, b"d", 0o755)).unwrap().ino;
    for i in 0..NR_ENTRIES {
        ready(fs.create(&c, dir, &entry_name(i), 0o644)).unwrap();
    }
    ready(fs.create(&c, ROOT, b"src", 0o644)).unwrap();
    fs.store_mut().commit().unwrap();
    fs.store_mut().merge().unwrap();
    fs.into_store().unmount().unwrap();

    // The leaf holding the greatest-hash entry's dirent item: not the
    // one holding the directory's inode (the directory itself stays
    // readable). Readdir starts at position 2: damage that leaf too.
    let leaves = fs_root_leaves(&meta);
    let (victim_i, victim_hash) = (0..NR_ENTRIES)
        .map(|i| (i, name_hash(&entry_name(i))))
        .max_by_key(|&(_, h)| h)
        .unwrap();
    let leaf_with = |pred: &dyn Fn(&Key) -> bool| {
        leaves
            .iter()
            .find(|(_, keys)| keys.iter().any(pred))
            .map(|(r, keys)| (*r, keys.clone()))
            .expect("a leaf with the key")
    };
    let (dirent_leaf, dirent_keys) =
        leaf_with(&|k: &Key| is_dirent_of(k, dir, item_type::DIRENT) && k.second == victim_hash);
    let (readdir_leaf, _) =
        leaf_with(&|k: &Key| is_dirent_of(k, dir, item_type::READDIR) && k.second == 2);
    let inode_leaf = leaf_with(&|k: &Key| *k == Key::inode(dir)).0;
    assert_ne!(
        dirent_leaf, inode_leaf,
        "entries spread over several leaves"
    );
    assert_ne!(
        readdir_leaf, inode_leaf,
        "entries spread over several leaves"
    );
    let mut damaged = vec![dirent_leaf.blkno.get()];
    if readdir_leaf != dirent_leaf {
        damaged.push(readdir_leaf.blkno.get());
    }

    // A new name whose dirent would sit in the damaged leaf: a create
    // must read that leaf to know the name is free.
    let first_hash_in_leaf = dirent_keys
        .iter()
        .filter(|k| is_dirent_of(k, dir, item_type::DIRENT))
        .map(|k| k.second)
        .min()
        .unwrap();
    let new_name = (0..100_000)
        .map(|k| format!("new-{k}").into_bytes())
        .find(|n| name_hash(n) > first_hash_in_leaf)
        .expect("a name hashing into the damaged leaf");

    // Flip a byte in the middle of each damaged block, as a bad sector
    // or a stray write would.
    let mut originals = Vec::new();
    for &blkno in &damaged {
        let at = blkno * BLOCK_LG_SIZE as u64 + 30_000;
        let mut b = [0u8; 1];
        meta.read_at(at, &mut b);
        originals.push((at, b[0]));
        meta.write_at(at, &[b[0] ^ 0x5a]);
    }

    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let c = capture.clone();
            move || c.clone()
        })
        .with_ansi(false)
        .finish();
    let victim = entry_name(victim_i);
    let mut fs = tracing::subscriber::with_default(subscriber, || {
        let mut fs = mount(&meta, &data);
        // Each operation twice: the second meets the block again.
        for _ in 0..2 {
            eio("lookup", ready(fs.lookup(&c, dir, &victim)));
            eio("create", ready(fs.create(&c, dir, &new_name, 0o644)));
            eio("mkdir", ready(fs.mkdir(&c, dir, &new_name, 0o755)));
            eio("unlink", ready(fs.unlink(&c, dir, &victim)));
            eio(
                "rename onto",
                ready(fs.rename(&c, ROOT, b"src", dir, &victim, 0)),
            );
            eio(
                "rename from",
                ready(fs.rename(&c, dir, &victim, ROOT, b"dst", 0)),
            );
            eio("readdir", ready(fs.readdir(dir, 0, 10_000)));
        }
        // The directory itself and other trees are unaffected.
        ready(fs.getattr(dir)).expect("the directory's inode is readable");
        ready(fs.lookup(&c, ROOT, b"src")).expect("the root is readable");
        fs
    });

    // Logged once per damaged block, with the device, the block in
    // 64 KiB units, its byte offset and what differed; every meeting
    // counted.
    let log = capture.text();
    let device = meta.name();
    for &blkno in &damaged {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("corrupt metadata block {blkno} ")))
            .collect();
        assert_eq!(lines.len(), 1, "block {blkno} logged once:\n{log}");
        let line = lines[0];
        assert!(line.contains(&device), "{line}");
        assert!(line.contains("64 KiB blocks"), "{line}");
        assert!(
            line.contains(&format!("byte offset {}", blkno * BLOCK_LG_SIZE as u64)),
            "{line}"
        );
        assert!(line.contains("Crc expected"), "{line}");
    }
    let corruption = &fs.store_mut().store_mut().corruption;
    assert_eq!(corruption.logged(), damaged.len());
    assert!(corruption.met() >= 14, "met {}", corruption.met());
    fs.into_store().unmount().unwrap();

    // Repaired, the namespace is as it was: nothing was created, renamed
    // or removed on a guess.
    for (at, byte) in originals {
        meta.write_at(at, &[byte]);
    }
    let mut fs = mount(&meta, &data);
    ready(fs.lookup(&c, dir, &victim)).expect("the entry is still there");
    assert_eq!(
        ready(fs.lookup(&c, dir, &new_name)).unwrap_err(),
        FsError::NotFound
    );
    ready(fs.lookup(&c, ROOT, b"src")).expect("src was not renamed");
    let names = ready(fs.readdir(dir, 2, 10_000)).unwrap();
    assert_eq!(names.len(), NR_ENTRIES);
    let problems = check_volume(fs.store_mut().store_mut(), &meta, &data).problems;
    assert!(problems.is_empty(), "{problems:?}");
}

/// The server's blocks-in-hand list is read at mount: a list block whose
/// header checks out but which lists a block outside the device is
/// corruption, logged with the device and block like any other, and the
/// mount fails with EIO rather than hand that block out.
#[test]
fn a_blocks_in_hand_list_naming_a_block_off_the_device_fails_the_mount() {
    use scoutfs_engine::format::alloc::{alloc_list_array_mut, alloc_list_block};
    use scoutfs_engine::format::block::seal_block;
    use scoutfs_engine::format::BlockMagic;

    let meta = MemDev::new(64 << 20);
    let data = MemDev::new(16 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).expect("mkfs");
    let mut fs = mount(&meta, &data);
    ready(fs.create(&Creds::root(), ROOT, b"f", 0o644)).unwrap();
    fs.into_store().unmount().unwrap();

    let (_, sb) = open_store(&meta, 16 << 20).expect("open store");
    let list = sb.server_meta_avail[0].ref_;
    assert!(!list.is_null(), "an unmounted volume keeps blocks in hand");
    let at = list.blkno.get() * BLOCK_LG_SIZE as u64;
    let mut blk = vec![0u8; BLOCK_LG_SIZE];
    meta.read_at(at, &mut blk);
    let h = *alloc_list_block(&blk);
    assert!(h.nr.get() > 0);
    alloc_list_array_mut(&mut blk)[h.start.get() as usize] = sb.total_meta_blocks.get().into();
    seal_block(
        &mut blk,
        BlockMagic::AllocList,
        sb.fsid(),
        list.blkno.get(),
        list.seq.get(),
    );
    meta.write_at(at, &blk);

    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let c = capture.clone();
            move || c.clone()
        })
        .with_ansi(false)
        .finish();
    let err = tracing::subscriber::with_default(subscriber, || {
        Volume::open(&meta, TxnOptions::default()).expect_err("a bad list fails the mount")
    });
    assert_eq!(err.errno(), libc::EIO, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&meta.name()) && msg.contains("blocks-in-hand list"),
        "{msg}"
    );
    let log = capture.text();
    let line = format!(
        "{}: corrupt metadata block {} (64 KiB blocks",
        meta.name(),
        list.blkno.get()
    );
    assert_eq!(log.matches(&line).count(), 1, "{log}");
}
