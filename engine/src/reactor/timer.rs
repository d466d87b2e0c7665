//! Timers for tasks on one reactor: a heap of deadlines and the wakers of
//! the sleeps still waiting on them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::task::Waker;
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    waiting: HashMap<u64, Waker>,
    next_id: u64,
}

impl Timers {
    pub(crate) fn add(&mut self, deadline: Instant, waker: Waker) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.heap.push(Reverse((deadline, id)));
        self.waiting.insert(id, waker);
        id
    }

    pub(crate) fn update(&mut self, id: u64, waker: &Waker) {
        if let Some(w) = self.waiting.get_mut(&id) {
            if !w.will_wake(waker) {
                *w = waker.clone();
            }
        }
    }

    pub(crate) fn cancel(&mut self, id: u64) {
        self.waiting.remove(&id);
    }

    /// Wake every timer due at `now`; returns how many.
    pub(crate) fn fire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(Reverse((deadline, id))) = self.heap.peek().copied() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if let Some(w) = self.waiting.remove(&id) {
                w.wake();
                n += 1;
            }
        }
        n
    }

    /// The next live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, id))) = self.heap.peek().copied() {
            if self.waiting.contains_key(&id) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}
