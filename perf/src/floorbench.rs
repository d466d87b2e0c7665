//! `scoutfs-perf floor`: the probe, meta4 and randread benchmarks against
//! the FUSE floor (floor.rs: the same crate and INIT options as the
//! mount, every answer from memory) and against the scoutfs mount in the
//! same run, then what of each figure is FUSE's (the floor's) and what
//! the engine adds (scoutfs minus floor, per operation).

use crate::target::{parse_kinds, Common};
use crate::{meta4, probe, randread};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Filesystems, the first the base of the comparison (scoutfs, ext4,
    /// floor).
    #[arg(long, default_value = "floor,scoutfs")]
    pub targets: String,
    /// Benchmarks to run, comma separated: probe, meta4, randread.
    #[arg(long, default_value = "probe,meta4,randread")]
    pub benches: String,
    #[command(flatten)]
    pub probe: probe::Params,
    #[command(flatten)]
    pub meta4: meta4::Params,
    #[command(flatten)]
    pub randread: randread::Params,
}

pub fn run(a: &Args) -> i32 {
    match run_inner(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("scoutfs-perf floor: {e}");
            1
        }
    }
}

fn run_inner(a: &Args) -> Result<(), String> {
    let kinds = parse_kinds(&a.targets)?;
    let Some(&base) = kinds.first() else {
        return Err("no targets".into());
    };
    let want = |b: &str| a.benches.split(',').any(|x| x.trim() == b);
    let name = base.name();
    if want("probe") {
        let r = probe::run_with(&a.common, &kinds, &a.probe)?;
        println!();
        println!("| target | phase | p50 us | p50 - {name} | p99 us | p99 - {name} |");
        println!("|---|---|---:|---:|---:|---:|");
        let Some((_, b)) = r.iter().find(|(k, _)| *k == base) else {
            return Ok(());
        };
        for (k, phases) in r.iter().filter(|(k, _)| *k != base) {
            for p in phases {
                let Some(bp) = b.iter().find(|x| x.name == p.name) else {
                    continue;
                };
                println!(
                    "| {} | {} | {:.1} | {:+.1} | {:.1} | {:+.1} |",
                    k.name(),
                    p.name,
                    p.p50_us,
                    p.p50_us - bp.p50_us,
                    p.p99_us,
                    p.p99_us - bp.p99_us
                );
            }
        }
        println!();
    }
    if want("meta4") {
        let r = meta4::run_with(&a.common, &kinds, &a.meta4)?;
        let procs = a.meta4.procs;
        println!();
        println!(
            "| target | phase | us/op, 1 process | - {name} | us/op aggregate, {procs} processes | - {name} |"
        );
        println!("|---|---|---:|---:|---:|---:|");
        let us = |rate: f64| 1e6 / rate;
        if let Some((_, b)) = r.iter().find(|(k, _)| *k == base) {
            for (k, rates) in r.iter().filter(|(k, _)| *k != base) {
                for (x, bx) in rates.iter().zip(b) {
                    println!(
                        "| {} | {} | {:.1} | {:+.1} | {:.1} | {:+.1} |",
                        k.name(),
                        x.phase,
                        us(x.one),
                        us(x.one) - us(bx.one),
                        us(x.many),
                        us(x.many) - us(bx.many)
                    );
                }
            }
        }
        println!();
    }
    if want("randread") {
        let r = randread::run_with(&a.common, &kinds, &a.randread)?;
        println!();
        println!("| target | readers | IOPS | / {name} | p50 us | p50 - {name} |");
        println!("|---|---:|---:|---:|---:|---:|");
        if let Some((_, b)) = r.targets.iter().find(|(k, _)| *k == base) {
            for (k, figs) in r.targets.iter().filter(|(k, _)| *k != base) {
                for ((d, f), (_, bf)) in figs.iter().zip(b) {
                    println!(
                        "| {} | {d} | {:.0} | {:.2}x | {:.1} | {:+.1} |",
                        k.name(),
                        f.iops,
                        f.iops / bf.iops,
                        f.p50_us,
                        f.p50_us - bf.p50_us
                    );
                }
            }
        }
        println!();
    }
    Ok(())
}
