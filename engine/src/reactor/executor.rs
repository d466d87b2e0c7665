//! The single-threaded executor: tasks are `!Send` futures in a slab on the
//! reactor thread; a waker (which may be used from any thread) puts its
//! task's id on the shared ready queue at most once until it is polled.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use super::Shared;

pub(crate) type TaskId = u64;

fn task_id(idx: u32, gen: u32) -> TaskId {
    (u64::from(gen) << 32) | u64::from(idx)
}

struct TaskWaker {
    id: TaskId,
    scheduled: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            self.shared.ready.push(self.id);
            self.shared.notify();
        }
    }
}

pub(crate) type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

struct Task {
    gen: u32,
    fut: LocalFuture,
    waker: Arc<TaskWaker>,
}

#[derive(Default)]
pub(crate) struct Executor {
    slots: Vec<Option<Task>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    live: usize,
}

impl Executor {
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Add a task and schedule its first poll.
    pub(crate) fn insert(&mut self, shared: &Arc<Shared>, fut: LocalFuture) {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.gens.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let gen = self.gens[idx as usize];
        let id = task_id(idx, gen);
        let waker = Arc::new(TaskWaker {
            id,
            scheduled: AtomicBool::new(true),
            shared: shared.clone(),
        });
        self.slots[idx as usize] = Some(Task { gen, fut, waker });
        self.live += 1;
        shared.ready.push(id);
    }

    /// Take a task out to poll it (so the poll may spawn more tasks).
    fn take(&mut self, id: TaskId) -> Option<Task> {
        let idx = (id & 0xffff_ffff) as usize;
        let gen = (id >> 32) as u32;
        match self.slots.get_mut(idx) {
            Some(slot) if slot.as_ref().is_some_and(|t| t.gen == gen) => slot.take(),
            _ => None,
        }
    }

    fn put_back(&mut self, task: Task) {
        let idx = (task.waker.id & 0xffff_ffff) as usize;
        debug_assert!(self.slots[idx].is_none());
        self.slots[idx] = Some(task);
    }

    fn finish(&mut self, id: TaskId) {
        let idx = (id & 0xffff_ffff) as usize;
        self.gens[idx] = self.gens[idx].wrapping_add(1);
        self.free.push(idx as u32);
        self.live -= 1;
    }
}

/// Poll the task `id` once, if it still exists. Returns whether a task ran.
pub(crate) fn run_task(exec: &RefCell<Executor>, id: TaskId) -> bool {
    let Some(mut task) = exec.borrow_mut().take(id) else {
        return false;
    };
    task.waker.scheduled.store(false, Ordering::Release);
    let waker = Waker::from(task.waker.clone());
    let mut cx = Context::from_waker(&waker);
    match task.fut.as_mut().poll(&mut cx) {
        Poll::Ready(()) => exec.borrow_mut().finish(id),
        Poll::Pending => exec.borrow_mut().put_back(task),
    }
    true
}

/// The output of a spawned task.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

pub(crate) struct JoinState<T> {
    result: Option<T>,
    finished: bool,
    waker: Option<Waker>,
}

impl<T> JoinHandle<T> {
    pub fn is_finished(&self) -> bool {
        self.state.borrow().finished
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = self.state.borrow_mut();
        if let Some(v) = st.result.take() {
            return Poll::Ready(v);
        }
        assert!(!st.finished, "JoinHandle polled after it returned");
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Wrap a future so that its output lands in a JoinHandle.
pub(crate) fn joinable<F: Future + 'static>(fut: F) -> (LocalFuture, JoinHandle<F::Output>) {
    let state = Rc::new(RefCell::new(JoinState {
        result: None,
        finished: false,
        waker: None,
    }));
    let st = state.clone();
    let task = Box::pin(async move {
        let v = fut.await;
        let waker = {
            let mut s = st.borrow_mut();
            s.result = Some(v);
            s.finished = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    });
    (task, JoinHandle { state })
}
