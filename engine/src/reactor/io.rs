//! Device I/O from tasks: a request becomes a future that submits it to
//! one of the reactor's queue pairs (waiting for room when the queue is
//! full) and resolves to its completion.
//!
//! The in-flight request, and so its buffer, is owned by the queue, never
//! by the future: dropping the future early is safe, and the completion is
//! discarded (its buffer returned to the pool) when it arrives.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::LocalInner;
use crate::dev::{Completion, DevError, IoRequest, QueuePair, Rejected};

/// Identifies a queue pair attached to a reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueueId(pub(crate) usize);

pub(crate) struct AttachedQueue {
    pub(crate) qp: QueuePair,
    /// Futures waiting for room in this queue.
    pub(crate) room_waiters: VecDeque<Waker>,
    /// The device signals the reactor's eventfd on completion.
    pub(crate) notifies: bool,
}

pub(crate) enum OpSlot {
    Free,
    Waiting(Option<Waker>),
    Done(Completion),
    Orphaned,
}

#[derive(Default)]
pub(crate) struct OpTable {
    slots: Vec<OpSlot>,
    free: Vec<u32>,
}

impl OpTable {
    fn alloc(&mut self) -> u32 {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(OpSlot::Free);
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn release(&mut self, idx: u32) {
        self.slots[idx as usize] = OpSlot::Free;
        self.free.push(idx);
    }

    /// Hand a completion to whoever waits for it.
    pub(crate) fn complete(&mut self, c: Completion) {
        let idx = c.tag as u32;
        match std::mem::replace(&mut self.slots[idx as usize], OpSlot::Free) {
            OpSlot::Waiting(w) => {
                self.slots[idx as usize] = OpSlot::Done(c);
                if let Some(w) = w {
                    w.wake();
                }
            }
            OpSlot::Orphaned => self.release(idx),
            OpSlot::Free | OpSlot::Done(_) => {
                panic!("completion for op {idx} that was not in flight")
            }
        }
    }
}

enum State {
    Unsubmitted(IoRequest),
    InFlight(u32),
    Finished,
}

/// A request on its way through a queue pair; resolves to its completion.
/// The completion's `tag` is the reactor's own, not the request's.
pub struct IoFuture {
    local: Rc<LocalInner>,
    queue: QueueId,
    state: State,
}

impl std::fmt::Debug for IoFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoFuture")
            .field("queue", &self.queue)
            .finish()
    }
}

impl IoFuture {
    pub(crate) fn new(local: Rc<LocalInner>, queue: QueueId, req: IoRequest) -> Self {
        IoFuture {
            local,
            queue,
            state: State::Unsubmitted(req),
        }
    }
}

impl Future for IoFuture {
    type Output = Completion;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        let this = &mut *self;
        match std::mem::replace(&mut this.state, State::Finished) {
            State::Unsubmitted(mut req) => {
                let mut queues = this.local.queues.borrow_mut();
                let Some(q) = queues.get_mut(this.queue.0) else {
                    let error =
                        DevError::Setup(format!("no queue {:?} on this reactor", this.queue));
                    return Poll::Ready(rejected(Rejected { error, req }));
                };
                if q.qp.is_full() {
                    q.room_waiters.push_back(cx.waker().clone());
                    this.state = State::Unsubmitted(req);
                    return Poll::Pending;
                }
                let mut ops = this.local.ops.borrow_mut();
                let idx = ops.alloc();
                req.tag = u64::from(idx);
                match q.qp.submit(req) {
                    Ok(()) => {
                        ops.slots[idx as usize] = OpSlot::Waiting(Some(cx.waker().clone()));
                        this.state = State::InFlight(idx);
                        Poll::Pending
                    }
                    Err(r) => {
                        ops.release(idx);
                        Poll::Ready(rejected(r))
                    }
                }
            }
            State::InFlight(idx) => {
                let mut ops = this.local.ops.borrow_mut();
                match &mut ops.slots[idx as usize] {
                    OpSlot::Done(_) => {
                        let OpSlot::Done(c) =
                            std::mem::replace(&mut ops.slots[idx as usize], OpSlot::Free)
                        else {
                            unreachable!()
                        };
                        ops.release(idx);
                        Poll::Ready(c)
                    }
                    OpSlot::Waiting(w) => {
                        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            *w = Some(cx.waker().clone());
                        }
                        this.state = State::InFlight(idx);
                        Poll::Pending
                    }
                    OpSlot::Free | OpSlot::Orphaned => panic!("op {idx} lost while in flight"),
                }
            }
            State::Finished => panic!("IoFuture polled after completion"),
        }
    }
}

fn rejected(r: Rejected) -> Completion {
    Completion {
        tag: r.req.tag,
        op: r.req.op,
        offset_bytes: r.req.offset_bytes,
        result: Err(r.error),
        buf: r.req.buf,
    }
}

impl Drop for IoFuture {
    fn drop(&mut self) {
        if let State::InFlight(idx) = self.state {
            let mut ops = self.local.ops.borrow_mut();
            match ops.slots[idx as usize] {
                OpSlot::Done(_) => ops.release(idx),
                _ => ops.slots[idx as usize] = OpSlot::Orphaned,
            }
        }
    }
}
