//! What the lock tests share: running on a reactor, yielding, a model of
//! who holds what that checks compatibility, random lock sets, the FIFO
//! check of a table's name events.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::format::Key;
use crate::reactor::{yield_now, CorePin, Local, Reactor, ReactorConfig};
use crate::util::rng::SimRng;

use super::super::table::NameEvent;
use super::super::{
    IndexKind, Invalidation, Invalidator, LocalBoxFuture, LockError, LockMode, LockName, LockSet,
    LockTable,
};

/// Property test cases: `default`, or `PROPTEST_CASES` for a soak.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `f` on a fresh reactor thread and return its result.
pub(crate) fn on_reactor<T, Fut, F>(f: F) -> T
where
    F: FnOnce(&Local) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let cfg = ReactorConfig {
        name: "lock-test".into(),
        pin: CorePin::None,
        ..ReactorConfig::default()
    };
    let r = Reactor::start(cfg, |_| Ok(())).expect("reactor starts");
    let out = r.remote().call(f).expect("reactor runs the test");
    r.shutdown();
    out
}

pub(crate) async fn yields(n: u64) {
    for _ in 0..n {
        yield_now().await;
    }
}

/// Poll `fut` once and drop it: an acquisition abandoned part way.
pub(crate) async fn poll_once_then_drop<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        Poll::Ready(match fut.as_mut().poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

/// Wait until `done()` or `limit` passes; false on timeout.
pub(crate) async fn wait_until(local: &Local, limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        local.sleep(Duration::from_micros(200)).await;
    }
    true
}

/// An invalidator that records what it was asked, taking `delay` yields.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) seen: RefCell<Vec<Invalidation>>,
    pub(crate) delay: u64,
}

impl Invalidator for Recorder {
    fn invalidate<'a>(
        &'a self,
        inv: &'a Invalidation,
    ) -> LocalBoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move {
            yields(self.delay).await;
            self.seen.borrow_mut().push(*inv);
            Ok(())
        })
    }
}

/// Who holds what, checked at every acquisition: on each node, the
/// holders of a name are compatible; across nodes, the users of a
/// cluster lock are.
#[derive(Debug, Default)]
pub(crate) struct Model {
    /// (node, name) -> (task, mode)
    names: HashMap<(usize, LockName), Vec<(usize, LockMode)>>,
    /// cluster key -> (node, task, mode)
    clusters: HashMap<Key, Vec<(usize, usize, LockMode)>>,
    pub(crate) violations: Vec<String>,
    pub(crate) acquisitions: u64,
}

/// The cluster uses a guard holding `names` makes: per cluster lock, the
/// join of its names' modes.
pub(crate) fn cluster_uses(names: &[(LockName, LockMode)]) -> Vec<(Key, LockMode)> {
    let mut out: Vec<(Key, LockMode)> = Vec::new();
    for (n, m) in names {
        match out.last_mut() {
            Some((k, cm)) if *k == n.cluster_key() => *cm = cm.join(*m),
            _ => out.push((n.cluster_key(), *m)),
        }
    }
    out
}

impl Model {
    pub(crate) fn enter(&mut self, node: usize, task: usize, names: &[(LockName, LockMode)]) {
        self.acquisitions += 1;
        for &(name, mode) in names {
            let v = self.names.entry((node, name)).or_default();
            for &(t, m) in v.iter() {
                if !m.compatible(mode) {
                    self.violations.push(format!(
                        "node {node}: task {task} got {name} {mode} while task {t} holds it {m}"
                    ));
                }
            }
            v.push((task, mode));
        }
        for (key, mode) in cluster_uses(names) {
            let v = self.clusters.entry(key).or_default();
            for &(n, t, m) in v.iter() {
                if n != node && !m.compatible(mode) {
                    self.violations.push(format!(
                        "lock {key}: node {node} task {task} uses it {mode} while node {n} task {t} uses it {m}"
                    ));
                }
            }
            v.push((node, task, mode));
        }
    }

    pub(crate) fn leave(&mut self, node: usize, task: usize, names: &[(LockName, LockMode)]) {
        for &(name, _) in names {
            if let Some(v) = self.names.get_mut(&(node, name)) {
                let i = v.iter().position(|(t, _)| *t == task).expect("held");
                v.remove(i);
            }
        }
        for (key, _) in cluster_uses(names) {
            if let Some(v) = self.clusters.get_mut(&key) {
                let i = v
                    .iter()
                    .position(|(n, t, _)| *n == node && *t == task)
                    .expect("used");
                v.remove(i);
            }
        }
    }
}

pub(crate) type SharedModel = Rc<RefCell<Model>>;

/// The names the random tests draw from: two inode groups, the rename
/// lock, and zones taken read, write or write-only.
const UNIVERSE: [LockName; 10] = [
    LockName::Rename,
    LockName::Inode(1),
    LockName::Inode(2),
    LockName::Inode(3),
    LockName::Inode(1024),
    LockName::Inode(1025),
    LockName::InodeIndex {
        kind: IndexKind::MetaSeq,
        seq: 0,
    },
    LockName::Orphan,
    LockName::XattrTotl,
    LockName::XattrIndx,
];

pub(crate) fn random_mode(rng: &mut SimRng, name: &LockName) -> LockMode {
    match name {
        LockName::Inode(_) | LockName::Rename => {
            if rng.chance(1, 2) {
                LockMode::Read
            } else {
                LockMode::Write
            }
        }
        _ => match rng.below(4) {
            0 => LockMode::Read,
            1 => LockMode::Write,
            _ => LockMode::WriteOnly,
        },
    }
}

/// A random set of 1..=4 names (repeats allowed: the set merges them).
pub(crate) fn random_set(rng: &mut SimRng) -> LockSet {
    let mut set = LockSet::new();
    for _ in 0..=rng.below(4) {
        let name = UNIVERSE[rng.below(UNIVERSE.len() as u64) as usize];
        let mode = random_mode(rng, &name);
        set.push(name, mode);
    }
    set
}

/// A random set that may follow `held` in a `lock_more`: names after the
/// last held and in another cluster lock. Empty if there are none.
pub(crate) fn random_more(rng: &mut SimRng, held: &[(LockName, LockMode)]) -> LockSet {
    let Some((last, _)) = held.last() else {
        return LockSet::new();
    };
    let later: Vec<LockName> = UNIVERSE
        .iter()
        .filter(|n| *n > last && n.cluster_key() != last.cluster_key())
        .copied()
        .collect();
    let mut set = LockSet::new();
    if !later.is_empty() {
        let name = later[rng.below(later.len() as u64) as usize];
        let mode = random_mode(rng, &name);
        set.push(name, mode);
    }
    set
}

/// Per name, the order tasks were let in must be the order they queued
/// (those that left the queue early excepted).
pub(crate) fn check_fifo(table: &LockTable) -> Result<(), String> {
    let mut queued: HashMap<LockName, Vec<u64>> = HashMap::new();
    let mut admitted: HashMap<LockName, Vec<u64>> = HashMap::new();
    for e in table.take_events() {
        match e {
            NameEvent::Queued(n, id) => queued.entry(n).or_default().push(id),
            NameEvent::Admitted(n, id) => admitted.entry(n).or_default().push(id),
        }
    }
    for (name, a) in admitted {
        let q: Vec<u64> = queued[&name]
            .iter()
            .filter(|id| a.contains(id))
            .copied()
            .collect();
        if q != a {
            return Err(format!("{name}: queued {q:?}, admitted {a:?}"));
        }
    }
    Ok(())
}
