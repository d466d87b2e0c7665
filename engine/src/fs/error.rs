//! The fs layer's error: one variant per errno a POSIX operation can
//! return, so frontends map it with [`FsError::errno`] and nothing else.
//! The item store's errors ([`ItemError`], here) and file data's
//! (`DataError`, in file.rs) convert into it; the engine's restart
//! signals among them arrive unchanged.

use crate::item::ItemError;

pub type Result<T, E = FsError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long")]
    NameTooLong,
    #[error("too many links")]
    TooManyLinks,
    #[error("no space left on device: {0}")]
    NoSpace(String),
    #[error("read-only file system: {0}")]
    ReadOnly(String),
    #[error("invalid argument")]
    Invalid,
    #[error("operation not permitted")]
    Perm,
    #[error("permission denied")]
    Access,
    #[error("no such attribute")]
    NoData,
    #[error("name or buffer out of range")]
    Range,
    #[error("argument list too long (xattr value over 65535 bytes)")]
    TooBig,
    #[error("operation not supported (unknown xattr namespace)")]
    NotSupported,
    #[error("device or resource busy")]
    Busy,
    #[error("i/o error: {0}")]
    Io(String),
    #[error("file too large")]
    FileTooBig,
    #[error("no such device or address (seek past the data)")]
    NoSuchAddress,
    #[error("illegal seek (fallocate on a fifo)")]
    IllegalSeek,
    #[error("no such device (fallocate on a special file)")]
    NoDevice,
    /// Metadata blocks the operation needs that aren't cached: it changed
    /// nothing, and runs again once they are read. Only the engine's
    /// request task sees it (it is EIO should it ever escape).
    #[error("{} metadata blocks are not cached", .0.len())]
    NeedBlocks(Vec<crate::format::BlockRef>),
    /// The operation needs commit `seq` durable (fsync, a grant of inode
    /// numbers): the engine waits for it and runs the operation again.
    /// Only the engine's request task sees it.
    #[error("waiting for commit {0}")]
    WaitCommit(u64),
    /// The operation, which has changed nothing, waits for commit `seq`
    /// (too much is dirty while it is written) and runs again.
    #[error("throttled until commit {0}")]
    Throttled(u64),
    /// File data blocks the operation needs that aren't in memory (the
    /// data cache holds the list): it changed nothing, and runs again once
    /// they are read. Only the engine's request task sees it.
    #[error("file data blocks are not cached")]
    NeedData,
    /// The operation, which has changed nothing, writes file data while
    /// the dirty buffer is full: it waits for write-back and runs again.
    #[error("waiting for file data write-back")]
    WaitWriteBack,
    /// The operation, which has changed nothing, touches items under
    /// locks this node holds no grant for (`item::locks`): the engine
    /// takes them and runs it again. Only the engine's request task sees
    /// it.
    #[error("waiting for lock grants")]
    NeedLocks,
}

impl FsError {
    /// The errno a frontend returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::ReadOnly(_) => libc::EROFS,
            FsError::Invalid => libc::EINVAL,
            FsError::Perm => libc::EPERM,
            FsError::Access => libc::EACCES,
            FsError::NoData => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::TooBig => libc::E2BIG,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::Busy => libc::EBUSY,
            FsError::Io(_) => libc::EIO,
            FsError::FileTooBig => libc::EFBIG,
            FsError::NoSuchAddress => libc::ENXIO,
            FsError::IllegalSeek => libc::ESPIPE,
            FsError::NoDevice => libc::ENODEV,
            FsError::NeedBlocks(_)
            | FsError::WaitCommit(_)
            | FsError::Throttled(_)
            | FsError::NeedData
            | FsError::WaitWriteBack
            | FsError::NeedLocks => libc::EIO,
        }
    }

    /// Whether the operation, having changed nothing, ended to be run
    /// again once what it missed is at hand: metadata blocks, file data
    /// blocks or lock grants. Code that swallows other errors (an atime
    /// not stored) must pass these on.
    pub fn is_miss(&self) -> bool {
        matches!(
            self,
            FsError::NeedBlocks(_) | FsError::NeedData | FsError::NeedLocks
        )
    }

    /// The blocks to read before running the operation again, if this is
    /// a deferred miss.
    pub fn needed(&self) -> Option<&[crate::format::BlockRef]> {
        match self {
            FsError::NeedBlocks(v) => Some(v),
            _ => None,
        }
    }

    /// A stored item that doesn't decode: corruption, reported as EIO.
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> FsError {
        tracing::error!("corrupt fs item: {what}");
        FsError::Io(format!("corrupt fs item: {what}"))
    }
}

/// An item store error becomes the fs error with the same errno and
/// message; the restart signals keep their meaning.
impl From<ItemError> for FsError {
    fn from(e: ItemError) -> Self {
        match e {
            ItemError::NoSpace(why) => FsError::NoSpace(why),
            ItemError::ReadOnly(why) => FsError::ReadOnly(why),
            ItemError::Invalid => FsError::Invalid,
            ItemError::Io(why) => FsError::Io(why),
            ItemError::NeedBlocks(need) => FsError::NeedBlocks(need),
            ItemError::WaitCommit(seq) => FsError::WaitCommit(seq),
            ItemError::Throttled(seq) => FsError::Throttled(seq),
            ItemError::NeedLocks => FsError::NeedLocks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_is_exact() {
        let cases = [
            (FsError::NotFound, libc::ENOENT),
            (FsError::Exists, libc::EEXIST),
            (FsError::NotDir, libc::ENOTDIR),
            (FsError::IsDir, libc::EISDIR),
            (FsError::NotEmpty, libc::ENOTEMPTY),
            (FsError::NameTooLong, libc::ENAMETOOLONG),
            (FsError::TooManyLinks, libc::EMLINK),
            (FsError::NoSpace(String::new()), libc::ENOSPC),
            (FsError::ReadOnly(String::new()), libc::EROFS),
            (FsError::Invalid, libc::EINVAL),
            (FsError::Perm, libc::EPERM),
            (FsError::Access, libc::EACCES),
            (FsError::NoData, libc::ENODATA),
            (FsError::Range, libc::ERANGE),
            (FsError::TooBig, libc::E2BIG),
            (FsError::NotSupported, libc::EOPNOTSUPP),
            (FsError::Busy, libc::EBUSY),
            (FsError::Io(String::new()), libc::EIO),
            (FsError::FileTooBig, libc::EFBIG),
            (FsError::NoSuchAddress, libc::ENXIO),
            (FsError::IllegalSeek, libc::ESPIPE),
            (FsError::NoDevice, libc::ENODEV),
        ];
        for (e, errno) in cases {
            assert_eq!(e.errno(), errno, "{e:?}");
        }
    }

    #[test]
    fn item_errors_keep_their_errno_and_message() {
        let cases = [
            ItemError::NoSpace("meta".into()),
            ItemError::ReadOnly("commit failed".into()),
            ItemError::Invalid,
            ItemError::Io("dev".into()),
            ItemError::NeedBlocks(vec![crate::format::BlockRef::default()]),
            ItemError::WaitCommit(3),
            ItemError::Throttled(4),
        ];
        for e in cases {
            let fs = FsError::from(e.clone());
            assert_eq!(fs.errno(), e.errno(), "{e:?}");
            assert_eq!(fs.to_string(), e.to_string(), "{e:?}");
        }
        assert_eq!(
            FsError::from(ItemError::WaitCommit(3)),
            FsError::WaitCommit(3)
        );
        assert_eq!(
            FsError::from(ItemError::Throttled(4)),
            FsError::Throttled(4)
        );
    }

    #[test]
    fn data_errors_keep_their_errno() {
        use crate::data::DataError;
        let cases = [
            DataError::Store(ItemError::NoSpace("data".into())),
            DataError::Store(ItemError::ReadOnly("commit failed".into())),
            DataError::Offline { ino: 5, iblock: 0 },
            DataError::TooBig(1),
            DataError::NeedData,
            DataError::WaitWriteBack,
        ];
        for e in cases {
            let errno = e.errno();
            assert_eq!(FsError::from(e).errno(), errno);
        }
        assert_eq!(FsError::from(DataError::NeedData), FsError::NeedData);
        assert_eq!(
            FsError::from(DataError::WaitWriteBack),
            FsError::WaitWriteBack
        );
        assert_eq!(
            FsError::from(DataError::Store(ItemError::NeedBlocks(Vec::new()))),
            FsError::NeedBlocks(Vec::new())
        );
    }
}
