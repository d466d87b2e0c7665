//! Time comes through the reactor's clock: an engine on a simulated clock
//! stamps changes with the simulated wall time and commits an aged
//! transaction only when simulated time says it is old enough, however
//! much real time passes. (What a deterministic multi-node simulation
//! needs: several engines in one process, time moved by the test.)

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::format::inode::ROOT_INO;
use scoutfs_engine::fs::Creds;
use scoutfs_engine::reactor::{CorePin, ReactorConfig, SimClock};
use scoutfs_engine::serve::{Engine, EngineOptions};
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::TxnOptions;
use scoutfs_engine::util::ready;

/// 2000-01-01T00:00:00Z.
const Y2K: u64 = 946_684_800;

#[test]
fn an_engine_on_a_sim_clock_stamps_and_ages_by_it() {
    let clock = SimClock::new(UNIX_EPOCH + Duration::from_secs(Y2K)).leak();
    let (meta, data) = (MemDev::new(64 << 20), MemDev::new(64 << 20));
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let (m, d): (Arc<dyn BlockDev>, Arc<dyn BlockDev>) = (Arc::new(meta), Arc::new(data));
    let opts = EngineOptions {
        reactor: ReactorConfig {
            pin: CorePin::None,
            clock,
            ..ReactorConfig::default()
        },
        txn: TxnOptions {
            commit_age: Duration::from_secs(5),
            ..TxnOptions::default()
        },
        ..EngineOptions::default()
    };
    let e = Engine::start(m, d, opts).unwrap();
    let create = |name: &'static [u8]| {
        e.run(move |fs| ready(fs.create(&Creds::root(), ROOT_INO, name, 0o644)))
            .unwrap()
            .unwrap()
    };
    let a = create(b"a");
    assert_eq!(a.mtime.sec.get(), Y2K as i64);
    assert_eq!(a.mtime.nsec.get(), 0);
    let commits = || e.commit_stats().unwrap().commits;
    // Real time passes; simulated time doesn't: the transaction isn't old.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(commits(), 0);
    clock.advance(Duration::from_secs(6));
    // Now it is: the quiet-commit task's timer is due at the reactor's
    // next look, and the commit takes a few of its turns. Each stats call
    // is a turn; bounded so that a commit that never comes fails rather
    // than hangs.
    let turns = (0..100_000).find(|_| commits() > 0);
    assert!(turns.is_some(), "no commit after the clock moved");
    let b = create(b"b");
    assert_eq!(b.mtime.sec.get(), Y2K as i64 + 6);
    e.shutdown().unwrap();
}
