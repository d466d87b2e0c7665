//! The FUSE request handler: [`ScoutFuse`] implements fuse-backend-rs's
//! `FileSystem` trait once, as a translator into the engine's front door:
//! each trait call becomes one or more typed requests (`serve::Op`, with
//! the caller from the request header and the mount's session), submitted
//! with `Engine::call_op` from the handler thread, and each reply becomes
//! the kernel's. Handler threads never touch the btree. What is FUSE's own
//! stays here: the per-opcode counters, the handle bits, the writeback
//! cache's decisions, the ACL notes, readdir passes per handle and the
//! kernel's lookup counts. The same type serves /dev/fuse here ([`mount`])
//! and virtio descriptor chains in the virtiofs endpoint, unchanged:
//! fuse-backend-rs's `Server` decodes either transport into the same trait
//! calls.
//!
//! Permission checks: the kernel mounts with `default_permissions` (the
//! session always asks for it), so it checks mode bits with the caller's
//! full credentials before a request arrives; the engine checks again with
//! uid, gid and the supplementary groups read from /proc (cached briefly
//! per pid, `serve::GroupCache`), which other frontends rely on.

mod acl_notes;
mod counters;
mod dir_pass;
mod mount_flags;
mod mount_watch;
mod notify;
mod server;
mod session;
mod writeback;

use std::ffi::CStr;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry as FuseDirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use scoutfs_engine::format::inode::Timespec;
use scoutfs_engine::fs::{handle_generation, Attr, KernelRefs, SetAttr};
use scoutfs_engine::serve::{
    Caller, Engine, Errno, GroupCache, Handle, Op, Reply, Request, SessionId,
};

pub use counters::{Counter, Counters};
pub use mount_flags::{MountFlags, MountState, STANDARD_OPTIONS};
pub use server::{ScoutServer, FUSE_TMPFILE};
pub use session::{mount, FuseMount};

/// How the mount behaves toward the kernel's caches.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// How long the kernel may trust a name lookup. Other sessions'
    /// changes drop what they make stale at once (notify.rs), so this
    /// bounds only what no change event covers.
    pub entry_timeout: Duration,
    /// How long the kernel may trust attributes (as `entry_timeout`:
    /// another session's atime is one thing no event covers).
    pub attr_timeout: Duration,
    /// How long the kernel may remember that a name does not exist (0:
    /// not at all). Saves the lookups of programs that probe many missing
    /// names (PATH searches, python imports); a name another session
    /// creates drops it (notify.rs).
    pub negative_timeout: Duration,
    /// Let the kernel cache writes and send them in large batches (FUSE
    /// writeback caching; on by default): a small write(2) costs no round
    /// trip. Other frontends of the volume see the data once the kernel
    /// writes it back (at close, fsync, or within its dirty expiry), and
    /// the kernel keeps a cached file's size and times itself
    /// (writeback.rs has how space is kept for what it holds).
    pub writeback_cache: bool,
    /// With the writeback cache: the free space below which files opened
    /// write-only are written through, so a full device is ENOSPC at
    /// write(2). `None`: twice the kernel's dirty limit for the mount.
    pub writeback_headroom: Option<u64>,
    /// Answer readdir with attributes (readdirplus), saving the lookups
    /// that `ls -l` and `find` would send.
    pub readdirplus: bool,
    /// Handler threads reading /dev/fuse: each has one request in the
    /// engine at a time, so this many requests can be in flight (8 by
    /// default; the engine runs them as tasks that overlap their reads).
    pub threads: usize,
    /// Mount read-only.
    pub read_only: bool,
    /// POSIX ACLs: the kernel evaluates them (it caches the ACL xattrs)
    /// and leaves the umask and default-ACL inheritance to the engine.
    /// Must match the engine's `FsOptions::acl`.
    pub posix_acl: bool,
    /// Other sessions' change events the engine queues for the mount
    /// before the notification thread takes them; past it they are lost
    /// and the thread drops everything the kernel caches (notify.rs).
    pub change_queue: usize,
}

/// The default entry and attribute timeouts: long, since other sessions'
/// changes are pushed to the kernel as they happen (notify.rs); the bound
/// on what no event covers (another session's atime, names after lost
/// events on a kernel before 6.16).
pub const DEFAULT_CACHE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            entry_timeout: DEFAULT_CACHE_TIMEOUT,
            attr_timeout: DEFAULT_CACHE_TIMEOUT,
            negative_timeout: Duration::ZERO,
            writeback_cache: true,
            writeback_headroom: None,
            readdirplus: true,
            threads: 8,
            read_only: false,
            posix_acl: true,
            change_queue: 16 << 10,
        }
    }
}

/// The filesystem as FUSE sees it.
#[derive(Debug)]
pub struct ScoutFuse {
    engine: Arc<Engine>,
    /// The mount's session in the engine: its open files and directories
    /// are the handles this mount gave the kernel.
    session: SessionId,
    opts: FuseOptions,
    /// The writeback cache's headroom, cached writers and failed
    /// write-backs (writeback.rs).
    wb: writeback::State,
    counters: Arc<Counters>,
    groups: GroupCache,
    acl_notes: Arc<acl_notes::AclNotes>,
    /// The thread that tells the kernel what is stale (notify.rs); set
    /// once mounted on a transport that can notify (/dev/fuse).
    notifier: OnceLock<notify::Notifier>,
    /// The kernel's lookup counts, shared with the engine (every entry
    /// reply counts one; FORGET gives them back): an unlinked inode stays
    /// while the kernel references it.
    refs: Arc<KernelRefs>,
    /// Where each open directory's readdir pass ends (dir_pass.rs).
    passes: dir_pass::DirPasses,
    /// The mount's options as the engine follows them (mount_watch.rs);
    /// set once mounted through /dev/fuse.
    mount_sync: Option<Arc<mount_watch::MountSync>>,
    /// The volume's fsid, whose file handles' generation it gives
    /// (`scoutfs_engine::fs::handle_generation`).
    fsid: u64,
}

/// The kernel's handle for an open: the engine's handle shifted left
/// [`HANDLE_SHIFT`] bits, under the open's access mode (bits 0-1) and
/// [`CACHED_WRITER`] (bit 2), so that FUSE's own decisions need no table.
const HANDLE_SHIFT: u32 = 3;

/// A handle's access mode says whether it may write.
fn handle_writable(h: u64) -> bool {
    matches!(h as i32 & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
}

/// The handle's bit saying its writes go through the kernel's writeback
/// cache (writeback.rs counts such handles per inode).
const CACHED_WRITER: u64 = 1 << 2;

fn handle_cached_writer(h: u64) -> bool {
    h & CACHED_WRITER != 0
}

/// The kernel's handle for the engine's handle `h` of an open with `flags`.
fn kernel_handle(h: Handle, flags: u32) -> u64 {
    debug_assert!(h.0 < 1 << (64 - HANDLE_SHIFT));
    (h.0 << HANDLE_SHIFT) | (flags as u64 & libc::O_ACCMODE as u64)
}

/// The engine's handle inside the kernel's.
fn engine_handle(kernel: u64) -> Handle {
    Handle(kernel >> HANDLE_SHIFT)
}

/// The xattr holding a file's SELinux label (see
/// `ScoutFuse::refuse_selinux_label`).
const SELINUX_LABEL: &[u8] = b"security.selinux";

/// The access ACL's xattr (see `acl_notes`).
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";

/// The xattr holding a file's capabilities (see `ScoutFuse::removexattr`).
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// A READ or WRITE larger than fuse-backend-rs's request buffer (1 MiB,
/// what INIT offers as max_write and the mount's max_read allows) never
/// comes from the kernel: EINVAL before anything is allocated for it (the
/// header's size field alone would have us allocate up to 4 GiB; found by
/// the `fuse_request` fuzz target).
fn check_io_size(size: u32) -> io::Result<()> {
    if size > fuse_backend_rs::api::server::MAX_BUFFER_SIZE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

fn name_bytes(name: &CStr) -> Vec<u8> {
    name.to_bytes().to_vec()
}

/// A time from setattr: the seconds are signed (before 1970 negative) and
/// kept whole; the kernel has refused nanoseconds outside 0..10^9.
fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec::new(sec, nsec.clamp(0, 999_999_999) as u32)
}

/// An engine attribute as the kernel's stat.
pub fn stat_of(a: &Attr) -> stat64 {
    // SAFETY: stat64 is plain data; all-zero is a valid value.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    st.st_ino = a.ino;
    st.st_mode = a.mode;
    st.st_nlink = a.nlink.into();
    st.st_uid = a.uid;
    st.st_gid = a.gid;
    st.st_rdev = a.rdev.into();
    st.st_size = a.size as i64;
    st.st_blksize = 4096;
    st.st_blocks = (a.online_blocks * 8) as i64;
    st.st_atime = a.atime.sec.get();
    st.st_atime_nsec = a.atime.nsec.get().into();
    st.st_mtime = a.mtime.sec.get();
    st.st_mtime_nsec = a.mtime.nsec.get().into();
    st.st_ctime = a.ctime.sec.get();
    st.st_ctime_nsec = a.ctime.nsec.get().into();
    st
}

impl ScoutFuse {
    pub fn new(engine: Arc<Engine>, opts: FuseOptions, counters: Arc<Counters>) -> ScoutFuse {
        // Notes live as long as the attributes the kernel caches with them.
        let acl_notes = Arc::new(acl_notes::AclNotes::new(if opts.posix_acl {
            opts.attr_timeout
        } else {
            Duration::ZERO
        }));
        let session = engine.open_session().unwrap_or_else(|e| {
            // Fails only if the engine has stopped, and then nothing is
            // served anyway.
            tracing::error!("opening the mount's session: {e}");
            SessionId::ENGINE
        });
        ScoutFuse {
            fsid: engine.fsid(),
            refs: engine.kernel_refs(),
            session,
            engine,
            wb: writeback::State::new(opts.writeback_headroom),
            opts,
            counters,
            groups: GroupCache::default(),
            acl_notes,
            notifier: OnceLock::new(),
            passes: dir_pass::DirPasses::default(),
            mount_sync: None,
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The mount's session in the engine.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Submit `op` for `caller` in the mount's session and wait for its
    /// reply; count it as `what` and its failure by kind.
    fn op(&self, what: Counter, caller: Caller, op: Op) -> io::Result<Reply> {
        self.counters.bump(what);
        if let Some(m) = &self.mount_sync {
            // A remount to read-write the engine has not heard of yet.
            m.catch_up();
        }
        self.engine
            .call_op(Request::new(self.session, caller, op))
            .map_err(|e| {
                self.counters.error(e);
                io::Error::from(e)
            })
    }

    /// [`ScoutFuse::op`] for the caller of the request `ctx`.
    fn ask(&self, what: Counter, ctx: &Context, op: Op) -> io::Result<Reply> {
        self.op(what, self.caller(ctx), op)
    }

    /// The caller of a request, from its header and /proc.
    fn caller(&self, ctx: &Context) -> Caller {
        self.groups.caller(ctx.uid, ctx.gid, ctx.pid)
    }

    /// The reply to a lookup, create, mkdir, mknod, symlink, link or
    /// tmpfile: the kernel counts one more lookup of the inode, and so
    /// does this (`refs`), before the reply leaves.
    fn entry(&self, a: &Attr) -> Entry {
        self.refs.remember(a.ino);
        self.entry_uncounted(a)
    }

    /// An entry for readdirplus, counted once it is in the reply.
    fn entry_uncounted(&self, a: &Attr) -> Entry {
        Entry {
            inode: a.ino,
            generation: handle_generation(self.fsid, a.ino).into(),
            attr: stat_of(a),
            attr_flags: 0,
            attr_timeout: self.opts.attr_timeout,
            entry_timeout: self.opts.entry_timeout,
        }
    }

    /// Whether an open with `flags` needs the free space to choose between
    /// the writeback cache and writing through (writeback.rs).
    fn asks_free_space(&self, flags: u32) -> bool {
        self.opts.writeback_cache && writeback::write_through(true, flags, 0, 1)
    }

    /// The open's caching: written through (`FOPEN_DIRECT_IO`) when it is
    /// write-only and the device has less than the headroom free, so the
    /// writer gets ENOSPC at write(2); else cached, and the pages cached
    /// by earlier opens kept (`FOPEN_KEEP_CACHE`) when the kernel hears of
    /// every change to them (other sessions' through the notification
    /// thread, this mount's own as it makes them: notify.rs) and no read
    /// is due to change the file's atime (`atime_due`, from the engine):
    /// the kernel never updates a FUSE inode's atime, the engine does when
    /// a READ reaches it, and a read from kept pages reaches nobody.
    fn open_options(&self, flags: u32, free: Option<u64>, atime_due: bool) -> OpenOptions {
        let through = free.is_some_and(|free| {
            writeback::write_through(
                self.opts.writeback_cache,
                flags,
                free,
                self.wb.headroom.bytes(),
            )
        });
        if through {
            self.counters.bump(Counter::WriteThroughOpens);
            OpenOptions::DIRECT_IO
        } else if self.notifier.get().is_some() && !atime_due {
            OpenOptions::KEEP_CACHE
        } else {
            OpenOptions::empty()
        }
    }

    /// The kernel's handle for the engine's handle `h` on `inode`, opened
    /// with `flags` and `options`; one that may write into the writeback
    /// cache is counted until its release.
    fn open_handle(&self, h: Handle, inode: u64, flags: u32, options: OpenOptions) -> u64 {
        let h = kernel_handle(h, flags);
        if self.opts.writeback_cache
            && handle_writable(h)
            && !options.contains(OpenOptions::DIRECT_IO)
        {
            self.wb.opened_writer(inode);
            h | CACHED_WRITER
        } else {
            h
        }
    }

    /// Once the mount exists at `mountpoint`: how much the kernel may hold
    /// dirty for it (the writeback headroom), and `fuse`, a descriptor of
    /// its /dev/fuse connection to send notifications on (notify.rs; none:
    /// the transport has no way, and the kernel trusts what it caches
    /// until the timeouts).
    pub fn mounted_at(&self, mountpoint: &std::path::Path, fuse: Option<std::os::fd::OwnedFd>) {
        if self.opts.writeback_cache {
            self.wb.mounted(mountpoint);
        }
        let Some(fd) = fuse else { return };
        let setup = notify::Setup {
            engine: self.engine.clone(),
            session: self.session,
            capacity: self.opts.change_queue,
            writeback_cache: self.opts.writeback_cache,
            refs: self.refs.clone(),
            acl_notes: self.acl_notes.clone(),
            counters: self.counters.clone(),
        };
        match notify::Notifier::start(fd, setup) {
            Ok(n) => {
                let _ = self.notifier.set(n);
            }
            Err(e) => tracing::warn!("no FUSE notifications: {e}"),
        }
    }

    /// The GETATTR a cached write(2) sends with its handle when the
    /// kernel's attributes are stale: after a failed write-back of the
    /// inode, a write-only handle's is that failure while space stays
    /// below the headroom, and the write(2) fails with it (writeback.rs).
    fn refuse_cached_write(&self, ctx: &Context, inode: u64, handle: u64) -> io::Result<()> {
        if !handle_cached_writer(handle) || handle as i32 & libc::O_ACCMODE != libc::O_WRONLY {
            return Ok(());
        }
        let Some(errno) = self.wb.failed(inode) else {
            return Ok(());
        };
        let free = self.ask(Counter::Getattr, ctx, Op::FreeSpace)?;
        if free.into_free_bytes()? >= self.wb.headroom.bytes() {
            self.wb.forget_failure(inode);
            return Ok(());
        }
        self.counters.bump(Counter::Refused);
        Err(io::Error::from_raw_os_error(errno))
    }

    /// The SELinux label is not stored through this frontend: EOPNOTSUPP,
    /// answered here without a trip to the engine. A host running SELinux
    /// labels a FUSE mount itself (genfs labelling) and never asks; a host
    /// without it asks for every file `ls -l` lists, and coreutils stops
    /// asking for the rest of a device once told EOPNOTSUPP (ext4 answers
    /// ENODATA, costing one round trip per file here).
    fn refuse_selinux_label(&self, name: &CStr) -> io::Result<()> {
        if name.to_bytes() != SELINUX_LABEL {
            return Ok(());
        }
        self.counters.bump(Counter::Xattr);
        self.counters.bump(Counter::Refused);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// O_TMPFILE (FUSE_TMPFILE, which [`ScoutServer`] decodes): an open
    /// regular file in `parent` with no name, its mode from `args` less the
    /// umask or by the parent's default ACL. It lives until its last close
    /// unless `linkat` names it first; after a crash, recovery deletes it.
    pub fn tmpfile(&self, ctx: &Context, parent: u64, args: CreateIn) -> io::Result<(Entry, u64)> {
        let c = self.caller(ctx).with_umask(args.umask);
        let op = Op::Tmpfile {
            parent,
            mode: args.mode,
            flags: args.flags,
        };
        // The engine holds the new inode open for this handle.
        let (h, a, _) = self.op(Counter::Create, c, op)?.into_opened()?;
        let handle = self.open_handle(h, a.ino, args.flags, OpenOptions::empty());
        Ok((self.entry(&a), handle))
    }

    /// FORGET and BATCH_FORGET: the kernel gives lookup counts back; the
    /// unlinked inodes it no longer references are deleted (refs.rs in the
    /// engine). No reply goes back, so a failure is only logged (by the
    /// engine) and counted.
    fn forget_all(&self, requests: Vec<(u64, u64)>) {
        self.counters.add(Counter::Forget, requests.len() as u64);
        let gone: Vec<u64> = requests
            .into_iter()
            .filter(|&(ino, count)| self.refs.forget(ino, count))
            .map(|(ino, _)| ino)
            .collect();
        if gone.is_empty() {
            return;
        }
        let req = Request::new(self.session, Caller::root(), Op::Forgotten { inos: gone });
        match self.engine.call_op(req).and_then(Reply::into_forgotten) {
            Ok(failed) => {
                for (_, e) in failed {
                    self.counters.error(e);
                }
            }
            Err(e) => {
                self.counters.error(e);
                tracing::error!("deleting forgotten inodes: {e}");
            }
        }
    }

    /// The end of the readdir pass of `handle` that a read at `offset`
    /// belongs to (dir_pass.rs): asked of the engine when a pass begins
    /// other than at opendir.
    fn pass_end(&self, ctx: &Context, inode: u64, handle: u64, offset: u64) -> io::Result<u64> {
        if let Some(end) = self.passes.end_for(handle, offset) {
            return Ok(end);
        }
        let op = Op::ReaddirPassEnd { ino: inode };
        let end = self.ask(Counter::Readdir, ctx, op)?.into_position()?;
        self.passes.begin(handle, end);
        Ok(end)
    }

    /// Leave the engine: every handle the kernel still holds is released
    /// with the session (an unmount's last RELEASEs may never be read).
    fn end_session(&self) {
        if self.session == SessionId::ENGINE {
            return;
        }
        if let Err(e) = self.engine.close_session(self.session) {
            if e != Errno::SHUTDOWN {
                tracing::warn!("closing the mount's session: {e}");
            }
        }
    }
}

impl Drop for ScoutFuse {
    fn drop(&mut self) {
        self.end_session();
    }
}

impl FileSystem for ScoutFuse {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut want = FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::MAX_PAGES
            // The engine drops setuid/setgid and security.capability on
            // write, truncate and chown itself, so the kernel need not
            // ask for the capability xattr before every write.
            | FsOptions::HANDLE_KILLPRIV
            | FsOptions::HANDLE_KILLPRIV_V2;
        if self.opts.readdirplus {
            want |= FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO;
        }
        if self.opts.writeback_cache {
            want |= FsOptions::WRITEBACK_CACHE;
        }
        // The kernel passes the caller's umask instead of applying it: the
        // engine applies it, or a parent's default ACL instead of it.
        want |= FsOptions::DONT_MASK;
        if self.opts.posix_acl {
            want |= FsOptions::POSIX_ACL;
        }
        // File handles (name_to_handle_at, NFS): the kernel decodes one it
        // no longer caches by looking up "." in its inode number, and
        // connects a directory to the tree through "..". Without this it
        // answers ESTALE for every handle it doesn't cache.
        want |= FsOptions::EXPORT_SUPPORT;
        let got = capable & want;
        tracing::debug!("FUSE init: kernel offers {capable:?}, using {got:?}");
        Ok(got)
    }

    fn destroy(&self) {
        tracing::info!("FUSE session ended");
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        // The VFS resolves "." and ".." itself: only a file handle's
        // decoding sends them (handle.rs in the engine).
        let op = match name.to_bytes() {
            b"." => Op::LookupHandle { ino: parent },
            b".." => Op::LookupHandleParent { dir: parent },
            _ => Op::Lookup {
                parent,
                name: name_bytes(name),
            },
        };
        match self.ask(Counter::Lookup, ctx, op) {
            Ok(r) => Ok(self.entry(&r.into_attr()?)),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    && !self.opts.negative_timeout.is_zero() =>
            {
                // Inode 0: the kernel keeps a negative entry this long.
                Ok(Entry {
                    inode: 0,
                    generation: 0,
                    // SAFETY: stat64 is plain data; all-zero is valid.
                    attr: unsafe { std::mem::zeroed() },
                    attr_flags: 0,
                    attr_timeout: Duration::ZERO,
                    entry_timeout: self.opts.negative_timeout,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.forget_all(vec![(inode, count)]);
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        self.forget_all(requests);
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        if let Some(h) = handle {
            self.refuse_cached_write(ctx, inode, h)?;
        }
        let r = self.ask(Counter::Getattr, ctx, Op::Getattr { ino: inode })?;
        Ok((stat_of(&r.into_attr()?), self.opts.attr_timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let now = scoutfs_engine::fs::system_time();
        let mut set = SetAttr::default();
        if valid.contains(SetattrValid::MODE) {
            set.mode = Some(attr.st_mode & 0o7777);
        }
        if valid.contains(SetattrValid::UID) {
            set.uid = Some(attr.st_uid);
        }
        if valid.contains(SetattrValid::GID) {
            set.gid = Some(attr.st_gid);
        }
        if valid.contains(SetattrValid::SIZE) {
            set.size = Some(attr.st_size as u64);
        }
        if valid.contains(SetattrValid::ATIME_NOW) {
            set.atime = Some(now);
        } else if valid.contains(SetattrValid::ATIME) {
            set.atime = Some(ts(attr.st_atime, attr.st_atime_nsec));
        }
        if valid.contains(SetattrValid::MTIME_NOW) {
            set.mtime = Some(now);
        } else if valid.contains(SetattrValid::MTIME) {
            set.mtime = Some(ts(attr.st_mtime, attr.st_mtime_nsec));
        }
        if valid.contains(SetattrValid::CTIME) {
            set.ctime = Some(ts(attr.st_ctime, attr.st_ctime_nsec));
        }
        // FATTR_CTIME: no system call sets ctime, so only the kernel sends
        // it, and only in writeback-cache mode (`trust_local_cmtime`),
        // where it keeps mtime and ctime itself and sends its own stamps,
        // as the caller: with a truncate, a utimes, and when it flushes
        // them at close or write-back (`fuse_flush_times`, mtime + ctime,
        // not MTIME_NOW). It checked the caller first (`setattr_prepare`,
        // under the default_permissions this session always mounts with),
        // so the engine takes them from a non-owner too.
        set.kernel_times = valid.contains(SetattrValid::CTIME);
        // utimensat(UTIME_NOW) for both times (or a NULL times pointer)
        // needs only write permission.
        set.times_now = (valid.contains(SetattrValid::ATIME_NOW)
            || !valid.contains(SetattrValid::ATIME))
            && (valid.contains(SetattrValid::MTIME_NOW) || !valid.contains(SetattrValid::MTIME));
        // A truncate through a handle open for writing (ftruncate,
        // O_TRUNC) was checked at open: the engine's session knows the
        // handle.
        let op = Op::Setattr {
            ino: inode,
            set,
            handle: handle.map(engine_handle),
        };
        let a = self.ask(Counter::Setattr, ctx, op);
        // chmod rewrites an access ACL; chown may too.
        self.acl_notes.forget(inode);
        Ok((stat_of(&a?.into_attr()?), self.opts.attr_timeout))
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let r = self.ask(Counter::Readlink, ctx, Op::Readlink { ino: inode })?;
        Ok(r.into_data()?)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let op = Op::Symlink {
            parent,
            name: name_bytes(name),
            target: name_bytes(linkname),
        };
        let a = self.ask(Counter::Create, ctx, op)?.into_attr()?;
        Ok(self.entry(&a))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let op = Op::Mknod {
            parent,
            name: name_bytes(name),
            mode,
            rdev,
        };
        let c = self.caller(ctx).with_umask(umask);
        let a = self.op(Counter::Create, c, op)?.into_attr()?;
        Ok(self.entry(&a))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let op = Op::Mkdir {
            parent,
            name: name_bytes(name),
            mode,
        };
        let c = self.caller(ctx).with_umask(umask);
        let a = self.op(Counter::Create, c, op)?.into_attr()?;
        Ok(self.entry(&a))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let op = Op::Unlink {
            parent,
            name: name_bytes(name),
        };
        Ok(self.ask(Counter::Remove, ctx, op)?.done()?)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let op = Op::Rmdir {
            parent,
            name: name_bytes(name),
        };
        Ok(self.ask(Counter::Remove, ctx, op)?.done()?)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let op = Op::Rename {
            parent: olddir,
            name: name_bytes(oldname),
            new_parent: newdir,
            new_name: name_bytes(newname),
            flags,
        };
        Ok(self.ask(Counter::Rename, ctx, op)?.done()?)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let op = Op::Link {
            ino: inode,
            parent: newparent,
            name: name_bytes(newname),
        };
        let a = self.ask(Counter::Create, ctx, op)?.into_attr()?;
        Ok(self.entry(&a))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let op = Op::Open {
            ino: inode,
            flags,
            report_free: self.asks_free_space(flags),
        };
        let r = self.ask(Counter::Open, ctx, op)?;
        let atime_due = r.opened_atime_due();
        let (h, _, free) = r.into_opened()?;
        let options = self.open_options(flags, free, atime_due);
        Ok((
            Some(self.open_handle(h, inode, flags, options)),
            options,
            None,
        ))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let op = Op::Create {
            parent,
            name: name_bytes(name),
            mode: args.mode,
            flags: args.flags,
            report_free: self.asks_free_space(args.flags),
        };
        let c = self.caller(ctx).with_umask(args.umask);
        let r = self.op(Counter::Create, c, op)?;
        let atime_due = r.opened_atime_due();
        let (h, a, free) = r.into_opened()?;
        let options = self.open_options(args.flags, free, atime_due);
        let handle = self.open_handle(h, a.ino, args.flags, options);
        Ok((self.entry(&a), Some(handle), options, None))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        check_io_size(size)?;
        let op = Op::Read {
            ino: inode,
            offset,
            len: size,
        };
        let data = self.ask(Counter::Read, ctx, op)?.into_data()?;
        self.counters.add(Counter::BytesRead, data.len() as u64);
        io::Write::write_all(w, &data)?;
        Ok(data.len())
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        check_io_size(size)?;
        let mut data = vec![0u8; size as usize];
        io::Read::read_exact(r, &mut data)?;
        // FUSE_WRITE_CACHE: pages written back (stores through a shared
        // mapping, or the writeback cache), sent by the kernel as uid 0.
        // What a write(2) drops went when it entered the cache; a store
        // through a mapping drops nothing, as on ext4.
        let n = if delayed_write {
            let op = Op::WriteBack {
                ino: inode,
                offset,
                data,
            };
            let r = self
                .ask(Counter::Write, ctx, op)
                .and_then(|r| r.into_written().map_err(io::Error::from));
            // The kernel keeps a failure for fsync and close; the next
            // cached write(2) hears of it too (writeback.rs).
            let errno = match &r {
                Ok(_) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            };
            self.wb.written_back(inode, errno);
            if let Some(n) = self.notifier.get() {
                n.attrs(inode);
            }
            r?
        } else {
            let op = Op::Write {
                ino: inode,
                offset,
                data,
            };
            let n = self.ask(Counter::Write, ctx, op)?.into_written()?;
            // Through a FOPEN_DIRECT_IO handle (a write-only open written
            // through) the kernel writes past its page cache: it drops the
            // range's pages before the WRITE (Linux 6.6 and later), but a
            // read meanwhile can cache the old bytes again (notify.rs).
            if self.opts.writeback_cache && handle_writable(handle) && !handle_cached_writer(handle)
            {
                if let Some(notifier) = self.notifier.get() {
                    notifier.data(inode, offset..offset.saturating_add(n));
                }
            }
            n
        };
        self.counters.add(Counter::BytesWritten, n);
        Ok(n as usize)
    }

    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        Ok(())
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, _handle: u64) -> io::Result<()> {
        let op = Op::Fsync {
            ino: inode,
            datasync,
        };
        self.ask(Counter::Fsync, ctx, op)?.into_synced()?;
        // The kernel wrote the file's pages back first; with the writeback
        // cache it keeps the st_blocks it had: have it ask again.
        if self.opts.writeback_cache {
            if let Some(n) = self.notifier.get() {
                n.attrs_now(inode);
            }
        }
        Ok(())
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        _handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let op = Op::Fallocate {
            ino: inode,
            mode,
            offset,
            len: length,
        };
        Ok(self.ask(Counter::Write, ctx, op)?.done()?)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        // The kernel wrote the handle's pages back before releasing it.
        if handle_cached_writer(handle) {
            self.wb.released_writer(inode);
        }
        let op = Op::Release {
            handle: engine_handle(handle),
        };
        Ok(self.ask(Counter::Release, ctx, op)?.done()?)
    }

    fn statfs(&self, ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        let s = self.ask(Counter::Statfs, ctx, Op::Statfs)?.into_statfs()?;
        // SAFETY: statvfs64 is plain data; all-zero is a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = 4096;
        st.f_frsize = 4096;
        st.f_blocks = s.total_data_blocks;
        st.f_bfree = s.free_data_blocks;
        st.f_bavail = s.free_data_blocks;
        // Used inodes are the volume's count (scoutfs's inode_count), so
        // `df -i` shows f_files - f_ffree = inodes that exist. There is no
        // inode table to size the rest: an inode is a handful of items
        // (inode, three dirent copies, index items, ~400 bytes with the
        // names) in 64 KiB metadata blocks that are rarely full. Sixteen
        // per free block is a deliberately low estimate of what free space
        // can still hold, so `df -i` never promises more than there is.
        let per_block = 16;
        st.f_ffree = s.free_meta_blocks.saturating_mul(per_block);
        st.f_files = st.f_ffree.saturating_add(s.inode_count);
        st.f_favail = st.f_ffree;
        st.f_fsid = s.fsid;
        st.f_namemax = 255;
        Ok(st)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.refuse_selinux_label(name)?;
        let op = Op::SetXattr {
            ino: inode,
            name: name_bytes(name),
            value: value.to_vec(),
            flags,
        };
        let r = self.ask(Counter::Xattr, ctx, op);
        self.acl_notes.forget(inode);
        Ok(r?.done()?)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.refuse_selinux_label(name)?;
        if name.to_bytes() == ACL_ACCESS && self.acl_notes.absent(inode, Instant::now()) {
            self.counters.bump(Counter::XattrNoted);
            return Err(io::Error::from_raw_os_error(libc::ENODATA));
        }
        let op = Op::GetXattr {
            ino: inode,
            name: name_bytes(name),
        };
        let v = self.ask(Counter::Xattr, ctx, op)?.into_data()?;
        if size == 0 {
            Ok(GetxattrReply::Count(v.len() as u32))
        } else if v.len() > size as usize {
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        } else {
            Ok(GetxattrReply::Value(v))
        }
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let op = Op::ListXattrs { ino: inode };
        let names = self.ask(Counter::Xattr, ctx, op)?.into_names()?;
        let mut buf = Vec::new();
        for n in names.into_iter().filter(|n| n != SELINUX_LABEL) {
            buf.extend_from_slice(&n);
            buf.push(0);
        }
        if size == 0 {
            Ok(ListxattrReply::Count(buf.len() as u32))
        } else if buf.len() > size as usize {
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(buf))
        }
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.refuse_selinux_label(name)?;
        if name.to_bytes() == CAPABILITY_XATTR {
            // The kernel refuses a caller without CAP_SETFCAP before
            // asking, and asks itself, as the writer, before a write,
            // truncate or fallocate changes the file (killpriv): that
            // removal needs no privilege.
            let op = Op::KillCapability { ino: inode };
            return Ok(self.ask(Counter::Xattr, ctx, op)?.done()?);
        }
        let op = Op::RemoveXattr {
            ino: inode,
            name: name_bytes(name),
        };
        let r = self.ask(Counter::Xattr, ctx, op);
        self.acl_notes.forget(inode);
        Ok(r?.done()?)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let op = Op::Opendir { ino: inode, flags };
        let r = self.ask(Counter::Open, ctx, op)?;
        let (h, end) = r.into_opened_dir()?;
        let handle = kernel_handle(h, flags);
        // The handle's first readdir pass ends where the engine said.
        self.passes.open(handle, end);
        Ok((Some(handle), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(FuseDirEntry<'_>) -> io::Result<usize>,
    ) -> io::Result<()> {
        let end = self.pass_end(ctx, inode, handle, offset)?;
        // Each entry takes at least 32 bytes of the reply: fetch about as
        // many as fit, and more if the names were short.
        let mut pos = offset;
        let per_call = (size as usize / 32).clamp(8, 1024);
        // atime by the mount's policy, once per request (the kernel's
        // getdents), as the VFS's iterate_dir.
        let mut touch = true;
        loop {
            let op = Op::Readdir {
                ino: inode,
                from: pos,
                end,
                max: per_call,
                touch_atime: touch,
            };
            let r = self.ask(Counter::Readdir, ctx, op)?;
            let entries = r.into_entries()?;
            touch = false;
            if entries.is_empty() {
                return Ok(());
            }
            for e in &entries {
                let n = add_entry(FuseDirEntry {
                    ino: e.ino,
                    offset: e.pos + 1,
                    type_: e.kind.kernel_dirent_type().into(),
                    name: &e.name,
                })?;
                if n == 0 {
                    return Ok(());
                }
                pos = e.pos + 1;
            }
        }
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(FuseDirEntry<'_>, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let end = self.pass_end(ctx, inode, handle, offset)?;
        let mut pos = offset;
        let per_call = (size as usize / 160).clamp(4, 256);
        let mut touch = true;
        loop {
            let (generation, asked) = (self.acl_notes.generation(), Instant::now());
            // `ls -l` asks each entry for its access ACL next: the engine
            // says which have none in the same turn.
            let op = Op::ReaddirPlus {
                ino: inode,
                from: pos,
                end,
                max: per_call,
                touch_atime: touch,
                note_no_acl: self.opts.posix_acl,
            };
            let r = self.ask(Counter::Readdir, ctx, op)?;
            let (entries, no_acl) = r.into_entries_plus()?;
            touch = false;
            self.acl_notes.note_absent(generation, no_acl, asked);
            if entries.is_empty() {
                return Ok(());
            }
            for (e, a) in &entries {
                pos = e.pos + 1;
                let Some(a) = a else { continue };
                let n = add_entry(
                    FuseDirEntry {
                        ino: e.ino,
                        offset: e.pos + 1,
                        type_: e.kind.kernel_dirent_type().into(),
                        name: &e.name,
                    },
                    self.entry_uncounted(a),
                )?;
                if n == 0 {
                    return Ok(());
                }
                // The kernel counts a lookup of each entry it is sent, but
                // "." and ".." (fuse_direntplus_link).
                if e.name != b"." && e.name != b".." {
                    self.refs.remember(e.ino);
                }
            }
        }
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.fsync(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.passes.close(handle);
        let op = Op::Releasedir {
            handle: engine_handle(handle),
        };
        Ok(self.ask(Counter::Release, ctx, op)?.done()?)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let op = Op::Access { ino: inode, mask };
        Ok(self.ask(Counter::Getattr, ctx, op)?.done()?)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        _handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let want_data = match whence as i32 {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        // The kernel may hold data of a file with a cached writer that the
        // engine's extents don't show yet: "not supported" (programs then
        // read) rather than a hole where there is data.
        if self.wb.has_writers(inode) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let op = Op::SeekData {
            ino: inode,
            offset,
            want_data,
        };
        Ok(self.ask(Counter::Read, ctx, op)?.into_position()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_handle_carries_the_engines_and_fuses_bits() {
        let h = Handle(12345);
        let k = kernel_handle(h, libc::O_WRONLY as u32);
        assert!(handle_writable(k));
        assert!(!handle_cached_writer(k));
        assert_eq!(engine_handle(k | CACHED_WRITER), h);
        let r = kernel_handle(h, (libc::O_RDONLY | libc::O_TRUNC) as u32);
        assert!(!handle_writable(r));
        assert_eq!(engine_handle(r), h);
    }
}
