//! The front door's types: every operation a frontend can ask of the
//! engine as an [`Op`], its answer as a [`Reply`], and the [`Request`]
//! that carries an op with the session and caller it comes from.
//!
//! Inodes are the engine's inode numbers (1 is the root); names are bytes
//! (no NUL, at most 255); offsets and lengths are bytes; modes and flags
//! are Linux's (open(2), rename(2), fallocate(2), setxattr(2)). What a
//! frontend knows about its own protocol (FUSE's opcodes and handle bits,
//! its caches' decisions) stays in the frontend: an op says what the
//! engine is asked, not why.

use crate::fs::{AtimePolicy, Attr, DirEntry, SetAttr};
use crate::server::Statfs;

use super::caller::Caller;
use super::errno::Errno;
use super::session::{Handle, SessionId};

/// Most bytes one read or write moves (16 MiB); more is EINVAL. FUSE's
/// requests are at most 1 MiB.
pub const MAX_IO_BYTES: usize = 16 << 20;

/// Most entries one readdir returns (more are capped to this).
pub const MAX_READDIR_ENTRIES: usize = 4096;

/// One operation. Errors are those of the fs layer's function of the same
/// name (docs/ARCHITECTURE.md, engine::fs), as errnos.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    // ---- names and attributes ----
    /// The entry `name` in directory `parent` -> `Reply::Attr`.
    Lookup { parent: u64, name: Vec<u8> },
    /// Inode `ino` itself, for a file handle's decoding ("." in an inode
    /// number; no permission check, ESTALE-worthy ENOENT for an inode
    /// without links) -> `Reply::Attr`.
    LookupHandle { ino: u64 },
    /// The parent of directory `dir`, for a file handle's decoding ("..")
    /// -> `Reply::Attr`.
    LookupHandleParent { dir: u64 },
    /// -> `Reply::Attr`.
    Getattr { ino: u64 },
    /// Change what `set` says. `handle`, when the change comes through an
    /// open file (ftruncate, O_TRUNC), is looked up in the session: a
    /// handle open for writing lets a truncate by without another write
    /// check (`set.handle_writable` is taken from it, never from the
    /// request) -> `Reply::Attr`.
    Setattr {
        ino: u64,
        set: SetAttr,
        handle: Option<Handle>,
    },
    /// access(2): `mask` of MAY_READ | MAY_WRITE | MAY_EXEC (other bits
    /// are ignored) -> `Reply::Done`.
    Access { ino: u64, mask: u32 },
    /// A symlink's target -> `Reply::Data`.
    Readlink { ino: u64 },
    /// -> `Reply::Attr`. `mode` carries the type; the caller's umask
    /// applies unless the directory has a default ACL.
    Mknod {
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        rdev: u32,
    },
    /// -> `Reply::Attr`.
    Mkdir {
        parent: u64,
        name: Vec<u8>,
        mode: u32,
    },
    /// -> `Reply::Attr`.
    Symlink {
        parent: u64,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    /// A new name for `ino` -> `Reply::Attr`.
    Link {
        ino: u64,
        parent: u64,
        name: Vec<u8>,
    },
    /// -> `Reply::Done`.
    Unlink { parent: u64, name: Vec<u8> },
    /// -> `Reply::Done`.
    Rmdir { parent: u64, name: Vec<u8> },
    /// rename(2) with renameat2's `flags` (RENAME_NOREPLACE,
    /// RENAME_EXCHANGE) -> `Reply::Done`.
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        flags: u32,
    },

    // ---- files ----
    /// open(2) of an existing inode with open `flags` (the access mode,
    /// O_TRUNC, and the kernel's __FMODE_EXEC for an execve, which needs
    /// only execute permission). Takes a handle in the session.
    /// `report_free`: also say how many data bytes are free (0 if the
    /// engine can't tell), in the same turn -> `Reply::Opened`.
    Open {
        ino: u64,
        flags: u32,
        report_free: bool,
    },
    /// Create and open a regular file -> `Reply::Opened`.
    Create {
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        flags: u32,
        report_free: bool,
    },
    /// O_TMPFILE: an open regular file in `parent` without a name (an
    /// orphan until linked) -> `Reply::Opened`.
    Tmpfile { parent: u64, mode: u32, flags: u32 },
    /// Up to `len` bytes at `offset` (fewer at the end of the file) ->
    /// `Reply::Data`.
    Read { ino: u64, offset: u64, len: u32 },
    /// write(2) by the caller (drops setuid/setgid and capabilities as
    /// Linux does) -> `Reply::Written`, possibly short.
    Write {
        ino: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// Pages a frontend's kernel cached and writes back now (FUSE's
    /// writeback cache, stores through a shared mapping): drops no
    /// privileges, and a write that stops short is its error ->
    /// `Reply::Written`.
    WriteBack {
        ino: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// fallocate(2) with its `mode` bits -> `Reply::Done`.
    Fallocate {
        ino: u64,
        mode: u32,
        offset: u64,
        len: u64,
    },
    /// lseek(2) SEEK_DATA (`want_data`) or SEEK_HOLE -> `Reply::Position`.
    SeekData {
        ino: u64,
        offset: u64,
        want_data: bool,
    },
    /// fsync(2)/fdatasync(2) of a file or directory: commits everything
    /// open -> `Reply::Synced`.
    Fsync { ino: u64, datasync: bool },
    /// Give a handle back (close(2)'s last reference) -> `Reply::Done`.
    Release { handle: Handle },
    /// The data device's free bytes -> `Reply::FreeBytes`.
    FreeSpace,

    // ---- directories ----
    /// Open a directory for reading; also says where its first readdir
    /// pass ends (`Fs::readdir_pass_end`) -> `Reply::OpenedDir`.
    Opendir { ino: u64, flags: u32 },
    /// Where a readdir pass begun now ends -> `Reply::Position`.
    ReaddirPassEnd { ino: u64 },
    /// Up to `max` entries from position `from` below `end` ("." and ".."
    /// first); with `touch_atime` the directory's atime follows the
    /// mount's policy first, as a getdents does -> `Reply::Entries`.
    Readdir {
        ino: u64,
        from: u64,
        end: u64,
        max: usize,
        touch_atime: bool,
    },
    /// Readdir with each entry's attributes (`None`: removed since the
    /// listing); with `note_no_acl`, also which entries have no access
    /// ACL -> `Reply::EntriesPlus`.
    ReaddirPlus {
        ino: u64,
        from: u64,
        end: u64,
        max: usize,
        touch_atime: bool,
        note_no_acl: bool,
    },
    /// Give a directory handle back -> `Reply::Done`.
    Releasedir { handle: Handle },

    // ---- extended attributes ----
    /// setxattr(2) with XATTR_CREATE / XATTR_REPLACE `flags` ->
    /// `Reply::Done`.
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    /// -> `Reply::Data`.
    GetXattr { ino: u64, name: Vec<u8> },
    /// -> `Reply::Names`.
    ListXattrs { ino: u64 },
    /// -> `Reply::Done`.
    RemoveXattr { ino: u64, name: Vec<u8> },
    /// The kernel's own removal of security.capability before a write
    /// (killpriv), which it checked already -> `Reply::Done`.
    KillCapability { ino: u64 },

    // ---- the volume ----
    /// -> `Reply::Statfs`.
    Statfs,
    /// syncfs(2): commit -> `Reply::Synced`.
    Syncfs,
    /// The frontend's kernel no longer references these inodes (their
    /// lookup counts reached 0 in `KernelRefs`): delete the unlinked ones
    /// -> `Reply::Forgotten`, which lists the failures.
    Forgotten { inos: Vec<u64> },

    // ---- sessions (handled by the dispatcher) ----
    /// Start the request's session (its id from `Engine::new_session_id`)
    /// -> `Reply::Done`; EEXIST if it exists.
    OpenSession,
    /// End the request's session, releasing every handle it holds ->
    /// `Reply::Done`.
    CloseSession,

    // ---- admin (root only, EPERM otherwise; but Stats) ----
    /// Commit the open transaction now -> `Reply::Synced`.
    Commit,
    /// The mount's options changed (atime policy, read-only) ->
    /// `Reply::Done`.
    Remount { atime: AtimePolicy, read_only: bool },
    /// The engine's counters: the volume's and, per op kind, the count,
    /// errors and latency from submit to completion (open to every caller:
    /// counts reveal no file's data or name) -> `Reply::Stats`.
    Stats,
    /// Start the per-op counters and latencies again -> `Reply::Done`.
    ResetStats,
    // Archive operations (stage, release, data-waiting, search-xattrs)
    // come here.
}

macro_rules! op_kinds {
    ($($kind:ident => $name:literal),* $(,)?) => {
        /// An op's kind, without its arguments: what the engine counts
        /// and times per request type.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OpKind { $($kind),* }

        impl OpKind {
            /// Every kind, in declaration order (`kind as usize` indexes it).
            pub const ALL: &'static [OpKind] = &[$(OpKind::$kind),*];

            /// The kind's name in counters (`op_<name>_count`, ...).
            pub fn name(self) -> &'static str {
                match self { $(OpKind::$kind => $name),* }
            }
        }
    };
}

op_kinds! {
    Lookup => "lookup",
    LookupHandle => "lookup_handle",
    LookupHandleParent => "lookup_handle_parent",
    Getattr => "getattr",
    Setattr => "setattr",
    Access => "access",
    Readlink => "readlink",
    Mknod => "mknod",
    Mkdir => "mkdir",
    Symlink => "symlink",
    Link => "link",
    Unlink => "unlink",
    Rmdir => "rmdir",
    Rename => "rename",
    Open => "open",
    Create => "create",
    Tmpfile => "tmpfile",
    Read => "read",
    Write => "write",
    WriteBack => "write_back",
    Fallocate => "fallocate",
    SeekData => "seek_data",
    Fsync => "fsync",
    Release => "release",
    FreeSpace => "free_space",
    Opendir => "opendir",
    ReaddirPassEnd => "readdir_pass_end",
    Readdir => "readdir",
    ReaddirPlus => "readdirplus",
    Releasedir => "releasedir",
    SetXattr => "setxattr",
    GetXattr => "getxattr",
    ListXattrs => "listxattr",
    RemoveXattr => "removexattr",
    KillCapability => "kill_capability",
    Statfs => "statfs",
    Syncfs => "syncfs",
    Forgotten => "forgotten",
    OpenSession => "open_session",
    CloseSession => "close_session",
    Commit => "commit",
    Remount => "remount",
    Stats => "stats",
    ResetStats => "reset_stats",
}

impl OpKind {
    /// Only root may ask (EPERM otherwise).
    pub fn is_admin(self) -> bool {
        matches!(self, OpKind::Commit | OpKind::Remount | OpKind::ResetStats)
    }
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Lookup { .. } => OpKind::Lookup,
            Op::LookupHandle { .. } => OpKind::LookupHandle,
            Op::LookupHandleParent { .. } => OpKind::LookupHandleParent,
            Op::Getattr { .. } => OpKind::Getattr,
            Op::Setattr { .. } => OpKind::Setattr,
            Op::Access { .. } => OpKind::Access,
            Op::Readlink { .. } => OpKind::Readlink,
            Op::Mknod { .. } => OpKind::Mknod,
            Op::Mkdir { .. } => OpKind::Mkdir,
            Op::Symlink { .. } => OpKind::Symlink,
            Op::Link { .. } => OpKind::Link,
            Op::Unlink { .. } => OpKind::Unlink,
            Op::Rmdir { .. } => OpKind::Rmdir,
            Op::Rename { .. } => OpKind::Rename,
            Op::Open { .. } => OpKind::Open,
            Op::Create { .. } => OpKind::Create,
            Op::Tmpfile { .. } => OpKind::Tmpfile,
            Op::Read { .. } => OpKind::Read,
            Op::Write { .. } => OpKind::Write,
            Op::WriteBack { .. } => OpKind::WriteBack,
            Op::Fallocate { .. } => OpKind::Fallocate,
            Op::SeekData { .. } => OpKind::SeekData,
            Op::Fsync { .. } => OpKind::Fsync,
            Op::Release { .. } => OpKind::Release,
            Op::FreeSpace => OpKind::FreeSpace,
            Op::Opendir { .. } => OpKind::Opendir,
            Op::ReaddirPassEnd { .. } => OpKind::ReaddirPassEnd,
            Op::Readdir { .. } => OpKind::Readdir,
            Op::ReaddirPlus { .. } => OpKind::ReaddirPlus,
            Op::Releasedir { .. } => OpKind::Releasedir,
            Op::SetXattr { .. } => OpKind::SetXattr,
            Op::GetXattr { .. } => OpKind::GetXattr,
            Op::ListXattrs { .. } => OpKind::ListXattrs,
            Op::RemoveXattr { .. } => OpKind::RemoveXattr,
            Op::KillCapability { .. } => OpKind::KillCapability,
            Op::Statfs => OpKind::Statfs,
            Op::Syncfs => OpKind::Syncfs,
            Op::Forgotten { .. } => OpKind::Forgotten,
            Op::OpenSession => OpKind::OpenSession,
            Op::CloseSession => OpKind::CloseSession,
            Op::Commit => OpKind::Commit,
            Op::Remount { .. } => OpKind::Remount,
            Op::Stats => OpKind::Stats,
            Op::ResetStats => OpKind::ResetStats,
        }
    }
}

/// An operation's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// It happened; nothing to say.
    Done,
    /// The inode's attributes (after the change, for a change).
    Attr(Attr),
    /// An open file: the session's handle, the inode's attributes, the
    /// free data bytes if the open asked (`report_free`), and whether a
    /// read now would change the file's atime (the mount's atime policy;
    /// `Fs::atime_due_now`): a frontend must then let its reads reach
    /// the engine rather than serve them from pages an earlier open left.
    Opened {
        handle: Handle,
        attr: Attr,
        free_bytes: Option<u64>,
        atime_due: bool,
    },
    /// An open directory and where its first readdir pass ends.
    OpenedDir {
        handle: Handle,
        pass_end: u64,
    },
    /// File contents, a symlink target or an xattr value.
    Data(Vec<u8>),
    /// Bytes written.
    Written(u64),
    /// Xattr names.
    Names(Vec<Vec<u8>>),
    Entries(Vec<DirEntry>),
    /// Entries with their attributes (`None`: gone since the listing) and
    /// the inodes among them without an access ACL (when asked).
    EntriesPlus {
        entries: Vec<(DirEntry, Option<Attr>)>,
        no_access_acl: Vec<u64>,
    },
    /// A byte offset or a readdir position.
    Position(u64),
    FreeBytes(u64),
    Statfs(Statfs),
    /// Committed: the last durable transaction seq.
    Synced {
        seq: u64,
    },
    /// The inodes of a `Forgotten` whose deletion failed.
    Forgotten {
        failed: Vec<(u64, Errno)>,
    },
    /// `name value` counters (values in their own units; latencies in
    /// microseconds).
    Stats(Vec<(String, u64)>),
}

/// Take the expected variant out of a reply, or say it was another (an
/// engine bug, logged, EIO to the frontend's caller).
macro_rules! reply_into {
    ($(#[$doc:meta] $fn:ident -> $t:ty, $pat:pat => $v:expr;)*) => {
        impl Reply {
            $(
                #[$doc]
                pub fn $fn(self) -> Result<$t, Errno> {
                    match self {
                        $pat => Ok($v),
                        other => Err(mismatch(stringify!($fn), &other)),
                    }
                }
            )*
        }
    };
}

fn mismatch(want: &str, got: &Reply) -> Errno {
    tracing::error!("engine bug: {want} wanted, the reply was {got:?}");
    debug_assert!(false, "{want} wanted, the reply was {got:?}");
    Errno::MISMATCH
}

reply_into! {
    /// `Reply::Done`.
    done -> (), Reply::Done => ();
    /// `Reply::Attr`.
    into_attr -> Attr, Reply::Attr(a) => a;
    /// `Reply::Opened`: (handle, attributes, free bytes if asked).
    into_opened -> (Handle, Attr, Option<u64>),
        Reply::Opened { handle, attr, free_bytes, .. } => (handle, attr, free_bytes);
    /// `Reply::OpenedDir`: (handle, end of the first pass).
    into_opened_dir -> (Handle, u64), Reply::OpenedDir { handle, pass_end } => (handle, pass_end);
    /// `Reply::Data`.
    into_data -> Vec<u8>, Reply::Data(d) => d;
    /// `Reply::Written`.
    into_written -> u64, Reply::Written(n) => n;
    /// `Reply::Names`.
    into_names -> Vec<Vec<u8>>, Reply::Names(n) => n;
    /// `Reply::Entries`.
    into_entries -> Vec<DirEntry>, Reply::Entries(e) => e;
    /// `Reply::EntriesPlus`: (entries, inodes without an access ACL).
    into_entries_plus -> (Vec<(DirEntry, Option<Attr>)>, Vec<u64>),
        Reply::EntriesPlus { entries, no_access_acl } => (entries, no_access_acl);
    /// `Reply::Position`.
    into_position -> u64, Reply::Position(p) => p;
    /// `Reply::FreeBytes`.
    into_free_bytes -> u64, Reply::FreeBytes(n) => n;
    /// `Reply::Statfs`.
    into_statfs -> Statfs, Reply::Statfs(s) => s;
    /// `Reply::Synced`: the committed seq.
    into_synced -> u64, Reply::Synced { seq } => seq;
    /// `Reply::Forgotten`: the failures.
    into_forgotten -> Vec<(u64, Errno)>, Reply::Forgotten { failed } => failed;
    /// `Reply::Stats`.
    into_stats -> Vec<(String, u64)>, Reply::Stats(s) => s;
}

impl Reply {
    /// For `Reply::Opened`: a read now would change the file's atime
    /// (false for any other reply).
    pub fn opened_atime_due(&self) -> bool {
        matches!(
            self,
            Reply::Opened {
                atime_due: true,
                ..
            }
        )
    }
}

/// An op with where it comes from: the session (whose handles it may use
/// or take) and the caller, from the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub session: SessionId,
    pub caller: Caller,
    pub op: Op,
}

impl Request {
    pub fn new(session: SessionId, caller: Caller, op: Op) -> Request {
        Request {
            session,
            caller,
            op,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_index_their_table_and_have_unique_names() {
        for (i, k) in OpKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        let mut names: Vec<_> = OpKind::ALL.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), OpKind::ALL.len());
    }

    #[test]
    fn only_changes_to_the_engine_itself_are_admin() {
        assert!(Op::Commit.kind().is_admin());
        assert!(Op::ResetStats.kind().is_admin());
        assert!(!Op::Stats.kind().is_admin());
        assert!(!Op::Syncfs.kind().is_admin());
        assert!(!Op::Getattr { ino: 1 }.kind().is_admin());
    }

    #[test]
    fn a_reply_gives_what_was_asked() {
        assert_eq!(Reply::Written(7).into_written(), Ok(7));
        assert_eq!(Reply::Done.done(), Ok(()));
        assert_eq!(Reply::Position(3).into_position(), Ok(3));
    }
}
