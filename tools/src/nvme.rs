//! `scoutfs nvme list|bind|unbind`: the NVMe controllers on this machine,
//! and moving one between the kernel's nvme driver and vfio-pci so the
//! engine can drive it as `nvme://DOMAIN:BUS:DEV.FN/NSID`.

use scoutfs_engine::dev::nvme::pci;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Show every NVMe controller: PCI address, driver, model, serial,
    /// namespaces and sizes.
    List {
        /// Don't open controllers bound to vfio-pci to identify them.
        #[arg(long)]
        no_identify: bool,
    },
    /// Hand a controller to vfio-pci (refused while the kernel uses any of
    /// its namespaces).
    Bind {
        /// PCI address, e.g. 0000:00:04.0 (or nvme://0000:00:04.0).
        addr: String,
    },
    /// Give a controller back to the kernel's nvme driver (refused while an
    /// engine has it open).
    Unbind { addr: String },
}

fn bdf(addr: &str) -> &str {
    let a = addr.strip_prefix("nvme://").unwrap_or(addr);
    a.split('/').next().unwrap_or(a)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub fn run(a: &Args) -> i32 {
    match &a.cmd {
        Cmd::List { no_identify } => {
            let ctrls = pci::list(!no_identify);
            if ctrls.is_empty() {
                println!("no NVMe controllers");
                return 0;
            }
            for c in ctrls {
                println!(
                    "{}  {:04x}:{:04x}  driver {}  iommu group {}  {} {}",
                    c.bdf,
                    c.vendor,
                    c.device,
                    c.driver.as_deref().unwrap_or("none"),
                    c.iommu_group.as_deref().unwrap_or("none"),
                    c.model.as_deref().unwrap_or("?"),
                    c.serial.as_deref().unwrap_or("?"),
                );
                for (nsid, bytes, kname) in &c.namespaces {
                    let via = match kname {
                        Some(k) => format!("/dev/{k}"),
                        None => format!("nvme://{}/{nsid}", c.bdf),
                    };
                    println!("    ns {nsid}: {} ({bytes} bytes)  {via}", human(*bytes));
                }
            }
            0
        }
        Cmd::Bind { addr } => match pci::bind_vfio(bdf(addr)) {
            Ok(()) => {
                println!("{} bound to vfio-pci", bdf(addr));
                0
            }
            Err(e) => {
                eprintln!("scoutfs nvme bind: {e}");
                1
            }
        },
        Cmd::Unbind { addr } => match pci::unbind_vfio(bdf(addr)) {
            Ok(()) => {
                println!("{} returned to the kernel", bdf(addr));
                0
            }
            Err(e) => {
                eprintln!("scoutfs nvme unbind: {e}");
                1
            }
        },
    }
}
