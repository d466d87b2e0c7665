//! `scoutfs-perf items`: metadata item insert / lookup / delete rates and
//! commit throughput at growing tree sizes on the uring backend, to show
//! how per-operation cost grows with the number of items (it should grow
//! like log n: the btree's height).

use std::path::PathBuf;
use std::time::Instant;

use scoutfs_engine::dev::uring::{UringDev, UringOptions};
use scoutfs_engine::format::key::zone;
use scoutfs_engine::format::Key;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};
use scoutfs_engine::util::rng::SimRng;

use crate::env;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tree sizes to measure (items), comma separated. Items are inserted in
    /// inode order; lookups and deletes pick random items.
    #[arg(long, value_delimiter = ',', default_value = "1000,1000000,10000000")]
    pub counts: Vec<u64>,
    /// Directory for the temporary device files (default: current).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Value bytes per item.
    #[arg(long, default_value_t = 16)]
    pub value_bytes: usize,
    /// Metadata block cache budget in MiB.
    #[arg(long, default_value_t = 1024)]
    pub cache_mb: usize,
    /// Lookups and deletes measured per size (at most the item count).
    #[arg(long, default_value_t = 200_000)]
    pub sample: u64,
}

struct Temp(Vec<PathBuf>);

impl Drop for Temp {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn key_of(i: u64) -> Key {
    // Like creating files: inode numbers are handed out in increasing
    // order and each inode has a few items, so inserts append to the right
    // edge of the tree. (Random keys would dirty a different leaf per
    // insert and make every commit rewrite most of a large tree: that is
    // the copy-on-write cost that log trees and merges exist to bound.)
    Key::new(zone::FS, 1 + i / 4, 4, i % 4, 0, 0)
}

pub fn run(a: &Args) -> i32 {
    match run_inner(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("scoutfs-perf items: {e}");
            1
        }
    }
}

fn run_inner(a: &Args) -> Result<(), String> {
    println!("# scoutfs-perf items");
    for (k, v) in env::describe() {
        println!("{k}: {v}");
    }
    println!(
        "backend: uring (O_DIRECT) on temporary files; value {} bytes; cache {} MiB; synchronous in-process engine",
        a.value_bytes, a.cache_mb
    );
    println!();
    println!("| items | height | insert/s | insert ns/op | commit MB/s (64 KiB blocks written) | lookup/s | lookup ns/op | delete/s | delete ns/op | ns/op / log2(n) (lookup) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| ".".into()));
    for &n in &a.counts {
        let meta_path = dir.join(format!(".scoutfs-perf-items-meta-{}", std::process::id()));
        let data_path = dir.join(format!(".scoutfs-perf-items-data-{}", std::process::id()));
        let _temp = Temp(vec![meta_path.clone(), data_path.clone()]);
        // Room for the items several times over (COW, allocators).
        let meta_bytes =
            ((n * (a.value_bytes as u64 + 64) * 8) + (256 << 20)).next_multiple_of(1 << 20);
        std::fs::File::create(&meta_path)
            .and_then(|f| f.set_len(meta_bytes))
            .map_err(|e| e.to_string())?;
        std::fs::File::create(&data_path)
            .and_then(|f| f.set_len(64 << 20))
            .map_err(|e| e.to_string())?;
        let meta =
            UringDev::open(&meta_path, UringOptions::default()).map_err(|e| e.to_string())?;
        let data =
            UringDev::open(&data_path, UringOptions::default()).map_err(|e| e.to_string())?;
        mkfs(&meta, &data, &MkfsOptions::default()).map_err(|e| e.to_string())?;
        let opts = TxnOptions {
            commit_dirty_blocks: 2048,
            cache_bytes: a.cache_mb << 20,
            ..TxnOptions::default()
        };
        let mut vol = Volume::open(&meta, opts).map_err(|e| e.to_string())?;
        let val = vec![0x5au8; a.value_bytes];

        let t = Instant::now();
        for i in 0..n {
            vol.upsert(key_of(i), &val).map_err(|e| e.to_string())?;
        }
        vol.commit().map_err(|e| e.to_string())?;
        let insert_s = t.elapsed().as_secs_f64();

        // Commit throughput: a transaction of fresh changes, timed alone.
        let batch = n.min(100_000);
        for i in 0..batch {
            vol.upsert(key_of(i), &val[..val.len() / 2])
                .map_err(|e| e.to_string())?;
        }
        let t = Instant::now();
        vol.commit().map_err(|e| e.to_string())?;
        let commit_s = t.elapsed().as_secs_f64();
        let commit_blocks = vol.last_commit_blocks();

        let sample = a.sample.min(n);
        let mut r = SimRng::new(7);
        let t = Instant::now();
        for _ in 0..sample {
            let k = key_of(r.below(n));
            if vol.lookup(&k).map_err(|e| e.to_string())?.is_none() {
                return Err(format!("item {k} missing"));
            }
        }
        let lookup_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let mut r = SimRng::new(9);
        let mut deleted = 0;
        while deleted < sample {
            if vol.delete(&key_of(r.below(n))).map_err(|e| e.to_string())? {
                deleted += 1;
            }
        }
        vol.commit().map_err(|e| e.to_string())?;
        let delete_s = t.elapsed().as_secs_f64();

        let height = vol
            .log_trees()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|l| l.item_root.height)
            .max()
            .unwrap_or(0);
        let lookup_ns = lookup_s * 1e9 / sample as f64;
        println!(
            "| {n} | {height} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
            n as f64 / insert_s,
            insert_s * 1e9 / n as f64,
            commit_blocks as f64 * 65536.0 / commit_s / 1e6,
            sample as f64 / lookup_s,
            lookup_ns,
            sample as f64 / delete_s,
            delete_s * 1e9 / sample as f64,
            lookup_ns / (n as f64).log2(),
        );
    }
    Ok(())
}
