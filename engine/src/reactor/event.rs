//! An event tasks of one reactor wait for: [`Event::notify`] wakes every
//! task waiting in [`Event::wait`] at that moment. For "something changed,
//! look again" (a DMA buffer came back, a completion was collected), where
//! the waiter re-checks its own condition after each wake-up. Not `Send`:
//! tasks of one reactor only.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::task::{Poll, Waker};

#[derive(Debug, Default)]
pub struct Event {
    epoch: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Event {
    pub fn new() -> Event {
        Event::default()
    }

    /// Wake every task waiting now.
    pub fn notify(&self) {
        self.epoch.set(self.epoch.get() + 1);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves at the first [`Event::notify`] after this call.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        let seen = self.epoch.get();
        poll_fn(move |cx| {
            if self.epoch.get() != seen {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::Context;

    #[test]
    fn a_wait_ends_at_the_next_notify_only() {
        let e = Event::new();
        e.notify();
        let mut w = pin!(e.wait());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(
            w.as_mut().poll(&mut cx).is_pending(),
            "a notify before the wait must not end it"
        );
        e.notify();
        assert!(w.as_mut().poll(&mut cx).is_ready());
    }
}
