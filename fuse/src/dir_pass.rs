//! Readdir passes of open directories: where each ends.
//!
//! A pass is what one open directory handle reads from its start: from
//! `opendir` until `rewinddir` (the kernel's next readdir at offset 0,
//! once something was read) starts the next one. It reads the positions
//! that existed when it began and no further (`Fs::readdir_pass_end`), so
//! an entry renamed behind the reader, which takes a new position at the
//! end, is not met again, and a pass ends however fast entries are
//! renamed. Offsets stay the engine's stable positions (+1), so telldir
//! cookies keep their meaning across passes, handles and remounts;
//! `seekdir` inside a pass keeps its end. NFS's readdir from a cookie
//! opens the directory for each call: each is a pass of its own, bounded
//! at its open.
//!
//! One entry per open directory handle (the kernel sends RELEASEDIR for
//! each), so the table is as large as the open directories.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, Clone, Copy)]
struct Pass {
    /// The first position past the pass.
    end: u64,
    /// Whether a readdir of this handle has run.
    read: bool,
}

#[derive(Debug, Default)]
pub(crate) struct DirPasses {
    passes: Mutex<HashMap<u64, Pass>>,
}

impl DirPasses {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Pass>> {
        // Each update is one map operation: a panic elsewhere while the
        // lock was held left the map whole.
        self.passes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `handle` was opened; its first pass ends at `end`.
    pub(crate) fn open(&self, handle: u64, end: u64) {
        self.lock().insert(handle, Pass { end, read: false });
    }

    /// The end of the pass a readdir of `handle` at `offset` belongs to,
    /// or None when it starts a new pass (a rewind, or a handle this
    /// table does not know): then the caller asks the engine for the end
    /// and gives it to [`DirPasses::begin`].
    pub(crate) fn end_for(&self, handle: u64, offset: u64) -> Option<u64> {
        let mut passes = self.lock();
        let p = passes.get_mut(&handle)?;
        if offset == 0 && p.read {
            return None;
        }
        p.read = true;
        Some(p.end)
    }

    /// A pass of `handle` begins, ending at `end`.
    pub(crate) fn begin(&self, handle: u64, end: u64) {
        self.lock().insert(handle, Pass { end, read: true });
    }

    /// `handle` was released.
    pub(crate) fn close(&self, handle: u64) {
        self.lock().remove(&handle);
    }

    /// Open directory handles.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_runs_from_open_to_rewind() {
        let p = DirPasses::default();
        assert_eq!(p.end_for(7, 0), None, "unknown handle");
        p.open(7, 100);
        // The first read at 0 is the pass opendir began.
        assert_eq!(p.end_for(7, 0), Some(100));
        assert_eq!(p.end_for(7, 40), Some(100));
        // seekdir back keeps the pass.
        assert_eq!(p.end_for(7, 3), Some(100));
        // rewinddir starts the next one.
        assert_eq!(p.end_for(7, 0), None);
        p.begin(7, 250);
        assert_eq!(p.end_for(7, 120), Some(250));
        // NFS: open, then read from a cookie.
        p.open(8, 300);
        assert_eq!(p.end_for(8, 120), Some(300));
        assert_eq!(p.len(), 2);
        p.close(7);
        p.close(8);
        assert_eq!(p.len(), 0);
    }
}
