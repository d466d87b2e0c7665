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
use crate::format::alloc::{alloc_list_entries, Extent};
use crate::format::block::BLOCK_SM_SIZE;
use crate::format::super_block::{
    read_super, DeviceKind, SuperExpect, DATA_DEV_START_BLKNO, META_DEV_START_BLKNO,
};
use crate::format::{BlockMagic, BtreeRoot, LogTrees, SuperBlock};

#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<String>,
    pub trees: u64,
    pub blocks: u64,
    pub items: u64,
    pub free_meta_blocks: u64,
    pub free_data_blocks: u64,
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
                let sum: u64 = exts.iter().map(|e| e.len).sum();
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
    _meta: &dyn BlockDev,
    data: &dyn BlockDev,
    progress: Option<Box<dyn FnMut(u64) + 'a>>,
) -> CheckReport {
    let mut report = CheckReport::default();
    let sb = match store
        .io
        .read_super_block()
        .map_err(|e| e.to_string())
        .and_then(|raw| {
            read_super(
                &raw,
                &SuperExpect {
                    fsid: None,
                    device: Some(DeviceKind::Meta),
                },
            )
            .map_err(|e| e.to_string())
        }) {
        Ok(sb) => sb,
        Err(e) => {
            report.problems.push(format!("metadata super block: {e}"));
            return report;
        }
    };
    match crate::block::io::MetaIo::open(data)
        .map_err(|e| e.to_string())
        .and_then(|mut io| io.read_super_block().map_err(|e| e.to_string()))
    {
        Ok(raw) if raw.len() == BLOCK_SM_SIZE => {
            if let Err(e) = read_super(
                &raw,
                &SuperExpect {
                    fsid: Some(sb.fsid()),
                    device: Some(DeviceKind::Data),
                },
            ) {
                report.problems.push(format!("data super block: {e}"));
            }
        }
        Ok(_) => report.problems.push("data super block: short read".into()),
        Err(e) => report.problems.push(format!("data device: {e}")),
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
    match ck
        .store
        .retry(|c| btree::range(c, &logs_root, &first, &last, usize::MAX))
    {
        Ok(items) => {
            for it in items {
                match bytemuck::try_pod_read_unaligned::<LogTrees>(&it.val) {
                    Ok(lt) => ck.tree(
                        &format!("log tree rid {} nr {}", lt.rid.get(), lt.nr.get()),
                        &lt.item_root,
                    ),
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

    // Every allocatable metadata block: referenced once or free once.
    let total = sb.total_meta_blocks.get();
    let mut free_count = 0u64;
    let mut free_seen: HashMap<u64, ()> = HashMap::new();
    for e in &free {
        for b in e.start..e.start + e.len {
            free_count += 1;
            if b < META_DEV_START_BLKNO || b >= total {
                ck.problem(format!(
                    "free metadata block {b} is outside the device's allocatable blocks"
                ));
                continue;
            }
            if free_seen.insert(b, ()).is_some() {
                ck.problem(format!("metadata block {b} is free twice"));
            }
            if let Some(o) = ck.owners.get(&b) {
                let o = o.0.clone();
                ck.problem(format!("metadata block {b} is both free and used by {o}"));
            }
        }
    }
    let mut leaked = Vec::new();
    for b in META_DEV_START_BLKNO..total {
        if !ck.owners.contains_key(&b) && !free_seen.contains_key(&b) {
            leaked.push(b);
        }
    }
    if !leaked.is_empty() {
        ck.problem(format!(
            "{} metadata blocks are neither used nor free (first {:?})",
            leaked.len(),
            &leaked[..leaked.len().min(8)]
        ));
    }
    ck.report.free_meta_blocks = free_count;

    let mut data_sum = 0;
    for e in &data_free {
        data_sum += e.len;
        if e.start < DATA_DEV_START_BLKNO || e.start + e.len > sb.total_data_blocks.get() {
            ck.problem(format!(
                "free data extent [{}, +{}) is outside the data device",
                e.start, e.len
            ));
        }
    }
    ck.report.free_data_blocks = data_sum;
    ck.report
}
