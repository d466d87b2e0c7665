//! Every opener of a volume checks that its devices are what the volume
//! says (txn::devices): `Engine::start` and `Volume::attach_data_device`
//! refuse a data device that is blank, another volume's, the metadata
//! device, or shorter than the volume, with `TxnError::Device` (EINVAL)
//! and without writing to either device.

use std::sync::Arc;

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::format::DeviceKind;
use scoutfs_engine::reactor::{CorePin, ReactorConfig};
use scoutfs_engine::serve::{Engine, EngineError, EngineOptions};
use scoutfs_engine::txn::devices::DeviceProblem;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnError, TxnOptions, Volume};

const META: u64 = 32 << 20;
const DATA: u64 = 16 << 20;

fn volume(fsid: u64) -> (Arc<MemDev>, Arc<MemDev>) {
    let (m, d) = (Arc::new(MemDev::new(META)), Arc::new(MemDev::new(DATA)));
    let opts = MkfsOptions {
        fsid: Some(fsid),
        ..MkfsOptions::default()
    };
    mkfs(&*m, &*d, &opts).unwrap();
    (m, d)
}

fn opts() -> EngineOptions {
    EngineOptions {
        reactor: ReactorConfig {
            pin: CorePin::None,
            ..ReactorConfig::default()
        },
        ..EngineOptions::default()
    }
}

fn writes(devs: &[&Arc<MemDev>]) -> Vec<u64> {
    devs.iter().map(|d| d.stats().writes).collect()
}

/// The device problem an engine start was refused with.
fn refused(meta: Arc<MemDev>, data: Arc<MemDev>) -> (DeviceKind, DeviceProblem) {
    match Engine::start(meta as Arc<dyn BlockDev>, data as Arc<dyn BlockDev>, opts()) {
        Err(EngineError::Txn(e @ TxnError::Device { .. })) => {
            assert_eq!(e.errno(), libc::EINVAL);
            let TxnError::Device { role, problem, .. } = e else {
                unreachable!()
            };
            (role, problem)
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("started"),
    }
}

#[test]
fn engine_start_refuses_a_data_device_that_is_not_the_volumes() {
    let (m1, d1) = volume(1);
    let (m2, d2) = volume(2);
    let blank = Arc::new(MemDev::new(DATA));
    let before = writes(&[&m1, &d1, &m2, &d2, &blank]);

    let (role, p) = refused(m1.clone(), d2.clone());
    assert_eq!(role, DeviceKind::Data);
    assert!(
        matches!(
            p,
            DeviceProblem::OtherVolume {
                expected: 1,
                found: 2
            }
        ),
        "{p}"
    );
    let (role, p) = refused(m1.clone(), m1.clone());
    assert_eq!(role, DeviceKind::Data);
    assert!(
        matches!(
            p,
            DeviceProblem::WrongRole {
                expected: DeviceKind::Data,
                found: DeviceKind::Meta,
                fsid: 1
            }
        ),
        "{p}"
    );
    let (role, p) = refused(d1.clone(), m1.clone());
    assert_eq!(role, DeviceKind::Meta);
    assert!(matches!(p, DeviceProblem::WrongRole { .. }), "{p}");
    let (role, p) = refused(m1.clone(), blank.clone());
    assert_eq!(role, DeviceKind::Data);
    assert!(matches!(p, DeviceProblem::NotScoutfs), "{p}");
    let (role, p) = refused(blank.clone(), d1.clone());
    assert_eq!(role, DeviceKind::Meta);
    assert!(matches!(p, DeviceProblem::NotScoutfs), "{p}");

    assert_eq!(writes(&[&m1, &d1, &m2, &d2, &blank]), before);
    // The right pair still mounts.
    let e = Engine::start(m1 as Arc<dyn BlockDev>, d1 as Arc<dyn BlockDev>, opts()).unwrap();
    e.shutdown().unwrap();
}

#[test]
fn devices_shorter_than_the_volume_are_refused() {
    let (m, d) = volume(3);
    // The same bytes on devices half as large.
    let copy = |from: &MemDev, bytes: u64| {
        let to = Arc::new(MemDev::new(bytes));
        let mut buf = vec![0u8; 1 << 20];
        for off in (0..bytes).step_by(buf.len()) {
            from.read_at(off, &mut buf);
            to.write_at(off, &buf);
        }
        to
    };
    let short_data = copy(&d, DATA / 2);
    let (role, p) = refused(m.clone(), short_data);
    assert_eq!(role, DeviceKind::Data);
    assert!(
        matches!(
            p,
            DeviceProblem::Short {
                device_bytes,
                volume_bytes
            } if device_bytes == DATA / 2 && volume_bytes == DATA
        ),
        "{p}"
    );
    let short_meta = copy(&m, META / 2);
    let (role, p) = refused(short_meta, d.clone());
    assert_eq!(role, DeviceKind::Meta);
    assert!(matches!(p, DeviceProblem::Short { .. }), "{p}");
}

#[test]
fn attach_data_device_checks_the_device_for_every_opener() {
    let (m1, d1) = volume(4);
    let (_, d2) = volume(5);
    let mut vol = Volume::open(&*m1, TxnOptions::default()).unwrap();
    let e = vol.attach_data_device(&*d2).unwrap_err();
    assert!(
        matches!(
            e,
            TxnError::Device {
                role: DeviceKind::Data,
                problem: DeviceProblem::OtherVolume { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "data device mem: belongs to volume 0x0000000000000005, not to volume 0x0000000000000004"
            .replace("mem", &d2.name())
    );
    vol.attach_data_device(&*d1).unwrap();
}
