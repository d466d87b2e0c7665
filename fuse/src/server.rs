//! Where FUSE requests enter, from any transport: fuse-backend-rs's
//! `Server` decodes them into [`ScoutFuse`]'s trait calls, and
//! [`ScoutServer`] answers first the opcodes that `Server` (0.14) does not
//! know. Today that is one: FUSE_TMPFILE (protocol 7.37, sent by Linux 6.1
//! and later for `open(dir, O_TMPFILE)`; the kernel takes the ENOSYS that
//! `Server` gives it as EOPNOTSUPP for the rest of the session).
//!
//! The request's header is read from a copy of the `Reader` (a cursor over
//! the request's buffers; copying it copies no data), so a request that is
//! not ours reaches `Server` untouched. `Reader` and `Writer` are the types
//! both transports hand out (/dev/fuse buffers here, virtio descriptor
//! chains in virtiofs), so this path serves both.
//!
//! Order: threads that read one /dev/fuse take turns ([`ScoutServer::intake`]);
//! a FORGET, a RELEASE and a RELEASEDIR are handled before the turn
//! passes on, so every request the kernel queued after one finds its
//! effect. The kernel queues the FORGET of an unlinked file before the
//! unlink returns (its last iput), or while it takes in the reply to the
//! RELEASE of the file's last close if that came later (a release in
//! flight holds the inode), and hands out a pending FORGET before other
//! requests: so a `df` right after `rm` sees the blocks freed, as on
//! ext4, although the engine keeps an unlinked inode while the kernel
//! references it (the engine's refs.rs).

use std::io::{self, Write};
use std::mem::size_of;
use std::sync::{Arc, Mutex, MutexGuard};

use fuse_backend_rs::abi::fuse_abi::{CreateIn, EntryOut, InHeader, OpenOut, OutHeader};
use fuse_backend_rs::api::filesystem::Context;
use fuse_backend_rs::api::server::{MetricsHook, Server};
use fuse_backend_rs::transport::{FsCacheReqHandler, Reader, Writer};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::ByteValued;

use crate::ScoutFuse;

/// FUSE_TMPFILE's opcode (`include/uapi/linux/fuse.h`, 7.37).
pub const FUSE_TMPFILE: u32 = 51;

/// The opcodes handled before the next request is read (see the module
/// comment): FUSE_FORGET, FUSE_RELEASE, FUSE_RELEASEDIR,
/// FUSE_BATCH_FORGET.
const IN_ORDER: [u32; 4] = [2, 18, 29, 42];

/// The request handler of a mount, for every transport.
pub struct ScoutServer {
    server: Server<Arc<ScoutFuse>>,
    fs: Arc<ScoutFuse>,
    /// Held by the thread reading the next request (see the module
    /// comment).
    intake: Mutex<()>,
}

impl std::fmt::Debug for ScoutServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoutServer").field("fs", &self.fs).finish()
    }
}

impl ScoutServer {
    pub fn new(fs: ScoutFuse) -> ScoutServer {
        let fs = Arc::new(fs);
        ScoutServer {
            server: Server::new(fs.clone()),
            fs,
            intake: Mutex::new(()),
        }
    }

    /// The turn to read the next request, for transports several threads
    /// read: take it before reading, give it to [`ScoutServer::handle_in_order`].
    pub fn intake(&self) -> MutexGuard<'_, ()> {
        // The guard protects no data: a panic while it was held leaves
        // nothing half done.
        self.intake.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`ScoutServer::handle_message`] of a request read in the turn
    /// `intake`: the turn passes on at once, but after a FORGET or a
    /// release is handled.
    pub fn handle_in_order<S: BitmapSlice>(
        &self,
        intake: MutexGuard<'_, ()>,
        r: Reader<'_, S>,
        w: Writer<'_, S>,
    ) -> fuse_backend_rs::Result<usize> {
        let in_order = matches!(
            r.clone().read_obj::<InHeader>(),
            Ok(h) if IN_ORDER.contains(&h.opcode)
        );
        if !in_order {
            drop(intake);
        }
        self.handle_message(r, w, None, None)
    }

    pub fn fs(&self) -> &ScoutFuse {
        &self.fs
    }

    /// Decode one request from `r`, run it and write its reply (if it has
    /// one) to `w`; as `Server::handle_message`, which it calls for every
    /// opcode it does not answer itself.
    pub fn handle_message<S: BitmapSlice>(
        &self,
        r: Reader<'_, S>,
        w: Writer<'_, S>,
        vu_req: Option<&mut dyn FsCacheReqHandler>,
        hook: Option<&dyn MetricsHook>,
    ) -> fuse_backend_rs::Result<usize> {
        let mut body = r.clone();
        match body.read_obj::<InHeader>() {
            Ok(h) if h.opcode == FUSE_TMPFILE => self.tmpfile(&h, body, w),
            _ => self.server.handle_message(r, w, vu_req, hook),
        }
    }

    /// FUSE_TMPFILE: a `fuse_create_in` and a name (the kernel sends "/",
    /// which no entry can have; nothing reads it), answered as FUSE_CREATE
    /// is: an entry and an open handle.
    fn tmpfile<S: BitmapSlice>(
        &self,
        h: &InHeader,
        mut body: Reader<'_, S>,
        mut w: Writer<'_, S>,
    ) -> fuse_backend_rs::Result<usize> {
        let res = match (h.len as usize).checked_sub(size_of::<InHeader>() + size_of::<CreateIn>())
        {
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
            Some(_) => match body.read_obj::<CreateIn>() {
                Ok(args) => self.fs.tmpfile(&Context::from(h), h.nodeid, args),
                Err(_) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
            },
        };
        // The fusedev Reader and Writer share one buffer: everything is read
        // before the first write.
        let reply = match res {
            Ok((entry, handle)) => {
                let open = OpenOut {
                    fh: handle,
                    open_flags: 0,
                    passthrough: 0,
                };
                encode(
                    h.unique,
                    0,
                    &[EntryOut::from(entry).as_slice(), open.as_slice()],
                )
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                encode(h.unique, -errno, &[])
            }
        };
        w.write_all(&reply)
            .and_then(|()| w.commit(None))
            .map_err(fuse_backend_rs::Error::EncodeMessage)?;
        Ok(reply.len())
    }
}

/// A reply: the out header (`error` is 0 or a negative errno) and its
/// arguments, as one buffer (/dev/fuse takes a reply in one write).
fn encode(unique: u64, error: i32, args: &[&[u8]]) -> Vec<u8> {
    let len = size_of::<OutHeader>() + args.iter().map(|a| a.len()).sum::<usize>();
    let header = OutHeader {
        len: len as u32,
        error,
        unique,
    };
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(header.as_slice());
    for a in args {
        out.extend_from_slice(a);
    }
    debug_assert_eq!(out.len(), len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_reply_is_the_header_alone() {
        let r = encode(7, -libc::EINVAL, &[]);
        assert_eq!(r.len(), 16);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 16);
        assert_eq!(
            i32::from_ne_bytes(r[4..8].try_into().unwrap()),
            -libc::EINVAL
        );
        assert_eq!(u64::from_ne_bytes(r[8..16].try_into().unwrap()), 7);
    }

    #[test]
    fn a_tmpfile_reply_carries_entry_and_open() {
        let e = EntryOut::default();
        let o = OpenOut {
            fh: 42,
            ..OpenOut::default()
        };
        let r = encode(9, 0, &[e.as_slice(), o.as_slice()]);
        assert_eq!(r.len(), 16 + size_of::<EntryOut>() + size_of::<OpenOut>());
        assert_eq!(size_of::<EntryOut>(), 128);
        let fh_at = 16 + size_of::<EntryOut>();
        assert_eq!(
            u64::from_ne_bytes(r[fh_at..fh_at + 8].try_into().unwrap()),
            42
        );
    }
}
