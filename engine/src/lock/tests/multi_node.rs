//! Several nodes, each with its own table, over one [`LockServer`] behind a
//! simulated network: per node and direction the messages keep their
//! order (as the original's protocol requires), but each waits a random
//! number of reactor turns and the nodes' messages interleave at random.
//! Each node caches one value per cluster lock, which writers change and
//! readers check, so a missed write-back or a cache kept past its lock
//! shows up as a stale read.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use proptest::prelude::*;

use crate::format::Key;
use crate::reactor::Local;
use crate::util::rng::SimRng;

use super::super::{
    ClientMsg, GrantSource, Invalidation, Invalidator, LocalBoxFuture, LockError, LockGuard,
    LockMode, LockName, LockServer, LockSet, LockTable, LockTableHandle, ServerMsg,
};
use super::harness::{
    cases, check_fifo, on_reactor, random_more, random_set, wait_until, yields, Model, SharedModel,
};

use LockMode::{Null, Read, Write};
use LockName::Inode;

#[derive(Default)]
struct Net {
    server: LockServer,
    up: Vec<VecDeque<ClientMsg>>,
    down: Vec<VecDeque<ServerMsg>>,
    tables: Vec<LockTableHandle>,
    waker: Option<Waker>,
    stop: bool,
    errors: Vec<String>,
}

impl Net {
    fn busy(&self) -> bool {
        self.up.iter().any(|q| !q.is_empty()) || self.down.iter().any(|q| !q.is_empty())
    }
}

struct SimSource {
    node: usize,
    net: Rc<RefCell<Net>>,
}

impl GrantSource for SimSource {
    fn send(&self, msg: ClientMsg) {
        let mut net = self.net.borrow_mut();
        net.up[self.node].push_back(msg);
        if let Some(w) = net.waker.take() {
            w.wake();
        }
    }
}

/// Deliver messages one at a time, each after up to `max_delay` turns,
/// from a random non-empty queue, until stopped and drained.
async fn run_net(net: Rc<RefCell<Net>>, mut rng: SimRng, max_delay: u64) {
    loop {
        let more = poll_fn(|cx| {
            let mut n = net.borrow_mut();
            if n.busy() {
                return Poll::Ready(true);
            }
            if n.stop {
                return Poll::Ready(false);
            }
            n.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if !more {
            return;
        }
        yields(rng.below(max_delay + 1)).await;
        let mut n = net.borrow_mut();
        let nodes = n.up.len();
        let ready: Vec<usize> = (0..2 * nodes)
            .filter(|&i| {
                if i < nodes {
                    !n.up[i].is_empty()
                } else {
                    !n.down[i - nodes].is_empty()
                }
            })
            .collect();
        let pick = ready[rng.below(ready.len() as u64) as usize];
        if pick < nodes {
            let msg = n.up[pick].pop_front().expect("non-empty");
            match n.server.receive(pick as u64, msg) {
                Ok(out) => {
                    for (rid, m) in out {
                        n.down[rid as usize].push_back(m);
                    }
                }
                Err(e) => n.errors.push(format!("server: {e}")),
            }
        } else {
            let node = pick - nodes;
            let msg = n.down[node].pop_front().expect("non-empty");
            let table = n.tables[node].clone();
            drop(n);
            table.deliver(msg);
        }
    }
}

/// The shared "device" and each node's cache: one value per cluster lock.
#[derive(Debug, Default)]
struct Store {
    disk: HashMap<Key, u64>,
    /// What every reader must see: the count of writes so far.
    truth: HashMap<Key, u64>,
    /// Per node: key -> (value, dirty).
    caches: Vec<HashMap<Key, (u64, bool)>>,
    violations: Vec<String>,
    reads: u64,
    writes: u64,
}

impl Store {
    /// What a task holding `names` on `node` does: read each readable
    /// lock's value (from its cache, else from disk into its cache) and
    /// check it is the latest; bump it under a write.
    fn work(&mut self, node: usize, names: &[(LockName, LockMode)]) {
        for &(name, mode) in names {
            if !mode.can_read() {
                continue;
            }
            let key = name.cluster_key();
            let disk = self.disk.get(&key).copied().unwrap_or(0);
            let cached = *self.caches[node].entry(key).or_insert((disk, false));
            let truth = self.truth.get(&key).copied().unwrap_or(0);
            self.reads += 1;
            if cached.0 != truth {
                self.violations.push(format!(
                    "node {node} read {name} as {} under {mode}, latest is {truth}",
                    cached.0
                ));
            }
            if mode == Write {
                self.writes += 1;
                self.caches[node].insert(key, (truth + 1, true));
                self.truth.insert(key, truth + 1);
            }
        }
    }
}

/// A node's invalidator over its cache in the [`Store`].
struct CacheInvalidator {
    node: usize,
    store: Rc<RefCell<Store>>,
    delay: u64,
}

impl Invalidator for CacheInvalidator {
    fn invalidate<'a>(
        &'a self,
        inv: &'a Invalidation,
    ) -> LocalBoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move {
            yields(self.delay).await;
            let mut s = self.store.borrow_mut();
            let key = inv.range.start;
            if let Some(&(v, dirty)) = s.caches[self.node].get(&key) {
                if dirty {
                    if !inv.must_write_back() {
                        s.violations.push(format!(
                            "node {}: dirty {} but told not to write back: {inv:?}",
                            self.node, inv.range
                        ));
                    }
                    s.disk.insert(key, v);
                    s.caches[self.node].insert(key, (v, false));
                }
            }
            if inv.must_drop() {
                s.caches[self.node].remove(&key);
            }
            Ok(())
        })
    }
}

struct Cluster {
    net: Rc<RefCell<Net>>,
    tables: Vec<LockTable>,
    store: Rc<RefCell<Store>>,
    workers: Vec<crate::reactor::JoinHandle<()>>,
    net_task: crate::reactor::JoinHandle<()>,
}

impl Cluster {
    fn new(local: &Local, nodes: usize, rng: &mut SimRng, max_delay: u64) -> Cluster {
        let net = Rc::new(RefCell::new(Net::default()));
        let store = Rc::new(RefCell::new(Store::default()));
        let mut tables = Vec::new();
        let mut workers = Vec::new();
        for node in 0..nodes {
            let source = Rc::new(SimSource {
                node,
                net: net.clone(),
            });
            let inval = Rc::new(CacheInvalidator {
                node,
                store: store.clone(),
                delay: rng.below(4),
            });
            let t = LockTable::new(source, inval);
            {
                let mut n = net.borrow_mut();
                n.up.push(VecDeque::new());
                n.down.push(VecDeque::new());
                n.tables.push(t.handle());
            }
            store.borrow_mut().caches.push(HashMap::new());
            let t2 = t.clone();
            workers.push(local.spawn(async move { t2.run_invalidations().await }));
            tables.push(t);
        }
        let net_task = local.spawn(run_net(net.clone(), SimRng::new(rng.next_u64()), max_delay));
        Cluster {
            net,
            tables,
            store,
            workers,
            net_task,
        }
    }

    /// Nothing in flight: the network empty, no invalidation queued.
    fn quiet(&self) -> bool {
        !self.net.borrow().busy()
            && self.tables.iter().all(|t| {
                t.inner
                    .st
                    .borrow()
                    .clusters
                    .values()
                    .all(|c| c.invalidations.is_empty())
            })
    }

    /// Every node's view of its grants matches the server's.
    fn check_grants_agree(&self) -> Result<(), String> {
        let net = self.net.borrow();
        for (node, t) in self.tables.iter().enumerate() {
            for (key, c) in t.inner.st.borrow().clusters.iter() {
                let server: Vec<LockMode> = net
                    .server
                    .granted(key)
                    .into_iter()
                    .filter(|(rid, _)| *rid == node as u64)
                    .map(|(_, m)| m)
                    .collect();
                let expect = if c.mode == Null { vec![] } else { vec![c.mode] };
                if server != expect {
                    return Err(format!(
                        "node {node} lock {key}: {} here, {server:?} at the server",
                        c.mode
                    ));
                }
            }
        }
        Ok(())
    }

    async fn stop(self) -> (Vec<LockTable>, Rc<RefCell<Store>>, Vec<String>) {
        for t in &self.tables {
            t.shutdown();
        }
        for w in self.workers {
            w.await;
        }
        {
            let mut n = self.net.borrow_mut();
            n.stop = true;
            if let Some(w) = n.waker.take() {
                w.wake();
            }
        }
        self.net_task.await;
        let errors = self.net.borrow().errors.clone();
        (self.tables, self.store, errors)
    }
}

async fn hold(
    model: &SharedModel,
    store: &Rc<RefCell<Store>>,
    node: usize,
    task: usize,
    g: &LockGuard,
) {
    model.borrow_mut().enter(node, task, g.names());
    store.borrow_mut().work(node, g.names());
}

#[test]
fn a_writer_on_one_node_is_written_back_before_another_node_reads() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let mut rng = SimRng::new(7);
            let c = Cluster::new(&local, 2, &mut rng, 3);
            let (a, b) = (c.tables[0].clone(), c.tables[1].clone());
            let key = Inode(5).cluster_key();

            let g = a.lock(Inode(5), Write).await.unwrap();
            c.store.borrow_mut().work(0, g.names());
            drop(g);
            assert_eq!(c.store.borrow().caches[0][&key], (1, true));

            // b reads another inode of the group: a is invalidated to read,
            // writes back, keeps its (now clean) cache.
            let g = b.lock(Inode(6), Read).await.unwrap();
            c.store.borrow_mut().work(1, g.names());
            assert_eq!(a.granted(&Inode(5)), Read);
            assert_eq!(c.store.borrow().disk[&key], 1);
            assert_eq!(c.store.borrow().caches[0][&key], (1, false));
            assert!(g.info(&Inode(6)).unwrap().refresh_gen > 0);
            drop(g);

            // a writes again: b's read goes to null (cache dropped), a's
            // read upgrades in place.
            let before = a.stats().invalidations;
            let g = a.lock(Inode(7), Write).await.unwrap();
            c.store.borrow_mut().work(0, g.names());
            assert_eq!(
                a.stats().invalidations,
                before,
                "a's own read upgraded in place"
            );
            assert!(wait_until(&local, Duration::from_secs(5), || c.quiet()).await);
            assert_eq!(b.granted(&Inode(5)), Null);
            assert!(!c.store.borrow().caches[1].contains_key(&key));
            assert!(g.info(&Inode(7)).unwrap().write_seq > 1);
            drop(g);
            let g = b.lock(Inode(5), Read).await.unwrap();
            c.store.borrow_mut().work(1, g.names());
            drop(g);
            assert!(wait_until(&local, Duration::from_secs(5), || c.quiet()).await);
            c.check_grants_agree().unwrap();
            let (_, store, errors) = c.stop().await;
            assert!(errors.is_empty(), "{errors:?}");
            assert!(
                store.borrow().violations.is_empty(),
                "{:?}",
                store.borrow().violations
            );
        }
    });
}

#[test]
fn an_invalidation_waits_for_the_users_and_new_users_wait_for_it() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let mut rng = SimRng::new(9);
            let c = Cluster::new(&local, 2, &mut rng, 1);
            let (a, b) = (c.tables[0].clone(), c.tables[1].clone());
            let g = a.lock(Inode(1), Read).await.unwrap();
            let b2 = b.clone();
            let writer = local.spawn(async move { b2.lock(Inode(2), Write).await.unwrap() });
            assert!(
                wait_until(&local, Duration::from_secs(5), || {
                    a.inner
                        .st
                        .borrow()
                        .clusters
                        .values()
                        .any(|c| !c.invalidations.is_empty())
                })
                .await
            );
            // a's next reader of the group waits: the invalidation is first.
            let a2 = a.clone();
            let reader = local.spawn(async move { a2.lock(Inode(3), Read).await.unwrap() });
            yields(20).await;
            assert!(!writer.is_finished() && !reader.is_finished());
            drop(g);
            let w = writer.await;
            yields(10).await;
            assert!(!reader.is_finished(), "b's writer holds the group");
            drop(w);
            drop(reader.await);
            assert!(wait_until(&local, Duration::from_secs(5), || c.quiet()).await);
            c.check_grants_agree().unwrap();
            let (_, _, errors) = c.stop().await;
            assert!(errors.is_empty(), "{errors:?}");
        }
    });
}

/// Random tasks on several nodes.
async fn random_tasks_on_nodes(
    local: Local,
    seed: u64,
    nodes: usize,
    tasks: usize,
    rounds: u64,
    max_delay: u64,
) -> Result<String, String> {
    let mut rng = SimRng::new(seed);
    let c = Cluster::new(&local, nodes, &mut rng, max_delay);
    let model: SharedModel = Rc::new(RefCell::new(Model::default()));
    let done = Rc::new(Cell::new(0usize));
    let errors = Rc::new(RefCell::new(Vec::<String>::new()));
    for node in 0..nodes {
        for task in 0..tasks {
            let t = c.tables[node].clone();
            let (model, store, done, errors) =
                (model.clone(), c.store.clone(), done.clone(), errors.clone());
            let mut rng = SimRng::new(rng.next_u64());
            local.spawn(async move {
                for _ in 0..rounds {
                    if rng.chance(1, 10) {
                        t.shrink_unused(rng.below(3) as usize);
                    }
                    let set: LockSet = random_set(&mut rng);
                    let mut g = match t.lock_set(set).await {
                        Ok(g) => g,
                        Err(e) => {
                            errors
                                .borrow_mut()
                                .push(format!("node {node} task {task}: {e}"));
                            break;
                        }
                    };
                    hold(&model, &store, node, task, &g).await;
                    if let Err(e) = t.check_invariants() {
                        errors.borrow_mut().push(e);
                    }
                    yields(rng.below(5)).await;
                    if rng.chance(1, 3) {
                        let more = random_more(&mut rng, g.names());
                        model.borrow_mut().leave(node, task, g.names());
                        if let Err(e) = g.lock_more(more).await {
                            errors.borrow_mut().push(format!("lock_more: {e}"));
                        }
                        hold(&model, &store, node, task, &g).await;
                        yields(rng.below(5)).await;
                    }
                    model.borrow_mut().leave(node, task, g.names());
                    drop(g);
                    yields(rng.below(3)).await;
                }
                done.set(done.get() + 1);
            });
        }
    }
    let all = nodes * tasks;
    let finished = wait_until(&local, Duration::from_secs(30), || done.get() == all).await;
    let quiet = finished && wait_until(&local, Duration::from_secs(5), || c.quiet()).await;
    let mut problems = errors.borrow().clone();
    if !finished || !quiet {
        let dumps: Vec<String> = c
            .tables
            .iter()
            .map(|t| format!("{:?}", t.inner.st.borrow()))
            .collect();
        problems.push(format!(
            "{} of {all} tasks finished, quiet {quiet}: {dumps:#?}",
            done.get()
        ));
    } else if let Err(e) = c.check_grants_agree() {
        problems.push(e);
    }
    let stats: Vec<_> = c.tables.iter().map(|t| t.stats()).collect();
    for (node, s) in stats.iter().enumerate() {
        if s.protocol_errors != 0 || s.invalidate_errors != 0 {
            problems.push(format!("node {node}: {s:?}"));
        }
    }
    let (tables, store, net_errors) = c.stop().await;
    problems.extend(net_errors);
    problems.extend(model.borrow().violations.iter().cloned());
    problems.extend(store.borrow().violations.iter().cloned());
    for t in &tables {
        if let Err(e) = check_fifo(t) {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        let s = store.borrow();
        Ok(format!("{} reads, {} writes, {stats:?}", s.reads, s.writes))
    } else {
        Err(problems.join("\n"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]

    #[test]
    fn random_sets_on_several_nodes_never_conflict_read_the_latest_and_all_finish(
        seed in any::<u64>(),
        nodes in 2usize..4,
        tasks in 1usize..5,
        rounds in 1u64..12,
        max_delay in 0u64..4,
    ) {
        let r = on_reactor(move |local| {
            random_tasks_on_nodes(local.clone(), seed, nodes, tasks, rounds, max_delay)
        });
        if let Ok(s) = &r { if std::env::var("LOCK_TEST_VERBOSE").is_ok() { eprintln!("{s}"); } }
        prop_assert!(r.is_ok(), "seed {}: {}", seed, r.unwrap_err());
    }
}
