//! Sessions: one per frontend connection (a FUSE mount's kernel, an admin
//! socket connection, later a shim client or a virtiofs guest). A session
//! holds the files and directories its client has open, as handles: each
//! open takes one, each release gives one back, and when the session ends
//! every handle it still holds is released, so a client that vanishes
//! leaves nothing open. The per-inode open counts in the fs layer
//! (`Fs::open_count`, orphan.rs) stay the truth about an inode; a
//! session's handles are what feed them.
//!
//! Sessions live on the reactor thread, in the engine's dispatcher
//! (serve/inbox.rs), and are touched only there.

use std::collections::HashMap;

/// A session's number. Never reused while the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    /// The engine's own session, open from start to shutdown: requests the
    /// engine process makes for itself (a FUSE mount's remount watcher,
    /// the mount command's first statfs). It holds no handles.
    pub const ENGINE: SessionId = SessionId(0);
}

/// An open file or directory of a session, by number. Numbers start at 1
/// and are not reused within a session; a frontend may carry its own bits
/// beside one (FUSE shifts it left three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(pub u64);

/// Whether a handle opened a file or a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenKind {
    File,
    Dir,
}

/// What a handle holds open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFile {
    pub ino: u64,
    /// The open(2) flags it was opened with.
    pub flags: u32,
    pub kind: OpenKind,
}

impl OpenFile {
    /// Opened for writing (O_WRONLY or O_RDWR): a truncate through it
    /// needs no further permission check.
    pub fn writable(&self) -> bool {
        matches!(
            self.flags as i32 & libc::O_ACCMODE,
            libc::O_WRONLY | libc::O_RDWR
        )
    }
}

/// Most handles one session holds at once (4 Mi, ~100 bytes each): beyond
/// it an open fails with ENOSPC ("no room in the session's table").
pub const MAX_HANDLES: usize = 1 << 22;

/// One session's table of open files and directories.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    files: HashMap<u64, OpenFile>,
    next_handle: u64,
}

impl Session {
    pub fn new(id: SessionId) -> Session {
        Session {
            id,
            files: HashMap::new(),
            next_handle: 1,
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Record an open; `None` when the table is full ([`MAX_HANDLES`]).
    pub fn insert(&mut self, file: OpenFile) -> Option<Handle> {
        if self.files.len() >= MAX_HANDLES {
            return None;
        }
        let h = self.next_handle;
        self.next_handle += 1;
        let old = self.files.insert(h, file);
        debug_assert!(old.is_none(), "handle {h} given twice");
        Some(Handle(h))
    }

    pub fn get(&self, h: Handle) -> Option<&OpenFile> {
        self.files.get(&h.0)
    }

    /// Forget a handle (its release); `None` if it isn't open here.
    pub fn remove(&mut self, h: Handle) -> Option<OpenFile> {
        self.files.remove(&h.0)
    }

    /// How many handles are open.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Every handle still open, emptying the table (the session ends).
    pub fn drain(&mut self) -> Vec<(Handle, OpenFile)> {
        let mut all: Vec<_> = self.files.drain().map(|(h, f)| (Handle(h), f)).collect();
        all.sort_by_key(|(h, _)| *h);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ino: u64, flags: i32) -> OpenFile {
        OpenFile {
            ino,
            flags: flags as u32,
            kind: OpenKind::File,
        }
    }

    #[test]
    fn handles_are_numbered_once_and_released_once() {
        let mut s = Session::new(SessionId(3));
        let a = s.insert(file(10, libc::O_RDONLY)).unwrap();
        let b = s.insert(file(10, libc::O_WRONLY)).unwrap();
        assert_ne!(a, b);
        assert!(!s.get(a).unwrap().writable());
        assert!(s.get(b).unwrap().writable());
        assert_eq!(s.remove(a).map(|f| f.ino), Some(10));
        assert_eq!(s.remove(a), None);
        let c = s.insert(file(11, libc::O_RDWR)).unwrap();
        assert!(c > b, "numbers are not reused");
        assert_eq!(s.len(), 2);
        let left = s.drain();
        assert_eq!(left.iter().map(|(h, _)| *h).collect::<Vec<_>>(), [b, c]);
        assert!(s.is_empty());
    }
}
