//! The FUSE request handler: [`ScoutFuse`] implements fuse-backend-rs's
//! `FileSystem` trait once, over the [`Engine`]. Every request becomes one
//! `Engine::call` (a closure run on the reactor that owns the mounted
//! `Fs`); handler threads never touch the btree. The same type serves
//! /dev/fuse here ([`mount`]) and virtio descriptor chains in the virtiofs
//! endpoint, unchanged: fuse-backend-rs's `Server` decodes either
//! transport into the same trait calls.
//!
//! Permission checks: the kernel mounts with `default_permissions` (the
//! session always asks for it), so it checks mode bits with the caller's
//! full credentials before a request arrives; the engine checks again with
//! uid, gid and the supplementary groups read from /proc (cached briefly
//! per pid), which other frontends rely on.

mod acl_notes;
mod counters;
mod creds;
mod dir_pass;
mod mount_flags;
mod mount_watch;
mod server;
mod session;
mod writeback;

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry as FuseDirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use scoutfs_engine::format::inode::Timespec;
use scoutfs_engine::fs::{
    handle_generation, Attr, Creds, FsError, KernelRefs, SetAttr, MAY_EXEC, MAY_READ, MAY_WRITE,
};
use scoutfs_engine::serve::{Engine, Mounted};
use scoutfs_engine::util::ready;

pub use counters::{Counter, Counters};
pub use mount_flags::{MountFlags, MountState, STANDARD_OPTIONS};
pub use server::{ScoutServer, FUSE_TMPFILE};
pub use session::{mount, FuseMount};

/// How the mount behaves toward the kernel's caches.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// How long the kernel may trust a name lookup.
    pub entry_timeout: Duration,
    /// How long the kernel may trust attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may remember that a name does not exist (0:
    /// not at all). Saves the lookups of programs that probe many missing
    /// names (PATH searches, python imports); a name another frontend
    /// creates meanwhile stays invisible here that long.
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
    /// Handler threads reading /dev/fuse.
    pub threads: usize,
    /// Mount read-only.
    pub read_only: bool,
    /// POSIX ACLs: the kernel evaluates them (it caches the ACL xattrs)
    /// and leaves the umask and default-ACL inheritance to the engine.
    /// Must match the engine's `FsOptions::acl`.
    pub posix_acl: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            entry_timeout: Duration::from_secs(1),
            attr_timeout: Duration::from_secs(1),
            negative_timeout: Duration::ZERO,
            writeback_cache: true,
            writeback_headroom: None,
            readdirplus: true,
            threads: 2,
            read_only: false,
            posix_acl: true,
        }
    }
}

/// The filesystem as FUSE sees it.
#[derive(Debug)]
pub struct ScoutFuse {
    engine: Arc<Engine>,
    opts: FuseOptions,
    /// The writeback cache's headroom, cached writers and failed
    /// write-backs (writeback.rs).
    wb: writeback::State,
    counters: Arc<Counters>,
    groups: creds::GroupCache,
    next_handle: AtomicU64,
    acl_notes: acl_notes::AclNotes,
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

/// A handle's number carries the open's access mode in its low bits, so
/// no table is needed to know whether a handle may write.
fn handle_writable(h: u64) -> bool {
    matches!(h as i32 & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
}

/// The handle's bit saying its writes go through the kernel's writeback
/// cache (writeback.rs counts such handles per inode).
const CACHED_WRITER: u64 = 1 << 2;

fn handle_cached_writer(h: u64) -> bool {
    h & CACHED_WRITER != 0
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

fn errno(e: FsError) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
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
        let acl_notes = acl_notes::AclNotes::new(if opts.posix_acl {
            opts.attr_timeout
        } else {
            Duration::ZERO
        });
        // Read from memory on the reactor: fails only if the engine has
        // stopped, and then nothing is served anyway.
        let fsid = engine
            .call(|fs| fs.store().super_block().fsid())
            .unwrap_or_else(|e| {
                tracing::error!("reading the volume's fsid: {e}");
                0
            });
        let refs = engine.call(|fs| fs.kernel_refs()).unwrap_or_else(|e| {
            // Every request fails the same way; unlinked inodes then go
            // at once, as without references.
            tracing::error!("no mounted filesystem to share lookup counts with: {e}");
            Arc::default()
        });
        ScoutFuse {
            engine,
            wb: writeback::State::new(opts.writeback_headroom),
            opts,
            counters,
            groups: creds::GroupCache::default(),
            next_handle: AtomicU64::new(1),
            acl_notes,
            refs,
            passes: dir_pass::DirPasses::default(),
            mount_sync: None,
            fsid,
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Run `f` on the reactor; count it and map errors to errnos.
    fn call<T: Send + 'static>(
        &self,
        what: Counter,
        f: impl FnOnce(&mut Mounted) -> Result<T, FsError> + Send + 'static,
    ) -> io::Result<T> {
        self.counters.bump(what);
        if let Some(m) = &self.mount_sync {
            // A remount to read-write the engine has not heard of yet.
            m.catch_up();
        }
        match self.engine.call(f) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.counters.error(&e);
                Err(errno(e))
            }
            Err(e) => {
                self.counters.bump(Counter::Errors);
                tracing::error!("engine call failed: {e}");
                Err(io::Error::from_raw_os_error(e.errno()))
            }
        }
    }

    fn creds(&self, ctx: &Context) -> Creds {
        self.groups.creds(ctx.uid, ctx.gid, ctx.pid)
    }

    /// The caller's credentials for a request that creates an inode.
    fn creds_umask(&self, ctx: &Context, umask: u32) -> Creds {
        Creds {
            umask,
            ..self.creds(ctx)
        }
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

    fn new_handle(&self, flags: u32) -> u64 {
        let n = self.next_handle.fetch_add(1, Ordering::Relaxed);
        (n << 3) | (flags as u64 & libc::O_ACCMODE as u64)
    }

    /// Whether an open with `flags` needs the free space to choose between
    /// the writeback cache and writing through (writeback.rs).
    fn asks_free_space(&self, flags: u32) -> bool {
        self.opts.writeback_cache && writeback::write_through(true, flags, 0, 1)
    }

    /// The open's caching: written through (`FOPEN_DIRECT_IO`) when it is
    /// write-only and the device has less than the headroom free, so the
    /// writer gets ENOSPC at write(2); else cached.
    fn open_options(&self, flags: u32, free: Option<u64>) -> OpenOptions {
        let Some(free) = free else {
            return OpenOptions::empty();
        };
        if writeback::write_through(
            self.opts.writeback_cache,
            flags,
            free,
            self.wb.headroom.bytes(),
        ) {
            self.counters.bump(Counter::WriteThroughOpens);
            OpenOptions::DIRECT_IO
        } else {
            OpenOptions::empty()
        }
    }

    /// A handle for an open of `inode` with `flags` and `options`; one that
    /// may write into the writeback cache is counted until its release.
    fn open_handle(&self, inode: u64, flags: u32, options: OpenOptions) -> u64 {
        let h = self.new_handle(flags);
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
    /// its /dev/fuse connection to send notifications on (writeback.rs).
    pub fn mounted_at(&self, mountpoint: &std::path::Path, fuse: Option<std::os::fd::OwnedFd>) {
        if self.opts.writeback_cache {
            self.wb.mounted(mountpoint, fuse);
        }
    }

    /// The GETATTR a cached write(2) sends with its handle when the
    /// kernel's attributes are stale: after a failed write-back of the
    /// inode, a write-only handle's is that failure while space stays
    /// below the headroom, and the write(2) fails with it (writeback.rs).
    fn refuse_cached_write(&self, inode: u64, handle: u64) -> io::Result<()> {
        if !handle_cached_writer(handle) || handle as i32 & libc::O_ACCMODE != libc::O_WRONLY {
            return Ok(());
        }
        let Some(errno) = self.wb.failed(inode) else {
            return Ok(());
        };
        let free = self.call(Counter::Getattr, |fs| ready(fs.free_data_bytes()))?;
        if free >= self.wb.headroom.bytes() {
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
        let c = self.creds_umask(ctx, args.umask);
        let mode = args.mode;
        // The engine holds the new inode open for this handle.
        let a = self.call(Counter::Create, move |fs| {
            ready(fs.tmpfile(&c, parent, mode))
        })?;
        let handle = self.open_handle(a.ino, args.flags, OpenOptions::empty());
        Ok((self.entry(&a), handle))
    }

    /// FORGET and BATCH_FORGET: the kernel gives lookup counts back; the
    /// unlinked inodes it no longer references are deleted (refs.rs in the
    /// engine). No reply goes back, so a failure is only logged.
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
        let counters = self.counters.clone();
        let r = self.engine.call(move |fs| {
            for ino in gone {
                if let Err(e) = ready(fs.forgotten(ino)) {
                    counters.error(&e);
                    tracing::warn!("deleting unlinked inode {ino} at its last FORGET: {e}");
                }
            }
        });
        if let Err(e) = r {
            self.counters.bump(Counter::Errors);
            tracing::error!("engine call failed: {e}");
        }
    }

    /// The end of the readdir pass of `handle` that a read at `offset`
    /// belongs to (dir_pass.rs): asked of the engine when a pass begins
    /// other than at opendir.
    fn pass_end(&self, inode: u64, handle: u64, offset: u64) -> io::Result<u64> {
        if let Some(end) = self.passes.end_for(handle, offset) {
            return Ok(end);
        }
        let end = self.call(Counter::Readdir, move |fs| {
            ready(fs.readdir_pass_end(inode))
        })?;
        self.passes.begin(handle, end);
        Ok(end)
    }
}

/// The data device's free bytes, for an open choosing its caching; 0 (so
/// written through, the safe choice) if the engine can't say.
fn free_bytes(fs: &mut Mounted) -> u64 {
    ready(fs.free_data_bytes()).unwrap_or(0)
}

/// `__FMODE_EXEC` in an open's flags: the kernel opening a file to
/// execute it (execve, binfmt interpreters). Set only by the kernel:
/// open(2) drops bits outside VALID_OPEN_FLAGS.
const FMODE_EXEC: i32 = 0o40;

/// The access an open with these flags needs. An open for execution
/// needs execute permission only, as the VFS's `do_open_execat`: the
/// kernel reads the image itself, so a file that is x but not r runs.
fn open_mask(flags: u32) -> u32 {
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
        let (c, n) = (self.creds(ctx), name_bytes(name));
        // The VFS resolves "." and ".." itself: only a file handle's
        // decoding sends them (handle.rs in the engine).
        let r = self.call(Counter::Lookup, move |fs| match n.as_slice() {
            b"." => ready(fs.handle_inode(parent)),
            b".." => ready(fs.handle_parent(parent)),
            _ => ready(fs.lookup(&c, parent, &n)),
        });
        match r {
            Ok(a) => Ok(self.entry(&a)),
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
        _ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        if let Some(h) = handle {
            self.refuse_cached_write(inode, h)?;
        }
        let a = self.call(Counter::Getattr, move |fs| ready(fs.getattr(inode)))?;
        Ok((stat_of(&a), self.opts.attr_timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let c = self.creds(ctx);
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
            set.handle_writable = handle.is_some_and(handle_writable);
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
        let a = self.call(Counter::Setattr, move |fs| {
            ready(fs.setattr(&c, inode, &set))
        })?;
        // chmod rewrites an access ACL; chown may too.
        self.acl_notes.forget(inode);
        Ok((stat_of(&a), self.opts.attr_timeout))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.call(Counter::Readlink, move |fs| ready(fs.readlink(inode)))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let (c, n, t) = (self.creds(ctx), name_bytes(name), name_bytes(linkname));
        let a = self.call(Counter::Create, move |fs| {
            ready(fs.symlink(&c, parent, &n, &t))
        })?;
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
        let (c, n) = (self.creds_umask(ctx, umask), name_bytes(name));
        let a = self.call(Counter::Create, move |fs| {
            ready(fs.mknod(&c, parent, &n, mode, rdev))
        })?;
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
        let (c, n) = (self.creds_umask(ctx, umask), name_bytes(name));
        let a = self.call(Counter::Create, move |fs| {
            ready(fs.mkdir(&c, parent, &n, mode))
        })?;
        Ok(self.entry(&a))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let (c, n) = (self.creds(ctx), name_bytes(name));
        self.call(Counter::Remove, move |fs| ready(fs.unlink(&c, parent, &n)))
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let (c, n) = (self.creds(ctx), name_bytes(name));
        self.call(Counter::Remove, move |fs| ready(fs.rmdir(&c, parent, &n)))
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
        let (c, o, n) = (self.creds(ctx), name_bytes(oldname), name_bytes(newname));
        self.call(Counter::Rename, move |fs| {
            ready(fs.rename(&c, olddir, &o, newdir, &n, flags))
        })
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let (c, n) = (self.creds(ctx), name_bytes(newname));
        let a = self.call(Counter::Create, move |fs| {
            ready(fs.link(&c, inode, newparent, &n))
        })?;
        Ok(self.entry(&a))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let c = self.creds(ctx);
        let mask = open_mask(flags);
        let ask_free = self.asks_free_space(flags);
        let free = self.call(Counter::Open, move |fs| {
            ready(fs.open_ino(&c, inode, mask))?;
            Ok(ask_free.then(|| free_bytes(fs)))
        })?;
        let options = self.open_options(flags, free);
        Ok((Some(self.open_handle(inode, flags, options)), options, None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let (c, n) = (self.creds_umask(ctx, args.umask), name_bytes(name));
        let mode = args.mode;
        let ask_free = self.asks_free_space(args.flags);
        let (a, free) = self.call(Counter::Create, move |fs| {
            let a = ready(fs.create(&c, parent, &n, mode))?;
            // The new file is open: hold it in the same reactor turn.
            fs.hold_ino(a.ino);
            Ok((a, ask_free.then(|| free_bytes(fs))))
        })?;
        let options = self.open_options(args.flags, free);
        let handle = self.open_handle(a.ino, args.flags, options);
        Ok((self.entry(&a), Some(handle), options, None))
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        check_io_size(size)?;
        let data = self.call(Counter::Read, move |fs| {
            ready(fs.read(inode, offset, size as usize))
        })?;
        self.counters.add(Counter::BytesRead, data.len() as u64);
        io::Write::write_all(w, &data)?;
        Ok(data.len())
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        _handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        check_io_size(size)?;
        let mut buf = vec![0u8; size as usize];
        io::Read::read_exact(r, &mut buf)?;
        // FUSE_WRITE_CACHE: pages written back (stores through a shared
        // mapping, or the writeback cache), sent by the kernel as uid 0.
        // What a write(2) drops went when it entered the cache; a store
        // through a mapping drops nothing, as on ext4.
        let n = if delayed_write {
            let r = self.call(Counter::Write, move |fs| {
                ready(fs.write_back(inode, offset, &buf))
            });
            // The kernel keeps a failure for fsync and close; the next
            // cached write(2) hears of it too (writeback.rs).
            let errno = match &r {
                Ok(_) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            };
            self.wb.written_back(inode, errno);
            r?
        } else {
            let c = self.creds(ctx);
            self.call(Counter::Write, move |fs| {
                ready(fs.write(&c, inode, offset, &buf))
            })?
        };
        self.counters.add(Counter::BytesWritten, n);
        Ok(n as usize)
    }

    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        self.call(Counter::Fsync, move |fs| ready(fs.sync()).map(|_| ()))?;
        // The kernel wrote the file's pages back first; with the writeback
        // cache it keeps the st_blocks it had: have it ask again.
        self.wb.inval_attrs_now(inode);
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
        let c = self.creds(ctx);
        self.call(Counter::Write, move |fs| {
            ready(fs.fallocate(&c, inode, mode, offset, length))
        })
    }

    fn release(
        &self,
        _ctx: &Context,
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
        self.call(Counter::Release, move |fs| ready(fs.release(inode)))
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        let s = self.call(Counter::Statfs, move |fs| ready(fs.statfs()))?;
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
        let (c, n, v) = (self.creds(ctx), name_bytes(name), value.to_vec());
        let r = self.call(Counter::Xattr, move |fs| {
            ready(fs.set_xattr(&c, inode, &n, &v, flags))
        });
        self.acl_notes.forget(inode);
        r
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
        let (c, n) = (self.creds(ctx), name_bytes(name));
        let v = self.call(Counter::Xattr, move |fs| ready(fs.get_xattr(&c, inode, &n)))?;
        if size == 0 {
            Ok(GetxattrReply::Count(v.len() as u32))
        } else if v.len() > size as usize {
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        } else {
            Ok(GetxattrReply::Value(v))
        }
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let c = self.creds(ctx);
        let names = self.call(Counter::Xattr, move |fs| ready(fs.list_xattrs(&c, inode)))?;
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
            return self.call(Counter::Xattr, move |fs| ready(fs.kill_capability(inode)));
        }
        let (c, n) = (self.creds(ctx), name_bytes(name));
        let r = self.call(Counter::Xattr, move |fs| {
            ready(fs.remove_xattr(&c, inode, &n))
        });
        self.acl_notes.forget(inode);
        r
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let c = self.creds(ctx);
        let end = self.call(Counter::Open, move |fs| {
            let a = ready(fs.open_ino(&c, inode, MAY_READ))?;
            if a.kind != scoutfs_engine::fs::FileType::Directory {
                ready(fs.release(inode))?;
                return Err(FsError::NotDir);
            }
            // The handle's first readdir pass ends here (dir_pass.rs).
            ready(fs.readdir_pass_end(inode))
        })?;
        let handle = self.new_handle(flags);
        self.passes.open(handle, end);
        Ok((Some(handle), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(FuseDirEntry<'_>) -> io::Result<usize>,
    ) -> io::Result<()> {
        let end = self.pass_end(inode, handle, offset)?;
        // Each entry takes at least 32 bytes of the reply: fetch about as
        // many as fit, and more if the names were short.
        let mut pos = offset;
        let per_call = (size as usize / 32).clamp(8, 1024);
        // atime by the mount's policy, once per request (the kernel's
        // getdents), as the VFS's iterate_dir.
        let mut touch = true;
        loop {
            let entries = self.call(Counter::Readdir, move |fs| {
                if touch {
                    ready(fs.touch_atime(inode))?;
                }
                ready(fs.readdir_until(inode, pos, end, per_call))
            })?;
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
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(FuseDirEntry<'_>, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let end = self.pass_end(inode, handle, offset)?;
        let mut pos = offset;
        let per_call = (size as usize / 160).clamp(4, 256);
        let note_acls = self.opts.posix_acl;
        let mut touch = true;
        loop {
            let (generation, asked) = (self.acl_notes.generation(), Instant::now());
            let (entries, no_acl) = self.call(Counter::Readdir, move |fs| {
                if touch {
                    ready(fs.touch_atime(inode))?;
                }
                let list = ready(fs.readdir_until(inode, pos, end, per_call))?;
                let mut out = Vec::with_capacity(list.len());
                let mut no_acl = Vec::new();
                for e in list {
                    // An entry removed since the listing is skipped.
                    match ready(fs.getattr(e.ino)) {
                        Ok(a) => out.push((e, Some(a))),
                        Err(FsError::NotFound) => out.push((e, None)),
                        Err(err) => return Err(err),
                    }
                }
                // `ls -l` asks each of them for its access ACL next.
                for (e, _) in out.iter().filter(|(_, a)| note_acls && a.is_some()) {
                    if let Err(FsError::NoData) =
                        ready(fs.get_xattr(&Creds::root(), e.ino, ACL_ACCESS))
                    {
                        no_acl.push(e.ino);
                    }
                }
                Ok((out, no_acl))
            })?;
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

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.passes.close(handle);
        self.call(Counter::Release, move |fs| ready(fs.release(inode)))
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let c = self.creds(ctx);
        let m = mask & (MAY_READ | MAY_WRITE | MAY_EXEC);
        self.call(Counter::Getattr, move |fs| ready(fs.access(&c, inode, m)))
    }

    fn lseek(
        &self,
        _ctx: &Context,
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
        self.call(Counter::Read, move |fs| {
            ready(fs.seek_data(inode, offset, want_data))
        })
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
