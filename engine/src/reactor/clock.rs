//! The engine's time: one clock per reactor, given to everything that
//! reads time on it (timers, commit ages, inode timestamps). Real by
//! default ([`SYSTEM_CLOCK`]); a [`SimClock`] only moves when told, so a
//! test or a deterministic multi-node simulation (several engines in one
//! process, ../shared/CLUSTER.md) decides when timers fire and what time
//! changes are stamped with.
//!
//! Clocks are `&'static` so that the options structs holding them stay
//! `Copy`; a simulation leaks one [`SimClock`] per run
//! ([`SimClock::leak`]).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Monotonic time: timers, ages.
    fn now(&self) -> Instant;
    /// Wall-clock time: what changes are stamped with.
    fn wall(&self) -> SystemTime;
    /// Whether time passes on its own. A reactor on a clock that doesn't
    /// never sleeps long waiting for a timer: only an
    /// [`SimClock::advance`] makes it due.
    fn passes_by_itself(&self) -> bool {
        true
    }
}

/// The machine's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The default clock.
pub static SYSTEM_CLOCK: SystemClock = SystemClock;

/// A clock that stands still until advanced.
#[derive(Debug)]
pub struct SimClock {
    start: Instant,
    wall_start: SystemTime,
    elapsed: Mutex<Duration>,
}

impl SimClock {
    /// A clock reading `wall_start` on the wall.
    pub fn new(wall_start: SystemTime) -> SimClock {
        SimClock {
            start: Instant::now(),
            wall_start,
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// For options that take a `&'static dyn Clock`.
    pub fn leak(self) -> &'static SimClock {
        Box::leak(Box::new(self))
    }

    /// Move time on by `d`. Reactors on this clock notice within a
    /// millisecond of real time.
    pub fn advance(&self, d: Duration) {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner()) += d;
    }

    /// Time advanced so far.
    pub fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn wall(&self) -> SystemTime {
        self.wall_start + self.elapsed()
    }
    fn passes_by_itself(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sim_clock_moves_only_when_advanced() {
        let c = SimClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let (t0, w0) = (c.now(), c.wall());
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!((c.now(), c.wall()), (t0, w0));
        c.advance(Duration::from_secs(5));
        assert_eq!(c.now() - t0, Duration::from_secs(5));
        assert_eq!(c.wall().duration_since(w0).unwrap(), Duration::from_secs(5));
    }
}
