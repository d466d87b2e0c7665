//! Small helpers shared by several layers.

pub mod rng;

/// Run a future that never waits: the fs and data layers over a `Volume`
/// (whose reads finish inline) are async for the reactor-backed store to
/// come, and their futures are ready on the first poll. Panics if one
/// is not: that would be a future that needs a real executor.
pub fn ready<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a future over a synchronous store was pending"),
    }
}
