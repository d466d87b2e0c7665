//! The item layer's error: what a store's reads, writes, grants and
//! commits fail with, as the layers above see it. `data` and `fs` each
//! convert it into their own error, variant for variant; the errno is the
//! same at every floor.

use crate::format::BlockRef;
use crate::txn::TxnError;

pub type Result<T, E = ItemError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("no space left on device: {0}")]
    NoSpace(String),
    #[error("read-only file system: {0}")]
    ReadOnly(String),
    /// A request the store refuses as malformed (a value too large).
    #[error("invalid argument")]
    Invalid,
    #[error("i/o error: {0}")]
    Io(String),
    /// Metadata blocks the operation needs that aren't cached: it changed
    /// nothing, and runs again once they are read. Only the engine's
    /// request task sees it (it is EIO should it ever escape).
    #[error("{} metadata blocks are not cached", .0.len())]
    NeedBlocks(Vec<BlockRef>),
    /// The operation needs commit `seq` durable (fsync, a grant of inode
    /// numbers): the engine waits for it and runs the operation again.
    #[error("waiting for commit {0}")]
    WaitCommit(u64),
    /// The operation, which has changed nothing, waits for commit `seq`
    /// (too much is dirty while it is written) and runs again.
    #[error("throttled until commit {0}")]
    Throttled(u64),
    /// The node holds no grant covering a key the operation, which has
    /// changed nothing, touches (`item::locks`): the engine takes the
    /// locks and runs it again.
    #[error("waiting for lock grants")]
    NeedLocks,
}

impl ItemError {
    /// The errno this error becomes when it reaches a frontend.
    pub fn errno(&self) -> i32 {
        match self {
            ItemError::NoSpace(_) => libc::ENOSPC,
            ItemError::ReadOnly(_) => libc::EROFS,
            ItemError::Invalid => libc::EINVAL,
            ItemError::Io(_)
            | ItemError::NeedBlocks(_)
            | ItemError::WaitCommit(_)
            | ItemError::Throttled(_)
            | ItemError::NeedLocks => libc::EIO,
        }
    }
}

/// A volume's error becomes the item error with the same errno; anything
/// without a POSIX meaning of its own is EIO. The engine's restart
/// signals (blocks to read, a commit to wait for) pass through as they
/// are.
impl From<TxnError> for ItemError {
    fn from(e: TxnError) -> Self {
        if let Some(need) = e.needed() {
            return ItemError::NeedBlocks(need);
        }
        match e {
            TxnError::WaitCommit(seq) => return ItemError::WaitCommit(seq),
            TxnError::Throttle(seq) => return ItemError::Throttled(seq),
            _ => {}
        }
        match e.errno() {
            libc::ENOSPC => ItemError::NoSpace(e.to_string()),
            libc::EROFS => ItemError::ReadOnly(e.to_string()),
            libc::EINVAL => ItemError::Invalid,
            _ => ItemError::Io(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ServerError;

    #[test]
    fn volume_errors_keep_their_errno() {
        let ro = ItemError::from(TxnError::ReadOnly("commit failed".into()));
        assert_eq!(ro.errno(), libc::EROFS);
        let inval = ItemError::from(TxnError::ValueTooLarge(1000));
        assert_eq!(inval.errno(), libc::EINVAL);
        let nospc = ItemError::from(TxnError::Server(ServerError::NoSpace("meta".into())));
        assert_eq!(nospc.errno(), libc::ENOSPC);
        let io = ItemError::from(TxnError::Server(ServerError::Io("dev".into())));
        assert_eq!(io.errno(), libc::EIO);
    }

    #[test]
    fn restart_signals_pass_through() {
        assert_eq!(
            ItemError::from(TxnError::WaitCommit(7)),
            ItemError::WaitCommit(7)
        );
        assert_eq!(
            ItemError::from(TxnError::Throttle(9)),
            ItemError::Throttled(9)
        );
        let need = vec![BlockRef::default()];
        assert_eq!(
            ItemError::from(TxnError::Need(need.clone())),
            ItemError::NeedBlocks(need.clone())
        );
        for e in [
            ItemError::NeedBlocks(need),
            ItemError::WaitCommit(1),
            ItemError::Throttled(1),
        ] {
            assert_eq!(e.errno(), libc::EIO);
        }
    }
}
