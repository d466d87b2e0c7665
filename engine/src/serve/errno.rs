//! The one errno map of the front door: what a frontend returns to its
//! client when an operation fails. Filesystem errors keep the errno the fs
//! layer gives them (`FsError::errno`, exact: ENOENT, EEXIST, ENOSPC, ...);
//! the engine's own failures (stopped, its queue full) get theirs here.

use crate::fs::FsError;
use crate::reactor::ReactorError;

use super::EngineError;

/// A positive Linux errno, as an operation's failure travels from the
/// engine to a frontend. Frontends turn it into their own error form
/// (`std::io::Error`, a negative errno in a FUSE reply, a ring entry's
/// status) and nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// The engine has stopped (or is stopping): nothing is served.
    pub const SHUTDOWN: Errno = Errno(libc::ESHUTDOWN);
    /// The engine's submission queue is full: submit again later.
    pub const AGAIN: Errno = Errno(libc::EAGAIN);
    /// A reply of the wrong kind for its operation (an engine bug),
    /// reported as an I/O error rather than a panic in a frontend.
    pub const MISMATCH: Errno = Errno(libc::EIO);

    /// The raw errno.
    pub fn get(self) -> i32 {
        self.0
    }

    /// The engine, not the caller, failed: no space, I/O, read-only, or
    /// the engine stopped. Everything else is the caller's answer
    /// (ENOENT, EEXIST, EACCES, ...).
    pub fn is_volume_failure(self) -> bool {
        matches!(
            self.0,
            libc::ENOSPC | libc::EIO | libc::EROFS | libc::ESHUTDOWN | libc::EAGAIN
        )
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (errno {})",
            std::io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

impl From<&FsError> for Errno {
    fn from(e: &FsError) -> Errno {
        Errno(e.errno())
    }
}

impl From<FsError> for Errno {
    fn from(e: FsError) -> Errno {
        Errno::from(&e)
    }
}

impl From<&ReactorError> for Errno {
    fn from(e: &ReactorError) -> Errno {
        match e {
            ReactorError::Full => Errno::AGAIN,
            ReactorError::Stopped | ReactorError::Start(_) => Errno::SHUTDOWN,
        }
    }
}

impl From<&EngineError> for Errno {
    fn from(e: &EngineError) -> Errno {
        match e {
            EngineError::Reactor(r) => Errno::from(r),
            e => Errno(e.errno()),
        }
    }
}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_its_exact_errno() {
        let fs = [
            (FsError::NotFound, libc::ENOENT),
            (FsError::Exists, libc::EEXIST),
            (FsError::NotEmpty, libc::ENOTEMPTY),
            (FsError::NameTooLong, libc::ENAMETOOLONG),
            (FsError::NoSpace(String::new()), libc::ENOSPC),
            (FsError::ReadOnly(String::new()), libc::EROFS),
            (FsError::Perm, libc::EPERM),
            (FsError::Access, libc::EACCES),
            (FsError::Io(String::new()), libc::EIO),
        ];
        for (e, errno) in fs {
            assert_eq!(Errno::from(&e), Errno(errno), "{e:?}");
        }
        assert_eq!(Errno::from(&ReactorError::Full), Errno(libc::EAGAIN));
        assert_eq!(Errno::from(&ReactorError::Stopped), Errno(libc::ESHUTDOWN));
        assert_eq!(
            Errno::from(&EngineError::Reactor(ReactorError::Full)),
            Errno(libc::EAGAIN)
        );
        assert_eq!(Errno::from(&EngineError::NotMounted), Errno::SHUTDOWN);
        assert_eq!(
            Errno::from(&EngineError::Fs(FsError::NotDir)),
            Errno(libc::ENOTDIR)
        );
        let io = std::io::Error::from(Errno(libc::ENOENT));
        assert_eq!(io.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn the_volume_failing_is_told_from_the_callers_answer() {
        for e in [libc::ENOSPC, libc::EIO, libc::EROFS, libc::ESHUTDOWN] {
            assert!(Errno(e).is_volume_failure(), "{e}");
        }
        for e in [libc::ENOENT, libc::EEXIST, libc::EACCES, libc::ENODATA] {
            assert!(!Errno(e).is_volume_failure(), "{e}");
        }
    }
}
