//! The `nvme` backend: the engine drives an NVMe controller's queues from
//! userspace through VFIO, the way SPDK's NVMe driver does. A submission is
//! a 64-byte entry written to memory plus one doorbell write per batch; a
//! completion is found by its phase tag in memory; no syscall on the I/O
//! path.
//!
//! Files, bottom up:
//! - `spec.rs`: register offsets, queue entries, Identify fields, status
//!   codes (the only place that knows the spec's byte layout);
//! - `mmio.rs`: the unsafe core (volatile register and DMA memory access,
//!   IOVA translation that refuses unmapped addresses);
//! - `ring.rs`: one SQ/CQ pair (tail, doorbell per batch, phase and wrap);
//! - `ctrl.rs`: bring-up, admin commands, I/O queue creation, failure,
//!   shutdown; reached through a `Transport`;
//! - `queue.rs`: the `QueueBackend` (command ids, PRPs, MDTS splitting,
//!   status decoding, timeouts);
//! - `vfio.rs`: the VFIO transport; `sim.rs`: a simulated controller for
//!   tests; `pci.rs`: finding controllers and moving them between drivers.
//!
//! A device is named `nvme://DOMAIN:BUS:DEV.FN/NSID`, e.g.
//! `nvme://0000:00:04.0/1`. Namespaces of one controller share it: the
//! controller is opened once per process and each queue pair gets its own
//! I/O queue.

pub mod ctrl;
pub mod mmio;
pub mod pci;
pub mod queue;
pub mod ring;
pub mod sim;
pub mod spec;
pub mod vfio;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

pub use ctrl::{Controller, NvmeOptions, Transport};
pub use queue::{NvmeQueue, QueueStats};
pub use sim::SimNvme;

use super::{BlockDev, DevError, Discard, Geometry, QueueBackend, QueueConfig};
use spec::{admin, IdentifyNamespace};

/// A parsed `nvme://BDF/NSID` address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeAddr {
    pub bdf: String,
    pub nsid: u32,
}

impl NvmeAddr {
    pub const SCHEME: &'static str = "nvme://";

    /// True when `s` names an NVMe namespace rather than a path.
    pub fn is_nvme(s: &str) -> bool {
        s.starts_with(Self::SCHEME)
    }

    pub fn parse(s: &str) -> Result<NvmeAddr, DevError> {
        let bad = |why: &str| {
            DevError::Open {
            path: s.to_string(),
            msg: format!("{why}; expected nvme://DOMAIN:BUS:DEVICE.FUNCTION/NSID, e.g. nvme://0000:00:04.0/1"),
        }
        };
        let rest = s
            .strip_prefix(Self::SCHEME)
            .ok_or_else(|| bad("not an nvme:// address"))?;
        let (bdf, ns) = match rest.split_once('/') {
            Some((b, n)) => (b, n),
            None => (rest, "1"),
        };
        let bdf = normalize_bdf(bdf).ok_or_else(|| bad("bad PCI address"))?;
        let nsid: u32 = ns
            .parse()
            .ok()
            .filter(|&n| n > 0 && n != u32::MAX)
            .ok_or_else(|| bad("bad namespace id"))?;
        Ok(NvmeAddr { bdf, nsid })
    }
}

impl std::fmt::Display for NvmeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}/{}", Self::SCHEME, self.bdf, self.nsid)
    }
}

/// `0000:00:04.0` from `0000:00:04.0` or `00:04.0` (domain 0), lower case.
pub fn normalize_bdf(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (dom, bus, devfn) = match parts.as_slice() {
        [d, b, df] => (*d, *b, *df),
        [b, df] => ("0000", *b, *df),
        _ => return None,
    };
    let (dev, func) = devfn.split_once('.')?;
    let hex = |x: &str, max: u32| u32::from_str_radix(x, 16).ok().filter(|&v| v <= max);
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        hex(dom, 0xffff)?,
        hex(bus, 0xff)?,
        hex(dev, 0x1f)?,
        hex(func, 7)?
    ))
}

/// Controllers opened by this process, by PCI address, so namespaces of
/// one controller (metadata and data, say) share it.
static CONTROLLERS: Mutex<Option<HashMap<String, Weak<Controller>>>> = Mutex::new(None);
/// (controller, nsid) pairs claimed by `lock_exclusive`.
static CLAIMED: Mutex<Option<HashSet<(String, u32)>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open (or share) the controller at `bdf` through VFIO.
pub fn open_controller(bdf: &str, opts: NvmeOptions) -> Result<Arc<Controller>, DevError> {
    let mut reg = lock(&CONTROLLERS);
    let map = reg.get_or_insert_with(HashMap::new);
    if let Some(c) = map.get(bdf).and_then(Weak::upgrade) {
        return Ok(c);
    }
    let t = vfio::VfioTransport::open(bdf).map_err(|msg| DevError::Open {
        path: format!("{}{bdf}", NvmeAddr::SCHEME),
        msg,
    })?;
    let c = Arc::new(Controller::open(bdf.to_string(), Box::new(t), opts)?);
    map.retain(|_, w| w.strong_count() > 0);
    map.insert(bdf.to_string(), Arc::downgrade(&c));
    Ok(c)
}

/// One namespace of an NVMe controller driven from userspace.
#[derive(Debug)]
pub struct NvmeDev {
    ctrl: Arc<Controller>,
    nsid: u32,
    ns: IdentifyNamespace,
    geom: Geometry,
    name: String,
    claimed: Mutex<bool>,
}

impl NvmeDev {
    /// Open `nvme://BDF/NSID` with default options.
    pub fn open(addr: &str) -> Result<NvmeDev, DevError> {
        Self::open_with(addr, NvmeOptions::default())
    }

    pub fn open_with(addr: &str, opts: NvmeOptions) -> Result<NvmeDev, DevError> {
        let a = NvmeAddr::parse(addr)?;
        let ctrl = open_controller(&a.bdf, opts)?;
        Self::on_controller(ctrl, a.nsid, a.to_string())
    }

    /// Namespace `nsid` of an already open controller (e.g. a simulated
    /// one: `Controller::open(name, sim.transport(), opts)`).
    pub fn on_controller(
        ctrl: Arc<Controller>,
        nsid: u32,
        name: String,
    ) -> Result<NvmeDev, DevError> {
        let open_err = |msg: String| DevError::Open {
            path: name.clone(),
            msg,
        };
        let id = ctrl
            .identify(admin::CNS_NAMESPACE, nsid)
            .map_err(|e| open_err(e.to_string()))?;
        let ns = IdentifyNamespace::parse(&id);
        if let Some(why) = ns.unsupported() {
            return Err(open_err(why));
        }
        let capacity_bytes = ns
            .size_blocks
            .checked_mul(ns.block_size())
            .ok_or_else(|| open_err("namespace size overflows".into()))?;
        let discard = match (ctrl.identity().supports_dsm(), ns.deallocated_reads_zero()) {
            (false, _) => Discard::Unsupported,
            (true, true) => Discard::Zeroes,
            (true, false) => Discard::Undefined,
        };
        let geom = Geometry {
            logical_block_size: ns.block_size() as u32,
            capacity_bytes,
            max_transfer_bytes: queue::MAX_REQUEST_BYTES,
            discard,
        };
        Ok(NvmeDev {
            ctrl,
            nsid,
            ns,
            geom,
            name,
            claimed: Mutex::new(false),
        })
    }

    /// A simulated controller's namespace, for tests.
    pub fn simulated(sim: &SimNvme, nsid: u32, opts: NvmeOptions) -> Result<NvmeDev, DevError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ctrl = Arc::new(Controller::open(format!("sim{n}"), sim.transport(), opts)?);
        Self::on_controller(ctrl, nsid, format!("nvme-sim/{nsid}"))
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctrl
    }

    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    /// Open a queue pair and keep its concrete type (for statistics).
    pub fn open_nvme_queue(&self, cfg: &QueueConfig) -> Result<NvmeQueue, DevError> {
        NvmeQueue::open(self.ctrl.clone(), self.nsid, self.ns.lba_shift, cfg)
    }
}

impl BlockDev for NvmeDev {
    fn geometry(&self) -> Geometry {
        self.geom
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn open_queue_backend(&self, cfg: &QueueConfig) -> Result<Box<dyn QueueBackend>, DevError> {
        Ok(Box::new(self.open_nvme_queue(cfg)?))
    }

    fn lock_exclusive(&self) -> Result<(), DevError> {
        // Another process can't open the controller at all (the kernel
        // lets one process hold a VFIO group); within this process, one
        // handle per namespace.
        let mut mine = lock(&self.claimed);
        if *mine {
            return Ok(());
        }
        let mut set = lock(&CLAIMED);
        let key = (self.ctrl.name().to_string(), self.nsid);
        if !set.get_or_insert_with(HashSet::new).insert(key) {
            return Err(DevError::Busy(self.name()));
        }
        *mine = true;
        Ok(())
    }
}

impl Drop for NvmeDev {
    fn drop(&mut self) {
        if *lock(&self.claimed) {
            if let Some(set) = lock(&CLAIMED).as_mut() {
                set.remove(&(self.ctrl.name().to_string(), self.nsid));
            }
        }
    }
}

#[cfg(test)]
mod tests;
