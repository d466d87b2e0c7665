//! One node: its table over the local server, and over a hand-driven
//! server (a `Sink` source) for the seam's corner cases.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use proptest::prelude::*;

use crate::format::key::zone;
use crate::format::Key;
use crate::reactor::Local;
use crate::util::rng::SimRng;

use super::super::{
    ClientMsg, GrantSource, Invalidation, LockError, LockMode, LockName, LockSet, LockTable,
    NetLock, NoCache, ServerMsg,
};
use super::harness::{
    cases, check_fifo, on_reactor, poll_once_then_drop, random_more, random_set, wait_until,
    yields, Model, Recorder,
};

use LockMode::{Read, Write, WriteOnly};
use LockName::Inode;

fn spawn_worker(local: &Local, t: &LockTable) -> crate::reactor::JoinHandle<()> {
    let t = t.clone();
    local.spawn(async move { t.run_invalidations().await })
}

fn idle(t: &LockTable) -> bool {
    let st = t.inner.st.borrow();
    st.names.is_empty()
        && st
            .clusters
            .values()
            .all(|c| c.users.iter().all(|&n| n == 0))
}

#[test]
fn a_writer_waits_for_readers_and_later_readers_wait_behind_it() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let t = LockTable::new_local(1, Rc::new(NoCache));
            let worker = spawn_worker(&local, &t);
            let r1 = t.lock(Inode(5), Read).await.unwrap();
            let r2 = t.lock(Inode(5), Read).await.unwrap();
            let order = Rc::new(RefCell::new(Vec::new()));
            let (t2, o) = (t.clone(), order.clone());
            let w = local.spawn(async move {
                let g = t2.lock(Inode(5), Write).await.unwrap();
                o.borrow_mut().push("write");
                yields(3).await;
                drop(g);
            });
            yields(2).await;
            let (t3, o) = (t.clone(), order.clone());
            let r3 = local.spawn(async move {
                let _g = t3.lock(Inode(5), Read).await.unwrap();
                o.borrow_mut().push("read");
            });
            yields(5).await;
            assert!(
                order.borrow().is_empty(),
                "the reader may not pass the writer"
            );
            drop(r1);
            yields(3).await;
            assert!(order.borrow().is_empty());
            drop(r2);
            w.await;
            r3.await;
            assert_eq!(*order.borrow(), vec!["write", "read"]);
            assert!(t.stats().name_waits >= 2);
            check_fifo(&t).unwrap();
            assert!(idle(&t));
            t.shutdown();
            worker.await;
        }
    });
}

#[test]
fn inodes_of_one_group_share_the_node_s_grant_but_not_their_names() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let t = LockTable::new_local(1, Rc::new(NoCache));
            let worker = spawn_worker(&local, &t);
            let a = t.lock(Inode(5), Write).await.unwrap();
            let b = t.lock(Inode(6), Write).await.unwrap();
            let c = t.lock(Inode(1023), Read).await.unwrap();
            assert_eq!(t.stats().requests, 1, "one grant for the group");
            assert_eq!(t.granted(&Inode(900)), Write);
            assert_eq!(t.granted(&Inode(1024)), LockMode::Null);
            let info = a.info(&Inode(5)).unwrap();
            assert_eq!(info.range, Inode(0).range());
            assert_eq!(info.granted, Write);
            assert_eq!(info.write_seq, 1);
            assert!(info.refresh_gen > 0);
            assert_eq!(t.stats().name_waits, 0);
            drop((a, b, c));
            t.check_invariants().unwrap();
            t.shutdown();
            worker.await;
        }
    });
}

#[test]
fn a_read_grant_upgrades_in_place_and_write_only_to_write_invalidates_the_node_itself() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let rec = Rc::new(Recorder {
                delay: 2,
                ..Recorder::default()
            });
            let t = LockTable::new_local(1, rec.clone());
            let worker = spawn_worker(&local, &t);
            drop(t.lock(Inode(1), Read).await.unwrap());
            drop(t.lock(Inode(1), Write).await.unwrap());
            assert_eq!(t.stats().requests, 2);
            assert!(
                rec.seen.borrow().is_empty(),
                "read to write needs no invalidation"
            );

            drop(t.lock(LockName::Orphan, WriteOnly).await.unwrap());
            let g = t.lock(LockName::Orphan, Write).await.unwrap();
            assert_eq!(
                *rec.seen.borrow(),
                vec![Invalidation {
                    range: LockName::Orphan.range(),
                    old_mode: WriteOnly,
                    new_mode: LockMode::Null,
                    wrote: true,
                }]
            );
            assert!(rec.seen.borrow()[0].must_write_back() && rec.seen.borrow()[0].must_drop());
            assert_eq!(t.granted(&LockName::Orphan), Write);
            drop(g);
            // A write grant covers readers: no new request.
            let before = t.stats().requests;
            drop(t.lock(LockName::Orphan, Read).await.unwrap());
            assert_eq!(t.stats().requests, before);
            t.shutdown();
            worker.await;
        }
    });
}

#[test]
fn lock_more_takes_only_what_sorts_after_and_unlock_gives_back() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let t = LockTable::new_local(1, Rc::new(NoCache));
            let worker = spawn_worker(&local, &t);
            let mut g = t
                .lock_set(LockSet::new().write(Inode(5)).write(LockName::Rename))
                .await
                .unwrap();
            assert_eq!(g.names(), &[(LockName::Rename, Write), (Inode(5), Write)]);
            for bad in [Inode(3), Inode(6), LockName::Rename] {
                let e = g.lock_more(LockSet::new().read(bad)).await.unwrap_err();
                assert!(matches!(e, LockError::Order { .. }), "{bad}: {e}");
            }
            g.lock_more(
                LockSet::new()
                    .read(Inode(2000))
                    .write_only(LockName::Orphan),
            )
            .await
            .unwrap();
            // Index names come last: taken once the inodes are locked...
            let meta = |seq| LockName::index(crate::lock::IndexKind::MetaSeq, seq);
            g.lock_more(LockSet::new().write_only(meta(7)).write_only(meta(5000)))
                .await
                .unwrap();
            assert!(g
                .lock_more(LockSet::new().write_only(LockName::XattrTotl))
                .await
                .is_err());
            // ...and taken again for a new transaction seq.
            assert!(g.unlock(&meta(5000)));
            assert!(!g.unlock(&meta(5000)));
            assert!(g.unlock(&meta(7)));
            g.lock_more(LockSet::new().write_only(meta(9000)))
                .await
                .unwrap();
            assert_eq!(g.mode(&meta(9000)), Some(WriteOnly));
            assert_eq!(g.mode(&meta(7)), None);
            assert_eq!(g.mode(&LockName::Orphan), Some(WriteOnly));
            assert!(g.unlock(&LockName::Orphan));
            drop(g);
            assert!(idle(&t));
            t.shutdown();
            worker.await;
        }
    });
}

#[test]
fn a_guard_protects_the_keys_of_its_names_in_their_modes() {
    on_reactor(|_| async move {
        let t = LockTable::new_local(1, Rc::new(NoCache));
        let g = t
            .lock_set(
                LockSet::new()
                    .write(Inode(5))
                    .read(Inode(6))
                    .write_only(LockName::Orphan),
            )
            .await
            .unwrap();
        assert!(g.protects(&Key::inode(5), Write));
        assert!(g.protects(&Key::inode(5), Read));
        assert!(g.protects(&Key::inode(6), Read));
        assert!(!g.protects(&Key::inode(6), Write));
        assert!(
            !g.protects(&Key::inode(7), Read),
            "another inode of the group"
        );
        let orphan = Key::new(zone::ORPHAN, 1, 4, 5, 0, 0);
        assert!(g.protects(&orphan, WriteOnly));
        assert!(!g.protects(&orphan, Read), "write-only holders can't read");
        t.shutdown();
    });
}

#[test]
fn an_abandoned_acquisition_leaves_the_queue_and_the_next_goes_in() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let t = LockTable::new_local(1, Rc::new(NoCache));
            let worker = spawn_worker(&local, &t);
            let g = t.lock(Inode(5), Write).await.unwrap();
            assert!(poll_once_then_drop(t.lock(Inode(5), Write)).await.is_none());
            assert!(
                poll_once_then_drop(t.lock_set(LockSet::new().read(Inode(1)).write(Inode(5))))
                    .await
                    .is_none()
            );
            let got = Rc::new(Cell::new(false));
            let (t2, got2) = (t.clone(), got.clone());
            let r = local.spawn(async move {
                let _g = t2.lock(Inode(5), Read).await.unwrap();
                got2.set(true);
            });
            yields(3).await;
            assert!(!got.get());
            drop(g);
            r.await;
            assert!(got.get());
            check_fifo(&t).unwrap();
            assert!(idle(&t), "nothing left behind by the abandoned waits");
            t.shutdown();
            worker.await;
        }
    });
}

#[test]
fn shutdown_fails_waiting_and_new_acquisitions() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let t = LockTable::new_local(1, Rc::new(NoCache));
            let worker = spawn_worker(&local, &t);
            let g = t.lock(Inode(5), Write).await.unwrap();
            let t2 = t.clone();
            let waiter = local.spawn(async move { t2.lock(Inode(5), Read).await.map(|_| ()) });
            yields(2).await;
            t.shutdown();
            assert_eq!(waiter.await, Err(LockError::Shutdown));
            assert_eq!(
                t.lock(Inode(9), Read).await.unwrap_err(),
                LockError::Shutdown
            );
            worker.await;
            drop(g);
        }
    });
}

#[test]
fn unused_grants_beyond_a_count_are_given_back_least_recently_used_first() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let rec = Rc::new(Recorder::default());
            let t = LockTable::new_local(1, rec.clone());
            let worker = spawn_worker(&local, &t);
            for group in 0..5u64 {
                drop(t.lock(Inode(group * 1024), Write).await.unwrap());
            }
            // Group 0 used again: the most recent.
            let held = t.lock(Inode(1), Read).await.unwrap();
            drop(t.lock(Inode(0), Read).await.unwrap());
            assert_eq!(t.len(), 5);
            assert_eq!(t.shrink_unused(5), 0);
            // Group 0's read is still held: not a candidate.
            assert_eq!(t.shrink_unused(1), 3);
            assert!(wait_until(&local, Duration::from_secs(5), || t.len() == 2).await);
            let seen: Vec<_> = rec.seen.borrow().iter().map(|i| i.range).collect();
            assert_eq!(
                seen,
                vec![
                    Inode(1024).range(),
                    Inode(2048).range(),
                    Inode(3072).range()
                ]
            );
            assert!(rec
                .seen
                .borrow()
                .iter()
                .all(|i| i.must_write_back() && i.must_drop()));
            assert_eq!(t.granted(&Inode(4096)), Write);
            assert_eq!(t.granted(&Inode(1024)), LockMode::Null);
            drop(held);
            // A shrunk lock is simply asked for again.
            drop(t.lock(Inode(1024), Read).await.unwrap());
            assert_eq!(t.granted(&Inode(1024)), Read);
            assert_eq!(t.stats().shrinks, 3);
            t.check_invariants().unwrap();
            t.shutdown();
            worker.await;
        }
    });
}

/// A source that keeps what the table sends, for a test to answer by hand.
#[derive(Default)]
struct Sink(RefCell<Vec<ClientMsg>>);

impl GrantSource for Sink {
    fn send(&self, msg: ClientMsg) {
        self.0.borrow_mut().push(msg);
    }
}

fn nl(key: Key, old: LockMode, new: LockMode) -> NetLock {
    NetLock {
        key,
        write_seq: 0,
        old_mode: old,
        new_mode: new,
    }
}

#[test]
fn by_hand_the_table_waits_for_grants_reports_locks_for_recovery_and_answers_invalidations() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let sink = Rc::new(Sink::default());
            let rec = Rc::new(Recorder {
                delay: 5,
                ..Recorder::default()
            });
            let t = LockTable::new(sink.clone(), rec.clone());
            let worker = spawn_worker(&local, &t);
            let key = Inode(5).cluster_key();

            // An invalidation of a lock the node doesn't have is answered at once.
            let other = Inode(5000).cluster_key();
            t.deliver(ServerMsg::Invalidate(nl(other, Read, LockMode::Null)));
            assert_eq!(
                sink.0.borrow_mut().pop(),
                Some(ClientMsg::Invalidated(nl(other, Read, LockMode::Null)))
            );
            // A grant nobody asked for is counted and ignored.
            t.deliver(ServerMsg::Grant(nl(other, LockMode::Null, Write)));
            assert_eq!(t.stats().protocol_errors, 1);

            let t2 = t.clone();
            let reader = local.spawn(async move { t2.lock(Inode(5), Read).await.unwrap() });
            yields(3).await;
            assert_eq!(
                *sink.0.borrow(),
                vec![ClientMsg::Request(nl(key, LockMode::Null, Read))]
            );
            assert!(!reader.is_finished(), "no grant yet");
            // Another reader doesn't send a second request.
            let t3 = t.clone();
            let reader2 = local.spawn(async move { t3.lock(Inode(6), Read).await.unwrap() });
            yields(3).await;
            assert_eq!(sink.0.borrow().len(), 1);
            sink.0.borrow_mut().clear();
            t.deliver(ServerMsg::Grant(nl(key, LockMode::Null, Read)));
            let g = reader.await;
            let g2 = reader2.await;
            assert_eq!(t.recover_locks(&Key::MIN, 10), vec![nl(key, Read, Read)]);

            // Invalidated while in use: waits for the users, then runs the
            // invalidator; recovery meanwhile reports the old mode.
            t.deliver(ServerMsg::Invalidate(nl(key, Read, LockMode::Null)));
            yields(3).await;
            assert!(rec.seen.borrow().is_empty());
            // A new reader may not start while the invalidation waits.
            let t4 = t.clone();
            let reader3 = local.spawn(async move { t4.lock(Inode(7), Read).await.unwrap() });
            yields(3).await;
            assert!(!reader3.is_finished());
            drop(g);
            yields(3).await;
            assert!(rec.seen.borrow().is_empty());
            drop(g2);
            yields(2).await;
            assert_eq!(t.recover_locks(&Key::MIN, 10), vec![nl(key, Read, Read)]);
            assert!(
                wait_until(&local, Duration::from_secs(5), || !rec
                    .seen
                    .borrow()
                    .is_empty())
                .await
            );
            assert_eq!(rec.seen.borrow()[0].old_mode, Read);
            assert!(!rec.seen.borrow()[0].must_write_back());
            yields(2).await;
            let sent = sink.0.borrow().clone();
            assert_eq!(
                sent,
                vec![
                    ClientMsg::Invalidated(nl(key, Read, LockMode::Null)),
                    ClientMsg::Request(nl(key, LockMode::Null, Read)),
                ],
                "the answer, then the waiting reader's new request"
            );
            sink.0.borrow_mut().clear();
            let gen_before = t.info(&key).unwrap().refresh_gen;
            t.deliver(ServerMsg::Grant(nl(key, LockMode::Null, Read)));
            let g3 = reader3.await;
            assert!(g3.info(&Inode(7)).unwrap().refresh_gen > gen_before);
            drop(g3);
            t.check_invariants().unwrap();
            t.shutdown();
            worker.await;
        }
    });
}

#[test]
fn try_lock_takes_what_needs_no_wait_and_leaves_nothing_otherwise() {
    on_reactor(|local| {
        let local = local.clone();
        async move {
            let t = LockTable::new_local(1, Rc::new(NoCache));
            let worker = spawn_worker(&local, &t);
            let g = t
                .try_lock_set(LockSet::new().write(Inode(5)))
                .unwrap()
                .unwrap();
            assert!(t
                .try_lock_set(LockSet::new().read(Inode(4)).read(Inode(5)))
                .is_none());
            let r = t
                .try_lock_set(LockSet::new().read(Inode(4)))
                .unwrap()
                .unwrap();
            drop((g, r));
            assert!(idle(&t));
            check_fifo(&t).unwrap();

            // Over a server that hasn't answered, nothing is taken and the
            // request stays in flight.
            let sink = Rc::new(Sink::default());
            let t2 = LockTable::new(sink.clone(), Rc::new(NoCache));
            assert!(t2.try_lock_set(LockSet::new().read(Inode(5))).is_none());
            assert_eq!(sink.0.borrow().len(), 1);
            t2.deliver(ServerMsg::Grant(nl(
                Inode(5).cluster_key(),
                LockMode::Null,
                Read,
            )));
            assert!(t2.try_lock_set(LockSet::new().read(Inode(5))).is_some());
            t.shutdown();
            worker.await;
        }
    });
}

/// Tasks on one node taking random sets over the local server.
async fn random_tasks_on_one_node(
    local: Local,
    seed: u64,
    tasks: usize,
    rounds: u64,
) -> Result<String, String> {
    let mut rng = SimRng::new(seed);
    let rec = Rc::new(Recorder {
        delay: rng.below(3),
        ..Recorder::default()
    });
    let t = LockTable::new_local(1, rec.clone());
    let worker = spawn_worker(&local, &t);
    let model = Rc::new(RefCell::new(Model::default()));
    let done = Rc::new(Cell::new(0usize));
    let errors = Rc::new(RefCell::new(Vec::<String>::new()));
    for task in 0..tasks {
        let (t, model, done, errors) = (t.clone(), model.clone(), done.clone(), errors.clone());
        let mut rng = SimRng::new(seed ^ (task as u64 + 1).wrapping_mul(0x9e37_79b9));
        local.spawn(async move {
            for _ in 0..rounds {
                let set = random_set(&mut rng);
                if rng.chance(1, 8) {
                    // Give up part way: nothing may stay behind.
                    let _ = poll_once_then_drop(t.lock_set(set)).await;
                    continue;
                }
                if rng.chance(1, 10) {
                    t.shrink_unused(rng.below(3) as usize);
                }
                let mut g = match t.lock_set(set).await {
                    Ok(g) => g,
                    Err(e) => {
                        errors.borrow_mut().push(format!("task {task}: {e}"));
                        break;
                    }
                };
                model.borrow_mut().enter(0, task, g.names());
                if let Err(e) = t.check_invariants() {
                    errors.borrow_mut().push(e);
                }
                yields(rng.below(4)).await;
                if rng.chance(1, 3) {
                    let more = random_more(&mut rng, g.names());
                    model.borrow_mut().leave(0, task, g.names());
                    if let Err(e) = g.lock_more(more).await {
                        errors
                            .borrow_mut()
                            .push(format!("task {task}: lock_more: {e}"));
                    }
                    model.borrow_mut().enter(0, task, g.names());
                    yields(rng.below(4)).await;
                }
                model.borrow_mut().leave(0, task, g.names());
                drop(g);
                yields(rng.below(2)).await;
            }
            done.set(done.get() + 1);
        });
    }
    let finished = wait_until(&local, Duration::from_secs(20), || done.get() == tasks).await;
    let stats = t.stats();
    let dump = format!("{:?}", t.inner.st.borrow());
    t.shutdown();
    worker.await;
    if !finished {
        return Err(format!("{} of {tasks} tasks finished: {dump}", done.get()));
    }
    let mut problems = errors.borrow().clone();
    problems.extend(model.borrow().violations.iter().cloned());
    if let Err(e) = check_fifo(&t) {
        problems.push(e);
    }
    if stats.protocol_errors != 0 || stats.invalidate_errors != 0 {
        problems.push(format!("{stats:?}"));
    }
    if !idle(&t) {
        problems.push(format!("left behind: {dump}"));
    }
    if problems.is_empty() {
        Ok(format!(
            "{stats:?}, {} invalidations seen",
            rec.seen.borrow().len()
        ))
    } else {
        Err(problems.join("\n"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(32)))]

    #[test]
    fn random_sets_on_one_node_never_conflict_are_fifo_and_all_finish(
        seed in any::<u64>(),
        tasks in 2usize..10,
        rounds in 1u64..16,
    ) {
        let r = on_reactor(move |local| random_tasks_on_one_node(local.clone(), seed, tasks, rounds));
        if let Ok(s) = &r { if std::env::var("LOCK_TEST_VERBOSE").is_ok() { eprintln!("{s}"); } }
        prop_assert!(r.is_ok(), "seed {}: {}", seed, r.unwrap_err());
    }
}
