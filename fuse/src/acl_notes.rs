//! Notes that an inode has no access ACL, taken by readdirplus with the
//! entry's attributes and kept no longer than the kernel keeps those
//! attributes (the attribute timeout).
//!
//! Why: `ls -l` asks every file for `system.posix_acl_access`, and the
//! kernel cannot remember the answer across listings (it drops an inode's
//! cached ACLs whenever readdirplus or a GETATTR refreshes its
//! attributes), so each file costs a FUSE round trip. A note lets the
//! handler answer ENODATA without a trip to the engine, which is about
//! half of that round trip's cost.
//!
//! Coherence: a note is dropped by every xattr change and setattr through
//! this handler (and a batch of notes whose engine call may have raced
//! with such a change is not taken: `generation`), by every change event
//! of the inode from another session (notify.rs, which drops the
//! kernel's cached attributes and ACLs at the same time), and expires
//! with the attributes it came with.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Notes kept at most (an entry is ~40 bytes): a listing of more files
/// than this gets notes for the last ones only.
const MAX_NOTES: usize = 1 << 18;

#[derive(Debug)]
pub struct AclNotes {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Inode -> until when it is known to have no access ACL.
    absent_until: HashMap<u64, Instant>,
    /// Forgets so far.
    generation: u64,
}

impl AclNotes {
    /// Notes that live `ttl` (none at all when `ttl` is zero).
    pub fn new(ttl: Duration) -> AclNotes {
        AclNotes {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Taken before asking the engine; [`AclNotes::note_absent`] keeps
    /// the answer only if nothing was forgotten meanwhile.
    pub fn generation(&self) -> u64 {
        self.inner.lock().map_or(u64::MAX, |i| i.generation)
    }

    /// The engine said, in a call begun at `now` with the notes at
    /// `generation`, that `inodes` have no access ACL.
    pub fn note_absent(
        &self,
        generation: u64,
        inodes: impl IntoIterator<Item = u64>,
        now: Instant,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.generation != generation {
            return;
        }
        let map = &mut inner.absent_until;
        let until = now + self.ttl;
        for ino in inodes {
            if map.len() >= MAX_NOTES {
                map.retain(|_, t| *t > now);
                if map.len() >= MAX_NOTES {
                    map.clear();
                }
            }
            map.insert(ino, until);
        }
        debug_assert!(map.len() <= MAX_NOTES);
    }

    /// Whether `ino` is known, at `now`, to have no access ACL.
    pub fn absent(&self, ino: u64, now: Instant) -> bool {
        self.inner
            .lock()
            .is_ok_and(|i| i.absent_until.get(&ino).is_some_and(|t| *t > now))
    }

    /// `ino`'s xattrs or mode may have changed: forget what was noted,
    /// and refuse the notes of engine calls begun before.
    pub fn forget(&self, ino: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.absent_until.remove(&ino);
            inner.generation += 1;
        }
    }

    /// Anything may have changed: forget every note.
    pub fn forget_all(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.absent_until.clear();
            inner.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_lives_for_its_ttl_and_until_forgotten() {
        let n = AclNotes::new(Duration::from_secs(1));
        let t0 = Instant::now();
        n.note_absent(n.generation(), [5, 6], t0);
        assert!(n.absent(5, t0) && n.absent(6, t0));
        assert!(!n.absent(7, t0));
        assert!(!n.absent(5, t0 + Duration::from_secs(1)));
        n.forget(6);
        assert!(!n.absent(6, t0));
    }

    #[test]
    fn a_zero_ttl_notes_nothing() {
        let n = AclNotes::new(Duration::ZERO);
        let t0 = Instant::now();
        n.note_absent(n.generation(), [5], t0);
        assert!(!n.absent(5, t0));
    }

    #[test]
    fn notes_from_a_call_that_raced_a_change_are_not_taken() {
        let n = AclNotes::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let g = n.generation();
        // An ACL set on 9 while the listing's engine call was running.
        n.forget(9);
        n.note_absent(g, [8, 9], t0);
        assert!(!n.absent(9, t0) && !n.absent(8, t0));
    }

    #[test]
    fn notes_are_bounded() {
        let n = AclNotes::new(Duration::from_secs(60));
        let t0 = Instant::now();
        n.note_absent(n.generation(), 0..(MAX_NOTES as u64 + 10), t0);
        let len = n.inner.lock().unwrap().absent_until.len();
        assert!(len <= MAX_NOTES, "{len}");
        assert!(n.absent(MAX_NOTES as u64 + 9, t0), "the newest is kept");
    }
}
