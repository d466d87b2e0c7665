//! `scoutfs print META`: the super block, every root, and every item of
//! every btree in a readable form.

use std::io::Write;
use std::path::PathBuf;

use scoutfs_engine::block::store::Store;
use scoutfs_engine::btree::{self, Item};
use scoutfs_engine::format::alloc::free_extent_from_key;
use scoutfs_engine::format::btree::ITEM_FLAG_DELETION;
use scoutfs_engine::format::key::zone;
use scoutfs_engine::format::{AllocRoot, BtreeRoot, Key, LogTrees, SuperBlock};
use scoutfs_engine::txn::open_store;

use crate::device;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The metadata device.
    pub meta: PathBuf,
    /// Print at most this many items per tree (0: all).
    #[arg(long, default_value_t = 0)]
    pub max_items: usize,
}

fn root_str(r: &BtreeRoot) -> String {
    if r.is_empty() {
        "empty".into()
    } else {
        format!(
            "blkno {} seq {} height {}",
            r.ref_.blkno.get(),
            r.ref_.seq.get(),
            r.height
        )
    }
}

fn alloc_str(a: &AllocRoot) -> String {
    format!(
        "free {} blocks, tree {}",
        a.total_len.get(),
        root_str(&a.root)
    )
}

fn item_str(it: &Item) -> String {
    let mut s = format!("{} seq {}", it.key, it.seq);
    if it.flags & ITEM_FLAG_DELETION != 0 {
        s.push_str(" DELETION");
    }
    match it.key.zone {
        zone::FREE_EXTENT_BLKNO | zone::FREE_EXTENT_ORDER => {
            if let Some(e) = free_extent_from_key(&it.key) {
                s.push_str(&format!(" extent [{}, +{})", e.start, e.len));
            }
        }
        _ if !it.val.is_empty() => {
            let shown: String = it.val.iter().take(32).map(|b| format!("{b:02x}")).collect();
            s.push_str(&format!(
                " val {} bytes {shown}{}",
                it.val.len(),
                if it.val.len() > 32 { ".." } else { "" }
            ));
        }
        _ => {}
    }
    s
}

fn print_tree(
    out: &mut impl Write,
    store: &mut Store,
    name: &str,
    root: &BtreeRoot,
    max: usize,
) -> Result<Vec<Item>, String> {
    writeln!(out, "{name}: {}", root_str(root)).map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    let mut from = Key::MIN;
    loop {
        let items = store
            .retry(|c| btree::range(c, root, &from, &Key::MAX, 4096))
            .map_err(|e| format!("{name}: {e}"))?;
        let Some(last) = items.last().map(|i| i.key) else {
            break;
        };
        for it in items {
            if max == 0 || all.len() < max {
                writeln!(out, "  {}", item_str(&it)).map_err(|e| e.to_string())?;
            }
            all.push(it);
        }
        match last.next() {
            Some(n) => from = n,
            None => break,
        }
    }
    if max != 0 && all.len() > max {
        writeln!(out, "  ... {} more items", all.len() - max).map_err(|e| e.to_string())?;
    }
    Ok(all)
}

fn print_super(out: &mut impl Write, sb: &SuperBlock) -> std::io::Result<()> {
    writeln!(out, "super block:")?;
    writeln!(
        out,
        "  fsid {:#018x} format version {} seq {} flags {:#x}",
        sb.fsid(),
        sb.fmt_vers.get(),
        sb.seq.get(),
        sb.flags.get()
    )?;
    writeln!(
        out,
        "  uuid {}",
        sb.uuid
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )?;
    writeln!(
        out,
        "  next_ino {} inode_count {}",
        sb.next_ino.get(),
        sb.inode_count.get()
    )?;
    writeln!(
        out,
        "  total_meta_blocks {} total_data_blocks {}",
        sb.total_meta_blocks.get(),
        sb.total_data_blocks.get()
    )?;
    writeln!(out, "  meta_alloc[0] {}", alloc_str(&sb.meta_alloc[0]))?;
    writeln!(out, "  meta_alloc[1] {}", alloc_str(&sb.meta_alloc[1]))?;
    writeln!(out, "  data_alloc {}", alloc_str(&sb.data_alloc))?;
    let h = sb.server_meta_avail[0];
    writeln!(
        out,
        "  server_meta_avail[0] blkno {} seq {} nr {}",
        h.ref_.blkno.get(),
        h.ref_.seq.get(),
        h.total_nr.get()
    )?;
    writeln!(out, "  fs_root {}", root_str(&sb.fs_root))?;
    writeln!(out, "  logs_root {}", root_str(&sb.logs_root))?;
    writeln!(out, "  quorum config version {}", sb.qconf.version.get())?;
    for i in 0..15 {
        if let Some(a) = sb.qconf.slot_addr(i) {
            writeln!(out, "    slot {i}: {a}")?;
        }
    }
    writeln!(out, "  data_alloc_zone_blocks {:?}", sb.volopt.get(0))
}

pub fn run(a: &Args) -> i32 {
    let dev = match device::open(&a.meta) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("scoutfs print: {e}");
            return 1;
        }
    };
    let (mut store, sb) = match open_store(&*dev, 256 << 20) {
        Ok(x) => x,
        Err(e) => {
            eprintln!(
                "scoutfs print: {}",
                device::explain(&e, &[(&a.meta, &*dev)])
            );
            return 1;
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let r = (|| -> Result<(), String> {
        print_super(&mut out, &sb).map_err(|e| e.to_string())?;
        print_tree(&mut out, &mut store, "fs root", &sb.fs_root, a.max_items)?;
        let logs = print_tree(
            &mut out,
            &mut store,
            "logs root",
            &sb.logs_root,
            a.max_items,
        )?;
        for it in logs {
            let Ok(lt) = bytemuck::try_pod_read_unaligned::<LogTrees>(&it.val) else {
                continue;
            };
            let name = format!(
                "log tree rid {} nr {} flags {:#x}",
                lt.rid.get(),
                lt.nr.get(),
                lt.flags.get()
            );
            print_tree(&mut out, &mut store, &name, &lt.item_root, a.max_items)?;
        }
        print_tree(
            &mut out,
            &mut store,
            "meta_alloc[0]",
            &sb.meta_alloc[0].root,
            a.max_items,
        )?;
        print_tree(
            &mut out,
            &mut store,
            "meta_alloc[1]",
            &sb.meta_alloc[1].root,
            a.max_items,
        )?;
        print_tree(
            &mut out,
            &mut store,
            "data_alloc",
            &sb.data_alloc.root,
            a.max_items,
        )?;
        Ok(())
    })();
    let _ = out.flush();
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("scoutfs print: {e}");
            1
        }
    }
}
