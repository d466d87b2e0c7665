//! Checking a volume (fsck): every reachable block verified (header, crc,
//! seq no newer than the super block), every btree's invariants, and the
//! metadata space accounted for exactly: each block from the first
//! allocatable one to the end of the device is either referenced once by a
//! tree or free (in an allocator or the blocks-in-hand list), never both,
//! never neither. Data free space must lie on the data device.

use std::collections::HashMap;

use crate::alloc;
use crate::block::store::Store;
use crate::block::BlockAccess;
use crate::btree;
use crate::dev::BlockDev;
use crate::forest::{self, ForestRoots};
use crate::format::alloc::{alloc_list_entries, Extent, FileExtent, DATA_EXTENT_OFFLINE};
use crate::format::key::{item_type, zone};
use crate::format::super_block::{DeviceKind, DATA_DEV_START_BLKNO, META_DEV_START_BLKNO};
use crate::format::Key;
use crate::format::{BlockMagic, BtreeRoot, LogTrees, SuperBlock};

#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<String>,
    pub trees: u64,
    pub blocks: u64,
    pub items: u64,
    pub free_meta_blocks: u64,
    pub free_data_blocks: u64,
    /// Data blocks in files' extents.
    pub used_data_blocks: u64,
    /// Inode items found; the volume's count (the super block's plus the
    /// log trees' deltas) must equal it.
    pub inodes: u64,
}

/// What referenced a metadata block, for messages.
#[derive(Clone, Debug)]
struct Owner(String);

struct Checker<'a> {
    store: &'a mut Store,
    sb: SuperBlock,
    report: CheckReport,
    owners: HashMap<u64, Owner>,
    progress: Option<Box<dyn FnMut(u64) + 'a>>,
}

impl Checker<'_> {
    /// An inode's online_blocks must be what its extents hold.
    fn online_blocks_match(&mut self, counted: Option<(u64, u64, u64)>) {
        if let Some((ino, stored, sum)) = counted {
            if stored != sum {
                self.problem(format!(
                    "inode {ino} says {stored} online blocks, its extents hold {sum}"
                ));
            }
        }
    }

    /// Every file's data extent against the data allocator: each data
    /// block is used by one extent of one existing inode or free, once.
    fn data_extents(&mut self, roots: &ForestRoots, free: Vec<Extent>) {
        let total = self.sb.total_data_blocks.get();
        let mut used: Vec<(Extent, u64)> = Vec::new();
        let mut from = Key::zone_first(zone::FS);
        let last = Key::zone_last(zone::FS);
        let mut inode_seen = 0u64;
        // The inode being read, its stored online_blocks, and the online
        // blocks of its extents so far.
        let mut counting: Option<(u64, u64, u64)> = None;
        let fmt = self.sb.format_version();
        loop {
            let batch = match self
                .store
                .retry(|c| forest::range(c, roots, &from, &last, 4096))
            {
                Ok(b) => b,
                Err(e) => {
                    self.problem(format!("reading file items: {e}"));
                    return;
                }
            };
            let Some(tail) = batch.last().map(|it| it.key) else {
                break;
            };
            for it in &batch {
                let ino = it.key.first;
                match it.key.ty {
                    item_type::INODE => {
                        inode_seen = ino;
                        self.report.inodes += 1;
                        self.online_blocks_match(counting.take());
                        match crate::format::inode::Inode::from_value(&it.val, fmt) {
                            Ok(inode) => counting = Some((ino, inode.online_blocks.get(), 0)),
                            Err(e) => self.problem(format!("inode {ino}: {e}")),
                        }
                    }
                    item_type::DATA_EXTENT => {
                        if inode_seen != ino {
                            self.problem(format!("data extent {} of a missing inode", it.key));
                        }
                        match FileExtent::from_item(&it.key, &it.val) {
                            Ok(e) if e.flags & DATA_EXTENT_OFFLINE == 0 => {
                                if let Some((i, _, sum)) = counting.as_mut() {
                                    if *i == ino {
                                        *sum += e.len;
                                    }
                                }
                                used.push((
                                    Extent {
                                        start: e.blkno,
                                        len: e.len,
                                    },
                                    ino,
                                ))
                            }
                            Ok(_) => {}
                            Err(why) => self.problem(format!(
                                "inode {ino}: corrupt data extent item {}: {why}",
                                it.key
                            )),
                        }
                    }
                    _ => {}
                }
            }
            match tail.next() {
                Some(n) if n <= last => from = n,
                _ => break,
            }
        }
        self.online_blocks_match(counting);
        let who = |o: Option<u64>| o.map_or("free space".to_string(), |i| format!("inode {i}"));
        let mut all: Vec<(Extent, Option<u64>)> =
            used.iter().map(|(e, i)| (*e, Some(*i))).collect();
        all.extend(free.into_iter().map(|e| (e, None)));
        all.sort_by_key(|(e, _)| e.start);
        let mut covered = 0u64;
        let mut end = DATA_DEV_START_BLKNO;
        let mut prev_owner: Option<u64> = None;
        for (e, owner) in all {
            if e.start.saturating_add(e.len) > total || e.start < DATA_DEV_START_BLKNO {
                self.problem(format!(
                    "data extent [{}, +{}) of {} is outside the data device",
                    e.start,
                    e.len,
                    who(owner)
                ));
                continue;
            }
            if e.start < end {
                self.problem(format!(
                    "data blocks [{}, +{}) of {} overlap {}",
                    e.start,
                    e.len,
                    who(owner),
                    who(prev_owner)
                ));
            }
            covered += e.len;
            end = end.max(e.start + e.len);
            prev_owner = owner;
        }
        let want = total.saturating_sub(DATA_DEV_START_BLKNO);
        if covered < want {
            self.problem(format!(
                "{} data blocks are neither used by a file nor free",
                want - covered
            ));
        }
        self.report.used_data_blocks = used.iter().map(|(e, _)| e.len).sum();
    }

    fn problem(&mut self, p: String) {
        self.report.problems.push(p);
    }

    fn claim(&mut self, blkno: u64, owner: &str) {
        if blkno < META_DEV_START_BLKNO || blkno >= self.sb.total_meta_blocks.get() {
            self.problem(format!(
                "{owner} references block {blkno} outside the metadata device's allocatable blocks"
            ));
            return;
        }
        if let Some(prev) = self.owners.insert(blkno, Owner(owner.to_string())) {
            self.problem(format!(
                "block {blkno} is used by both {} and {owner}",
                prev.0
            ));
        }
    }

    fn tree(&mut self, name: &str, root: &BtreeRoot) {
        if root.is_empty() {
            return;
        }
        self.report.trees += 1;
        let mut refs = Vec::new();
        let super_seq = self.sb.seq.get();
        let mut newer = Vec::new();
        let walked = self.store.retry(|c| {
            refs.clear();
            newer.clear();
            btree::walk_blocks(c, root, &mut |_level, r, _data| {
                refs.push(*r);
                if r.seq.get() > super_seq {
                    newer.push(*r);
                }
            })
        });
        if let Err(e) = walked {
            self.problem(format!("{name}: walking the tree: {e}"));
            return;
        }
        for r in &newer {
            self.problem(format!(
                "{name}: block {} has seq {} newer than the super block's {super_seq}",
                r.blkno.get(),
                r.seq.get()
            ));
        }
        for r in &refs {
            self.claim(r.blkno.get(), name);
        }
        self.report.blocks += refs.len() as u64;
        if let Some(p) = self.progress.as_mut() {
            p(self.report.blocks);
        }
        match self.store.retry(|c| btree::check_tree(c, root)) {
            Ok(stats) => self.report.items += stats.items,
            Err(e) => self.problem(format!("{name}: {e}")),
        }
    }

    fn alloc_root(&mut self, name: &str, root: &crate::format::AllocRoot) -> Vec<Extent> {
        self.tree(name, &root.root);
        match self.store.retry(|c| alloc::free_extents(c, root)) {
            Ok(exts) => {
                let sum = exts.iter().fold(0u64, |a, e| a.saturating_add(e.len));
                if sum != root.total_len.get() {
                    self.problem(format!(
                        "{name}: extents hold {sum} blocks but the root says {}",
                        root.total_len.get()
                    ));
                }
                exts
            }
            Err(e) => {
                self.problem(format!("{name}: reading free extents: {e}"));
                Vec::new()
            }
        }
    }
}

/// Check the volume whose super block `store` was opened from. `meta` and
/// `data` are the devices (the data device's super must match).
pub fn check_volume(store: &mut Store, meta: &dyn BlockDev, data: &dyn BlockDev) -> CheckReport {
    check_volume_with_progress(store, meta, data, None)
}

pub fn check_volume_with_progress<'a>(
    store: &'a mut Store,
    meta: &dyn BlockDev,
    data: &dyn BlockDev,
    progress: Option<Box<dyn FnMut(u64) + 'a>>,
) -> CheckReport {
    let mut report = CheckReport::default();
    let sb = match super::devices::read_device_super(meta, DeviceKind::Meta) {
        Ok((_, sb)) => sb,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    // A device cut short loses blocks that only free space may name:
    // nothing else would read them.
    if let Err(e) = super::devices::check_meta_size(meta, &sb) {
        report.problems.push(e.to_string());
    }
    if let Err(e) = super::devices::check_data_device(data, &sb) {
        report.problems.push(e.to_string());
    }
    let mut ck = Checker {
        store,
        sb,
        report,
        owners: HashMap::new(),
        progress,
    };

    ck.tree("fs root", &sb.fs_root);
    ck.tree("logs root", &sb.logs_root);
    let first = crate::format::Key::new(crate::format::key::zone::LOG_TREES, 0, 0, 0, 0, 0);
    let last = crate::format::Key::new(
        crate::format::key::zone::LOG_TREES,
        u64::MAX,
        u8::MAX,
        u64::MAX,
        u64::MAX,
        u8::MAX,
    );
    let logs_root = sb.logs_root;
    let mut log_roots = Vec::new();
    let mut inode_count = sb.inode_count.get();
    match ck
        .store
        .retry(|c| btree::range(c, &logs_root, &first, &last, usize::MAX))
    {
        Ok(items) => {
            for it in items {
                match bytemuck::try_pod_read_unaligned::<LogTrees>(&it.val) {
                    Ok(lt) => {
                        ck.tree(
                            &format!("log tree rid {} nr {}", lt.rid.get(), lt.nr.get()),
                            &lt.item_root,
                        );
                        log_roots.push(lt.item_root);
                        inode_count = inode_count.wrapping_add_signed(lt.inode_count_delta());
                    }
                    Err(_) => ck.problem(format!(
                        "logs root item {} has a {}-byte value",
                        it.key,
                        it.val.len()
                    )),
                }
            }
        }
        Err(e) => ck.problem(format!("logs root: {e}")),
    }
    let mut free: Vec<Extent> = Vec::new();
    free.extend(ck.alloc_root("meta allocator 0", &sb.meta_alloc[0]));
    free.extend(ck.alloc_root("meta allocator 1", &sb.meta_alloc[1]));
    let data_free = ck.alloc_root("data allocator", &sb.data_alloc);

    let head = sb.server_meta_avail[0];
    if !head.ref_.is_null() {
        ck.claim(head.ref_.blkno.get(), "blocks-in-hand list");
        ck.report.blocks += 1;
        let r = head.ref_;
        let got = ck.store.retry(|c| {
            c.get(&r, BlockMagic::AllocList).map(|b| {
                alloc_list_entries(b).map(|e| e.iter().map(|x| x.get()).collect::<Vec<_>>())
            })
        });
        match got {
            Ok(Ok(list)) => {
                if list.len() as u64 != head.total_nr.get() {
                    ck.problem(format!(
                        "blocks-in-hand list holds {} blocks, its head says {}",
                        list.len(),
                        head.total_nr.get()
                    ));
                }
                free.extend(list.into_iter().map(|b| Extent { start: b, len: 1 }));
            }
            Ok(Err(e)) => ck.problem(format!("blocks-in-hand list: {e}")),
            Err(e) => ck.problem(format!("blocks-in-hand list: {e}")),
        }
    }

    // Every allocatable metadata block: referenced once or free once. Done
    // on sorted intervals, so the cost follows the number of extents and
    // referenced blocks, not the device size, and a corrupt extent of any
    // length can't make the check run away.
    let total = sb.total_meta_blocks.get();
    let lo = META_DEV_START_BLKNO;
    let mut free_ivs: Vec<(u64, u64)> = Vec::new(); // [start, end)
    for e in &free {
        let end = e.start.saturating_add(e.len);
        if e.len == 0 || e.start < lo || end > total {
            ck.problem(format!(
                "free metadata extent [{}, +{}) is outside the device's allocatable blocks [{lo}, {total})",
                e.start, e.len
            ));
        }
        let (s0, e0) = (e.start.clamp(lo, total), end.clamp(lo, total));
        if s0 < e0 {
            free_ivs.push((s0, e0));
        }
    }
    free_ivs.sort_unstable();
    let mut free_count = 0u64;
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s0, e0) in free_ivs {
        free_count += e0 - s0;
        match merged.last_mut() {
            Some(last) if s0 < last.1 => {
                ck.problem(format!(
                    "metadata blocks [{s0}, {}) are free twice",
                    e0.min(last.1)
                ));
                last.1 = last.1.max(e0);
            }
            Some(last) if s0 == last.1 => last.1 = e0,
            _ => merged.push((s0, e0)),
        }
    }
    let mut used: Vec<u64> = ck.owners.keys().copied().collect();
    used.sort_unstable();
    for &b in &used {
        let i = merged.partition_point(|iv| iv.1 <= b);
        if merged.get(i).is_some_and(|iv| iv.0 <= b) {
            let o = ck.owners[&b].0.clone();
            ck.problem(format!("metadata block {b} is both free and used by {o}"));
        }
    }
    // Leaks: walk the gaps between free intervals, counting used blocks.
    let mut leaked = 0u64;
    let mut first_leaks = Vec::new();
    let mut at = lo;
    let mut u = used.partition_point(|&b| b < lo);
    for &(s0, e0) in merged.iter().chain(std::iter::once(&(total, total))) {
        // Blocks in [at, s0) must all be used.
        while at < s0 {
            while u < used.len() && used[u] < at {
                u += 1;
            }
            let next_used = used.get(u).copied().unwrap_or(u64::MAX);
            if next_used == at {
                at += 1;
                continue;
            }
            let gap_end = next_used.min(s0);
            leaked += gap_end - at;
            if first_leaks.len() < 8 {
                first_leaks.push(at);
            }
            at = gap_end;
        }
        at = at.max(e0);
    }
    if leaked > 0 {
        ck.problem(format!(
            "{leaked} metadata blocks are neither used nor free (runs starting at {first_leaks:?})"
        ));
    }
    ck.report.free_meta_blocks = free_count;

    let mut data_sum = 0u64;
    for e in &data_free {
        data_sum = data_sum.saturating_add(e.len);
        if e.start < DATA_DEV_START_BLKNO
            || e.start.saturating_add(e.len) > sb.total_data_blocks.get()
        {
            ck.problem(format!(
                "free data extent [{}, +{}) is outside the data device",
                e.start, e.len
            ));
        }
    }
    ck.report.free_data_blocks = data_sum;
    let roots = ForestRoots {
        fs_root: sb.fs_root,
        log_roots,
    };
    ck.data_extents(&roots, data_free);
    if ck.report.inodes != inode_count {
        ck.problem(format!(
            "the volume counts {} inodes (super block {} plus the log trees' changes), {} exist",
            inode_count as i64,
            sb.inode_count.get(),
            ck.report.inodes
        ));
    }
    ck.report
}
