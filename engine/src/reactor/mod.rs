//! The reactor: one thread, pinned to a core, that runs the engine's work.
//!
//! Its loop, repeated until shut down:
//! 1. take requests posted by other threads ([`Remote::post`], a bounded
//!    crossbeam `ArrayQueue`) and run them;
//! 2. poll the tasks that are ready on the single-threaded executor
//!    (`!Send` futures; no tokio);
//! 3. kick every attached device queue (one doorbell/syscall per batch) and
//!    reap completions from memory, waking the tasks that wait on them;
//! 4. fire due timers;
//! 5. when nothing happened: spin (`IdlePolicy::Busy`), or spin for a
//!    bounded time and then sleep on an eventfd that other threads and the
//!    devices signal (`IdlePolicy::Adaptive`, the default).
//!
//! Shutdown stops taking new requests, signals tasks that watch for it,
//! and runs until every task has finished and every in-flight request has
//! completed, so no buffer is freed under the device.

mod clock;
mod event;
mod executor;
mod io;
mod notify;
mod timer;

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_queue::{ArrayQueue, SegQueue};

pub use clock::{Clock, SimClock, SystemClock, SYSTEM_CLOCK};
pub use event::Event;
pub use executor::JoinHandle;
pub use io::{IoFuture, QueueId};

use crate::dev::{IoRequest, QueuePair};
use executor::Executor;
use io::{AttachedQueue, OpTable};
use notify::EventFd;
use timer::Timers;

/// What a reactor does when it has nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Spin forever: lowest latency, burns the core.
    Busy,
    /// Spin for `spin_before_sleep`, then sleep until work arrives.
    Adaptive,
}

impl std::str::FromStr for IdlePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "busy" => Ok(IdlePolicy::Busy),
            "adaptive" => Ok(IdlePolicy::Adaptive),
            _ => Err(format!("unknown idle policy {s:?} (busy or adaptive)")),
        }
    }
}

/// Which core the reactor thread runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorePin {
    /// Pin to the last core when the machine has more than one; else don't.
    Auto,
    None,
    Core(usize),
}

#[derive(Clone, Debug)]
pub struct ReactorConfig {
    pub name: String,
    pub pin: CorePin,
    pub idle: IdlePolicy,
    pub spin_before_sleep: Duration,
    /// With `Adaptive`: while device requests are in flight, spin at least
    /// this long before sleeping. A completion due in tens of microseconds
    /// is then reaped at once rather than after a sleep and an eventfd
    /// wake-up, which cost a request waiting on it about as much again;
    /// with nothing in flight the reactor sleeps after
    /// `spin_before_sleep` (0 on small machines, whose CPU the callers
    /// need).
    pub spin_in_flight: Duration,
    /// The reactor's time (clock.rs): its timers, and what the engine on
    /// it gives the layers that read time.
    pub clock: &'static dyn Clock,
    /// Bound of the queue other threads post requests to.
    pub remote_queue_depth: usize,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        Self {
            name: "scoutfs-reactor".into(),
            pin: CorePin::Auto,
            idle: IdlePolicy::Adaptive,
            spin_before_sleep: Duration::from_micros(200),
            spin_in_flight: Duration::from_micros(100),
            clock: &SYSTEM_CLOCK,
            remote_queue_depth: 4096,
        }
    }
}

type Job = Box<dyn FnOnce(&Local) + Send>;

/// What the reactor shares with other threads.
pub(crate) struct Shared {
    jobs: ArrayQueue<Job>,
    pub(crate) ready: SegQueue<executor::TaskId>,
    sleeping: AtomicBool,
    shutdown: AtomicBool,
    stopped: AtomicBool,
    eventfd: EventFd,
    stats: SharedStats,
}

impl Shared {
    /// Wake the reactor if it sleeps. Callers publish their work first;
    /// the SeqCst fence pairs with the one in the reactor's sleep path.
    pub(crate) fn notify(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.eventfd.signal();
        }
    }
}

#[derive(Default)]
struct SharedStats {
    loops: AtomicU64,
    sleeps: AtomicU64,
    jobs: AtomicU64,
    completions: AtomicU64,
}

/// Counters of a reactor's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReactorStats {
    pub loops: u64,
    pub sleeps: u64,
    pub jobs: u64,
    pub completions: u64,
}

/// Errors from talking to a reactor.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("the reactor is shutting down or gone")]
    Stopped,
    #[error("the reactor's request queue is full")]
    Full,
    #[error("starting the reactor: {0}")]
    Start(String),
}

/// A handle other threads use to give the reactor work.
#[derive(Clone)]
pub struct Remote {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("stopped", &self.shared.stopped.load(Ordering::Relaxed))
            .finish()
    }
}

impl Remote {
    /// Queue `job` to run on the reactor. A full queue is back-pressure:
    /// the job is not queued and `Full` returned.
    pub fn post(&self, job: impl FnOnce(&Local) + Send + 'static) -> Result<(), ReactorError> {
        self.post_boxed(Box::new(job)).map_err(|(e, _)| e)
    }

    fn post_boxed(&self, job: Job) -> Result<(), (ReactorError, Job)> {
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err((ReactorError::Stopped, job));
        }
        self.shared
            .jobs
            .push(job)
            .map_err(|j| (ReactorError::Full, j))?;
        self.shared.notify();
        Ok(())
    }

    /// Run `f` on the reactor and block this thread until the future it
    /// returns completes. Waits (yielding) while the queue is full.
    pub fn call<T, Fut, F>(&self, f: F) -> Result<T, ReactorError>
    where
        F: FnOnce(&Local) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut job: Job = Box::new(move |local: &Local| {
            let fut = f(local);
            // The task runs detached; its result travels through `tx`.
            drop(local.spawn(async move {
                let _ = tx.send(fut.await);
            }));
        });
        loop {
            match self.post_boxed(job) {
                Ok(()) => break,
                Err((ReactorError::Full, j)) => {
                    job = j;
                    std::thread::yield_now();
                }
                Err((e, _)) => return Err(e),
            }
        }
        rx.recv().map_err(|_| ReactorError::Stopped)
    }

    /// Ask the reactor to finish its work and stop.
    pub fn request_shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.eventfd.signal();
    }

    pub fn stats(&self) -> ReactorStats {
        let s = &self.shared.stats;
        ReactorStats {
            loops: s.loops.load(Ordering::Relaxed),
            sleeps: s.sleeps.load(Ordering::Relaxed),
            jobs: s.jobs.load(Ordering::Relaxed),
            completions: s.completions.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct LocalInner {
    shared: Arc<Shared>,
    exec: RefCell<Executor>,
    pub(crate) queues: RefCell<Vec<AttachedQueue>>,
    pub(crate) ops: RefCell<OpTable>,
    timers: RefCell<Timers>,
    shutdown_waiters: RefCell<Vec<Waker>>,
    shutdown_seen: Cell<bool>,
    clock: &'static dyn Clock,
}

/// The reactor's own handle, usable only on the reactor thread: spawn
/// tasks, attach queues, do I/O, sleep.
#[derive(Clone)]
pub struct Local {
    inner: Rc<LocalInner>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("tasks", &self.inner.exec.borrow().live())
            .finish()
    }
}

impl Local {
    pub fn spawn<F: Future + 'static>(&self, fut: F) -> JoinHandle<F::Output> {
        let (task, handle) = executor::joinable(fut);
        self.inner
            .exec
            .borrow_mut()
            .insert(&self.inner.shared, task);
        handle
    }

    /// Attach a queue pair; the reactor polls it from now on.
    pub fn attach_queue(&self, mut qp: QueuePair) -> QueueId {
        let notifies = qp.set_completion_eventfd(self.inner.shared.eventfd.raw());
        let mut queues = self.inner.queues.borrow_mut();
        queues.push(AttachedQueue {
            qp,
            room_waiters: Default::default(),
            notifies,
        });
        QueueId(queues.len() - 1)
    }

    /// Submit a request on an attached queue; resolves to its completion.
    pub fn io(&self, queue: QueueId, req: IoRequest) -> IoFuture {
        IoFuture::new(self.inner.clone(), queue, req)
    }

    pub fn sleep(&self, d: Duration) -> Sleep {
        Sleep {
            local: self.inner.clone(),
            deadline: self.inner.clock.now() + d,
            id: None,
        }
    }

    /// The reactor's clock.
    pub fn clock(&self) -> &'static dyn Clock {
        self.inner.clock
    }

    pub fn shutdown_requested(&self) -> bool {
        self.inner.shared.shutdown.load(Ordering::Acquire)
    }

    /// Resolves when shutdown has been requested.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + 'static {
        let inner = self.inner.clone();
        poll_fn(move |cx| {
            if inner.shared.shutdown.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            // A long-lived task polls this at every turn of its loop:
            // keep one waker per task, not one per poll.
            let mut waiters = inner.shutdown_waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }

    pub fn remote(&self) -> Remote {
        Remote {
            shared: self.inner.shared.clone(),
        }
    }

    pub fn tasks(&self) -> usize {
        self.inner.exec.borrow().live()
    }

    /// Requests in flight on every attached queue.
    pub fn in_flight(&self) -> usize {
        self.inner
            .queues
            .borrow()
            .iter()
            .map(|q| q.qp.in_flight())
            .sum()
    }

    pub fn queue_depth(&self, q: QueueId) -> usize {
        self.inner.queues.borrow()[q.0].qp.depth()
    }
}

/// `fut`'s output, or `None` if `stop` (a [`Local::shutdown_signal`],
/// pinned once for the task's whole life) fires first: a long-lived task's
/// wait for its next piece of work.
pub async fn unless_stopped<T>(
    mut stop: Pin<&mut impl Future<Output = ()>>,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Give every other ready task on this reactor a turn, then go on: the
/// future is ready at its second poll, having woken itself at the first.
pub fn yield_now() -> impl Future<Output = ()> {
    struct Yield(bool);
    impl Future for Yield {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    Yield(false)
}

/// A timer future from [`Local::sleep`].
pub struct Sleep {
    local: Rc<LocalInner>,
    deadline: Instant,
    id: Option<u64>,
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.local.clock.now() >= self.deadline {
            if let Some(id) = self.id.take() {
                self.local.timers.borrow_mut().cancel(id);
            }
            return Poll::Ready(());
        }
        let mut timers = self.local.timers.borrow_mut();
        match self.id {
            Some(id) => timers.update(id, cx.waker()),
            None => {
                let id = timers.add(self.deadline, cx.waker().clone());
                drop(timers);
                self.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.local.timers.borrow_mut().cancel(id);
        }
    }
}

/// A running reactor thread.
pub struct Reactor {
    remote: Remote,
    thread: Option<std::thread::JoinHandle<()>>,
    tid: i32,
    core: Option<usize>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("tid", &self.tid)
            .field("core", &self.core)
            .finish()
    }
}

type InitError = Box<dyn std::error::Error + Send + Sync>;

impl Reactor {
    /// Start a reactor thread and run `init` on it (attach queues, spawn
    /// the first tasks) before its loop starts. Returns once `init` ran.
    pub fn start<F>(cfg: ReactorConfig, init: F) -> Result<Reactor, ReactorError>
    where
        F: FnOnce(&Local) -> Result<(), InitError> + Send + 'static,
    {
        let eventfd = EventFd::new().map_err(|e| ReactorError::Start(format!("eventfd: {e}")))?;
        let shared = Arc::new(Shared {
            jobs: ArrayQueue::new(cfg.remote_queue_depth.max(1)),
            ready: SegQueue::new(),
            sleeping: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            eventfd,
            stats: SharedStats::default(),
        });
        let core = match cfg.pin {
            CorePin::None => None,
            CorePin::Core(c) => Some(c),
            CorePin::Auto => {
                let n = core_affinity::get_core_ids().map_or(1, |v| v.len());
                (n > 1).then_some(n - 1)
            }
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<i32, String>>(1);
        let sh = shared.clone();
        let cfg2 = cfg.clone();
        let thread = std::thread::Builder::new()
            .name(cfg.name.clone())
            .spawn(move || {
                if let Some(c) = core {
                    let ids = core_affinity::get_core_ids().unwrap_or_default();
                    match ids.iter().find(|id| id.id == c) {
                        Some(id) if core_affinity::set_for_current(*id) => {}
                        _ => {
                            let _ = tx.send(Err(format!("cannot pin to core {c}")));
                            return;
                        }
                    }
                }
                let local = Local {
                    inner: Rc::new(LocalInner {
                        shared: sh.clone(),
                        exec: RefCell::new(Executor::default()),
                        queues: RefCell::new(Vec::new()),
                        ops: RefCell::new(OpTable::default()),
                        timers: RefCell::new(Timers::default()),
                        shutdown_waiters: RefCell::new(Vec::new()),
                        shutdown_seen: Cell::new(false),
                        clock: cfg2.clock,
                    }),
                };
                if let Err(e) = init(&local) {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
                // SAFETY: gettid has no arguments and cannot fail.
                let tid = unsafe { libc::gettid() };
                let _ = tx.send(Ok(tid));
                run_loop(&local, &cfg2);
                sh.stopped.store(true, Ordering::Release);
            })
            .map_err(|e| ReactorError::Start(e.to_string()))?;
        match rx.recv() {
            Ok(Ok(tid)) => Ok(Reactor {
                remote: Remote { shared },
                thread: Some(thread),
                tid,
                core,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(ReactorError::Start(e))
            }
            Err(_) => {
                let _ = thread.join();
                Err(ReactorError::Start(
                    "reactor thread died during start".into(),
                ))
            }
        }
    }

    pub fn remote(&self) -> Remote {
        self.remote.clone()
    }

    /// The reactor thread's kernel thread id (for /proc, strace, perf).
    pub fn thread_id(&self) -> i32 {
        self.tid
    }

    /// The core the reactor is pinned to, if any.
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    /// Request shutdown and wait for the reactor to drain and stop.
    pub fn shutdown(mut self) -> ReactorStats {
        self.remote.request_shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.remote.stats()
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.remote.request_shutdown();
            let _ = t.join();
        }
    }
}

/// Most remote jobs and ready tasks taken per loop turn, so that device
/// completions are reaped regularly under load.
const BATCH: usize = 256;

fn run_loop(local: &Local, cfg: &ReactorConfig) {
    let inner = &*local.inner;
    let shared = &*inner.shared;
    let mut idle_since: Option<Instant> = None;
    loop {
        let mut work = 0usize;
        shared.stats.loops.fetch_add(1, Ordering::Relaxed);

        for _ in 0..BATCH {
            let Some(job) = shared.jobs.pop() else { break };
            job(local);
            work += 1;
        }
        if work > 0 {
            shared.stats.jobs.fetch_add(work as u64, Ordering::Relaxed);
        }

        let ready = shared.ready.len().min(BATCH);
        for _ in 0..ready {
            let Some(id) = shared.ready.pop() else { break };
            if executor::run_task(&inner.exec, id) {
                work += 1;
            }
        }

        work += poll_devices(inner);

        if !inner.timers.borrow().is_empty() {
            work += inner.timers.borrow_mut().fire(inner.clock.now());
        }

        if shared.shutdown.load(Ordering::Acquire) {
            if !inner.shutdown_seen.replace(true) {
                for w in inner.shutdown_waiters.borrow_mut().drain(..) {
                    w.wake();
                }
                work += 1;
            }
            if inner.exec.borrow().live() == 0 && local.in_flight() == 0 && shared.jobs.is_empty() {
                break;
            }
        }

        if work > 0 {
            idle_since = None;
            continue;
        }
        match cfg.idle {
            IdlePolicy::Busy => std::hint::spin_loop(),
            IdlePolicy::Adaptive => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                let spin = match local.in_flight() {
                    0 => cfg.spin_before_sleep,
                    _ => cfg.spin_before_sleep.max(cfg.spin_in_flight),
                };
                if since.elapsed() < spin {
                    std::hint::spin_loop();
                    continue;
                }
                idle_sleep(local);
                idle_since = None;
            }
        }
    }
    // Dropping the queues waits for anything the backends still hold.
    inner.queues.borrow_mut().clear();
}

/// Kick and reap every attached queue; returns completions reaped.
fn poll_devices(inner: &LocalInner) -> usize {
    let mut reaped = 0;
    let mut queues = inner.queues.borrow_mut();
    for q in queues.iter_mut() {
        if let Err(e) = q.qp.kick() {
            tracing::error!("{}: {e}", q.qp.device_name());
        }
        if q.qp.in_flight() == 0 {
            continue;
        }
        let mut ops = inner.ops.borrow_mut();
        let n = q.qp.reap(&mut |c| ops.complete(c));
        drop(ops);
        reaped += n;
        // Freed room: let waiting submitters retry.
        for _ in 0..n {
            match q.room_waiters.pop_front() {
                Some(w) => w.wake(),
                None => break,
            }
        }
    }
    if reaped > 0 {
        inner
            .shared
            .stats
            .completions
            .fetch_add(reaped as u64, Ordering::Relaxed);
    }
    reaped
}

/// Sleep on the eventfd until another thread, a device or a timer has
/// work for us. Never sleeps while a device that can't signal completions
/// has requests in flight.
fn idle_sleep(local: &Local) {
    let inner = &*local.inner;
    let shared = &*inner.shared;
    if inner
        .queues
        .borrow()
        .iter()
        .any(|q| q.qp.in_flight() > 0 && !q.notifies)
    {
        std::hint::spin_loop();
        return;
    }
    shared.sleeping.store(true, Ordering::SeqCst);
    std::sync::atomic::fence(Ordering::SeqCst);
    // Drain first, then look: anything that arrives after the drain signals
    // the eventfd again and cuts the sleep short.
    shared.eventfd.drain();
    let reaped = poll_devices(inner);
    let has_work = reaped > 0
        || !shared.jobs.is_empty()
        || !shared.ready.is_empty()
        || shared.shutdown.load(Ordering::SeqCst) && !inner.shutdown_seen.get();
    if !has_work {
        let now = inner.clock.now();
        // A clock that only moves when told: look again soon.
        let longest = match inner.clock.passes_by_itself() {
            true => Duration::from_secs(1),
            false => Duration::from_millis(1),
        };
        let timeout = inner
            .timers
            .borrow_mut()
            .next_deadline()
            .map_or(longest, |d| d.saturating_duration_since(now))
            .min(longest);
        shared.stats.sleeps.fetch_add(1, Ordering::Relaxed);
        shared.eventfd.wait(timeout);
    }
    shared.sleeping.store(false, Ordering::SeqCst);
}
