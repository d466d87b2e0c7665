//! Who asks: the credentials every request carries. They always come from
//! the transport, never from what a client says about itself: the FUSE
//! request header (uid, gid, pid) with the supplementary groups read from
//! /proc/PID/status, or a Unix socket's peer credentials (SO_PEERCRED) for
//! the admin socket and, later, the shim's connection.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::fs::Creds;

/// The caller of one request: fs uid and gid, supplementary groups, the
/// process id (0 for the frontend's kernel itself, as FUSE's write-back),
/// and the umask that applies to inodes the request creates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub pid: i32,
    /// The process's umask (rwx bits), for creates; 0 otherwise.
    pub umask: u32,
}

impl Caller {
    /// The engine itself (or root): passes every permission check and may
    /// run admin operations.
    pub fn root() -> Caller {
        Caller::default()
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The same caller creating with `umask`.
    pub fn with_umask(self, umask: u32) -> Caller {
        Caller { umask, ..self }
    }

    /// What the fs layer's permission checks take.
    pub fn creds(&self) -> Creds {
        Creds {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            umask: self.umask,
        }
    }
}

/// How long a process's groups are trusted once read.
const GROUPS_TTL: Duration = Duration::from_secs(1);
/// Most callers remembered; beyond it the expired ones go, or all.
const GROUPS_MAX_ENTRIES: usize = 4096;

/// The supplementary groups of callers, by (pid, uid, gid): a transport
/// that gives uid, gid and pid but not the groups (FUSE's request header,
/// SO_PEERCRED) has them read from /proc/PID/status, cached for a second
/// per caller so a busy process costs one read a second. Shared by the
/// frontends' threads.
#[derive(Debug, Default)]
pub struct GroupCache {
    map: Mutex<HashMap<CallerKey, (Instant, Vec<u32>)>>,
}

/// (pid, uid, gid) of a caller.
type CallerKey = (i32, u32, u32);

/// The "Groups:" line of /proc/PID/status; `None` if the process is gone.
fn read_groups(pid: i32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Groups:"))?;
    Some(
        line["Groups:".len()..]
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

impl GroupCache {
    /// The caller with `uid`, `gid` and process `pid`, its groups looked
    /// up (none for root, which passes every check, and for pid 0, the
    /// kernel itself, whose request was checked when it was queued; none
    /// either if the process has gone).
    pub fn caller(&self, uid: u32, gid: u32, pid: i32) -> Caller {
        let caller = |groups| Caller {
            uid,
            gid,
            groups,
            pid,
            umask: 0,
        };
        if uid == 0 || pid <= 0 {
            return caller(Vec::new());
        }
        let key = (pid, uid, gid);
        let now = Instant::now();
        if let Ok(map) = self.map.lock() {
            if let Some((at, groups)) = map.get(&key) {
                if now.duration_since(*at) < GROUPS_TTL {
                    return caller(groups.clone());
                }
            }
        }
        let groups = read_groups(pid).unwrap_or_default();
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= GROUPS_MAX_ENTRIES {
                map.retain(|_, (at, _)| now.duration_since(*at) < GROUPS_TTL);
                if map.len() >= GROUPS_MAX_ENTRIES {
                    map.clear();
                }
            }
            map.insert(key, (now, groups.clone()));
        }
        caller(groups)
    }
}

/// The process at the other end of a connected Unix socket, from the
/// kernel's SO_PEERCRED (uid, gid and pid as of connect), with its groups
/// from `groups`. Errors are getsockopt's (ENOTSOCK, ...).
pub fn peer_caller(sock: &impl AsRawFd, groups: &GroupCache) -> std::io::Result<Caller> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a ucred and `len` its size, both live for the
    // call; the kernel writes at most `len` bytes into it.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(groups.caller(cred.uid, cred.gid, cred.pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_groups() {
        let me = std::process::id() as i32;
        let groups = read_groups(me).expect("/proc/self/status has Groups:");
        // SAFETY: getgroups with a zero size only returns the count.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        assert_eq!(groups.len(), n as usize);
        let c = GroupCache::default().caller(1000, 1000, me);
        assert_eq!((c.groups, c.pid), (groups, me));
    }

    #[test]
    fn root_and_the_kernel_need_no_groups() {
        let cache = GroupCache::default();
        assert!(cache
            .caller(0, 0, std::process::id() as i32)
            .groups
            .is_empty());
        assert!(cache.caller(1000, 1000, 0).groups.is_empty());
    }

    #[test]
    fn a_socket_peer_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = peer_caller(&a, &GroupCache::default()).unwrap();
        // SAFETY: getuid and getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!((c.uid, c.gid, c.pid), (uid, gid, std::process::id() as i32));
        let f = tempfile::tempfile().unwrap();
        assert!(peer_caller(&f, &GroupCache::default()).is_err());
    }
}
