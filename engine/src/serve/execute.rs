//! Running one op against the mounted filesystem: the only place an
//! [`Op`] turns into calls of the fs layer. The dispatcher (inbox.rs)
//! calls [`execute`] on the reactor thread for each submitted request, in
//! submission order, and delivers what it returns.
//!
//! Today an op runs to completion in one reactor turn: the fs futures are
//! driven with [`ready`] over the synchronous `Volume`. Making ops reactor
//! tasks that await their reads (miss-and-restart) changes this function
//! and the dispatcher only; no frontend sees it. To keep that possible, an
//! op takes what it holds (a handle, a lookup count) only after the reads
//! that could miss, or gives it back when a later step fails.

use crate::fs::{FileType, FsError, MAY_EXEC, MAY_READ, MAY_WRITE};
use crate::util::ready;

use super::caller::Caller;
use super::changes::{self, Wanted};
use super::op::{Op, Reply, MAX_IO_BYTES, MAX_READDIR_ENTRIES};
use super::session::{Handle, OpenFile, OpenKind, Session, MAX_HANDLES};
use super::Mounted;

/// The access mode bits of `Fs::access`'s mask.
const ACCESS_MASK: u32 = MAY_READ | MAY_WRITE | MAY_EXEC;

/// The access ACL's xattr, for `ReaddirPlus { note_no_acl }`.
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";

/// `__FMODE_EXEC` in an open's flags: the kernel opening a file to
/// execute it (execve, binfmt interpreters). Set only by the kernel:
/// open(2) drops bits outside VALID_OPEN_FLAGS, so a frontend passes the
/// flags its kernel sent and no client can claim it.
pub const FMODE_EXEC: i32 = 0o40;

/// The access an open with these flags needs. An open for execution
/// needs execute permission only, as the VFS's `do_open_execat`: the
/// kernel reads the image itself, so a file that is x but not r runs.
pub fn open_mask(flags: u32) -> u32 {
    let f = flags as i32;
    if f & FMODE_EXEC != 0 {
        return MAY_EXEC;
    }
    let mut mask = match f & libc::O_ACCMODE {
        libc::O_RDONLY => MAY_READ,
        libc::O_WRONLY => MAY_WRITE,
        _ => MAY_READ | MAY_WRITE,
    };
    if f & libc::O_TRUNC != 0 {
        mask |= MAY_WRITE;
    }
    mask
}

/// The data device's free bytes, for an open that asked; 0 (the safe
/// answer for a frontend choosing how to cache) if the engine can't say.
fn free_bytes(fs: &mut Mounted) -> u64 {
    ready(fs.free_data_bytes()).unwrap_or(0)
}

/// Record a new handle of `session` on `ino`; the fs open count was
/// taken. A full table gives the open count back and fails the open.
fn take_handle(fs: &mut Mounted, session: &mut Session, file: OpenFile) -> Result<Handle, FsError> {
    match session.insert(file) {
        Some(h) => Ok(h),
        None => {
            ready(fs.release(file.ino))?;
            Err(FsError::NoSpace(format!(
                "session {} holds {MAX_HANDLES} handles, its most",
                session.id().0
            )))
        }
    }
}

/// Give back handle `h` of `session`, which must be of `kind`: EINVAL if
/// it isn't open there.
fn release_handle(
    fs: &mut Mounted,
    session: &mut Session,
    h: Handle,
    kind: OpenKind,
) -> Result<Reply, FsError> {
    match session.get(h) {
        Some(f) if f.kind == kind => {}
        _ => return Err(FsError::Invalid),
    }
    let file = session.remove(h).ok_or(FsError::Invalid)?;
    ready(fs.release(file.ino))?;
    Ok(Reply::Done)
}

/// Run `op` for `caller` in `session` on the mounted filesystem; its
/// reply, or the fs layer's error (a frontend sends `Errno::from` it).
/// Admin ops are refused with EPERM unless the caller is root. The
/// dispatcher's own ops (sessions, stats) never come here (EINVAL).
///
/// What a successful op changed is published as change events to the
/// frontends subscribed to other sessions' changes (changes.rs), before
/// this returns; what the events need is read before the op changes
/// anything, so an attempt still misses only before its first change.
pub fn execute(
    fs: &mut Mounted,
    caller: &Caller,
    session: &mut Session,
    op: &Op,
) -> Result<Reply, FsError> {
    let feed = changes::feed();
    let names = match feed.as_ref().map(|f| f.wanted(session.id())) {
        Some(Wanted::Yes { names }) => names,
        _ => return run_op(fs, caller, session, op),
    };
    let before = changes::read_before(fs, op, names)?;
    let reply = run_op(fs, caller, session, op)?;
    if let Some(feed) = feed {
        feed.publish(session.id(), changes::changes_of(op, &reply, before));
    }
    Ok(reply)
}

/// [`execute`] without the events.
fn run_op(
    fs: &mut Mounted,
    caller: &Caller,
    session: &mut Session,
    op: &Op,
) -> Result<Reply, FsError> {
    if op.kind().is_admin() && !caller.is_root() {
        return Err(FsError::Perm);
    }
    let c = caller.creds();
    let reply = match *op {
        Op::Lookup { parent, ref name } => Reply::Attr(ready(fs.lookup(&c, parent, name))?),
        Op::LookupHandle { ino } => Reply::Attr(ready(fs.handle_inode(ino))?),
        Op::LookupHandleParent { dir } => Reply::Attr(ready(fs.handle_parent(dir))?),
        Op::Getattr { ino } => Reply::Attr(ready(fs.getattr(ino))?),
        Op::Setattr {
            ino,
            mut set,
            handle,
        } => {
            // Only the session knows what a handle may do.
            set.handle_writable = handle
                .and_then(|h| session.get(h))
                .is_some_and(|f| f.ino == ino && f.writable());
            Reply::Attr(ready(fs.setattr(&c, ino, &set))?)
        }
        Op::Access { ino, mask } => {
            ready(fs.access(&c, ino, mask & ACCESS_MASK))?;
            Reply::Done
        }
        Op::Readlink { ino } => Reply::Data(ready(fs.readlink(ino))?),
        Op::Mknod {
            parent,
            ref name,
            mode,
            rdev,
        } => Reply::Attr(ready(fs.mknod(&c, parent, name, mode, rdev))?),
        Op::Mkdir {
            parent,
            ref name,
            mode,
        } => Reply::Attr(ready(fs.mkdir(&c, parent, name, mode))?),
        Op::Symlink {
            parent,
            ref name,
            ref target,
        } => Reply::Attr(ready(fs.symlink(&c, parent, name, target))?),
        Op::Link {
            ino,
            parent,
            ref name,
        } => Reply::Attr(ready(fs.link(&c, ino, parent, name))?),
        Op::Unlink { parent, ref name } => {
            ready(fs.unlink(&c, parent, name))?;
            Reply::Done
        }
        Op::Rmdir { parent, ref name } => {
            ready(fs.rmdir(&c, parent, name))?;
            Reply::Done
        }
        Op::Rename {
            parent,
            ref name,
            new_parent,
            ref new_name,
            flags,
        } => {
            ready(fs.rename(&c, parent, name, new_parent, new_name, flags))?;
            Reply::Done
        }
        Op::Open {
            ino,
            flags,
            report_free,
        } => {
            // Read first: nothing is held yet should it have to run again.
            let free_bytes = report_free.then(|| free_bytes(fs));
            let atime_due = ready(fs.atime_due_now(ino))?;
            let attr = ready(fs.open_ino(&c, ino, open_mask(flags)))?;
            let file = OpenFile {
                ino,
                flags,
                kind: OpenKind::File,
            };
            let handle = take_handle(fs, session, file)?;
            Reply::Opened {
                handle,
                attr,
                free_bytes,
                atime_due,
            }
        }
        Op::Create {
            parent,
            ref name,
            mode,
            flags,
            report_free,
        } => {
            let free_bytes = report_free.then(|| free_bytes(fs));
            let attr = ready(fs.create(&c, parent, name, mode))?;
            // Just written, so cached: no miss after the change.
            let atime_due = ready(fs.atime_due_now(attr.ino))?;
            // The new file is open: held in the same turn.
            fs.hold_ino(attr.ino);
            let file = OpenFile {
                ino: attr.ino,
                flags,
                kind: OpenKind::File,
            };
            let handle = take_handle(fs, session, file)?;
            Reply::Opened {
                handle,
                attr,
                free_bytes,
                atime_due,
            }
        }
        Op::Tmpfile {
            parent,
            mode,
            flags,
        } => {
            // Held open by the fs from its birth.
            let attr = ready(fs.tmpfile(&c, parent, mode))?;
            let file = OpenFile {
                ino: attr.ino,
                flags,
                kind: OpenKind::File,
            };
            let handle = take_handle(fs, session, file)?;
            Reply::Opened {
                handle,
                attr,
                free_bytes: None,
                // No earlier open left pages of a new file.
                atime_due: true,
            }
        }
        Op::Read { ino, offset, len } => {
            if len as usize > MAX_IO_BYTES {
                return Err(FsError::Invalid);
            }
            Reply::Data(ready(fs.read(ino, offset, len as usize))?)
        }
        Op::Write {
            ino,
            offset,
            ref data,
        } => {
            if data.len() > MAX_IO_BYTES {
                return Err(FsError::Invalid);
            }
            Reply::Written(ready(fs.write(&c, ino, offset, data))?)
        }
        Op::WriteBack {
            ino,
            offset,
            ref data,
        } => {
            if data.len() > MAX_IO_BYTES {
                return Err(FsError::Invalid);
            }
            Reply::Written(ready(fs.write_back(ino, offset, data))?)
        }
        Op::Fallocate {
            ino,
            mode,
            offset,
            len,
        } => {
            ready(fs.fallocate(&c, ino, mode, offset, len))?;
            Reply::Done
        }
        Op::SeekData {
            ino,
            offset,
            want_data,
        } => Reply::Position(ready(fs.seek_data(ino, offset, want_data))?),
        Op::Fsync { ino, .. } => Reply::Synced {
            seq: ready(fs.fsync(ino))?,
        },
        Op::Syncfs => Reply::Synced {
            seq: ready(fs.sync())?,
        },
        Op::Release { handle } => release_handle(fs, session, handle, OpenKind::File)?,
        Op::FreeSpace => Reply::FreeBytes(ready(fs.free_data_bytes())?),
        Op::Opendir { ino, flags } => {
            let a = ready(fs.open_ino(&c, ino, MAY_READ))?;
            let end = if a.kind != FileType::Directory {
                Err(FsError::NotDir)
            } else {
                // The handle's first readdir pass ends here.
                ready(fs.readdir_pass_end(ino))
            };
            let pass_end = match end {
                Ok(end) => end,
                Err(e) => {
                    ready(fs.release(ino))?;
                    return Err(e);
                }
            };
            let file = OpenFile {
                ino,
                flags,
                kind: OpenKind::Dir,
            };
            let handle = take_handle(fs, session, file)?;
            Reply::OpenedDir { handle, pass_end }
        }
        Op::ReaddirPassEnd { ino } => Reply::Position(ready(fs.readdir_pass_end(ino))?),
        Op::Readdir {
            ino,
            from,
            end,
            max,
            touch_atime,
        } => {
            if touch_atime {
                ready(fs.touch_atime(ino))?;
            }
            let max = max.min(MAX_READDIR_ENTRIES);
            Reply::Entries(ready(fs.readdir_until(ino, from, end, max))?)
        }
        Op::ReaddirPlus {
            ino,
            from,
            end,
            max,
            touch_atime,
            note_no_acl,
        } => {
            if touch_atime {
                ready(fs.touch_atime(ino))?;
            }
            let max = max.min(MAX_READDIR_ENTRIES);
            let list = ready(fs.readdir_until(ino, from, end, max))?;
            let mut entries = Vec::with_capacity(list.len());
            for e in list {
                // An entry removed since the listing is skipped.
                match ready(fs.getattr(e.ino)) {
                    Ok(a) => entries.push((e, Some(a))),
                    Err(FsError::NotFound) => entries.push((e, None)),
                    Err(err) => return Err(err),
                }
            }
            let mut no_access_acl = Vec::new();
            if note_no_acl {
                let root = crate::fs::Creds::root();
                for (e, _) in entries.iter().filter(|(_, a)| a.is_some()) {
                    if let Err(FsError::NoData) = ready(fs.get_xattr(&root, e.ino, ACL_ACCESS)) {
                        no_access_acl.push(e.ino);
                    }
                }
            }
            Reply::EntriesPlus {
                entries,
                no_access_acl,
            }
        }
        Op::Releasedir { handle } => release_handle(fs, session, handle, OpenKind::Dir)?,
        Op::SetXattr {
            ino,
            ref name,
            ref value,
            flags,
        } => {
            ready(fs.set_xattr(&c, ino, name, value, flags))?;
            Reply::Done
        }
        Op::GetXattr { ino, ref name } => Reply::Data(ready(fs.get_xattr(&c, ino, name))?),
        Op::ListXattrs { ino } => Reply::Names(ready(fs.list_xattrs(&c, ino))?),
        Op::RemoveXattr { ino, ref name } => {
            ready(fs.remove_xattr(&c, ino, name))?;
            Reply::Done
        }
        Op::KillCapability { ino } => {
            ready(fs.kill_capability(ino))?;
            Reply::Done
        }
        Op::Statfs => Reply::Statfs(ready(fs.statfs())?),
        Op::Forgotten { ref inos } => {
            let mut failed = Vec::new();
            for &ino in inos {
                if let Err(e) = ready(fs.forgotten(ino)) {
                    tracing::warn!("deleting unlinked inode {ino} at its last FORGET: {e}");
                    failed.push((ino, e.into()));
                }
            }
            Reply::Forgotten { failed }
        }
        Op::Commit => Reply::Synced {
            seq: ready(fs.sync())?,
        },
        Op::Remount { atime, read_only } => {
            ready(fs.remount(atime, read_only))?;
            Reply::Done
        }
        Op::OpenSession | Op::CloseSession | Op::Stats | Op::ResetStats => {
            debug_assert!(false, "the dispatcher's own op reached execute");
            return Err(FsError::Invalid);
        }
    };
    Ok(reply)
}

/// End `session`: release every handle it still holds (the client went
/// away with files open). Errors are logged; the session ends anyway.
pub fn end_session(fs: &mut Mounted, session: &mut Session) {
    let left = session.drain();
    if !left.is_empty() {
        tracing::debug!(
            "session {} ends with {} handles open",
            session.id().0,
            left.len()
        );
    }
    for (h, f) in left {
        if let Err(e) = ready(fs.release(f.ino)) {
            tracing::warn!(
                "session {} ending: releasing handle {} of inode {}: {e}",
                session.id().0,
                h.0,
                f.ino
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_to_execute_needs_only_execute_permission() {
        // What Linux 6.18 sends for execve: O_RDONLY | O_LARGEFILE |
        // __FMODE_EXEC.
        let exec = (libc::O_RDONLY | libc::O_LARGEFILE | FMODE_EXEC) as u32;
        assert_eq!(open_mask(exec), MAY_EXEC);
        assert_eq!(open_mask(libc::O_RDONLY as u32), MAY_READ);
        assert_eq!(open_mask(libc::O_WRONLY as u32), MAY_WRITE);
        assert_eq!(
            open_mask((libc::O_RDONLY | libc::O_TRUNC) as u32),
            MAY_READ | MAY_WRITE
        );
        assert_eq!(open_mask(libc::O_RDWR as u32), MAY_READ | MAY_WRITE);
    }
}
