//! The caller's credentials. FUSE requests carry uid, gid and pid but not
//! the supplementary groups, which group permission checks and the setgid
//! rules need; they are read from /proc/PID/status and cached for a short
//! while per (pid, uid, gid), so a busy process costs one read a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use scoutfs_engine::fs::Creds;

const TTL: Duration = Duration::from_secs(1);
const MAX_ENTRIES: usize = 4096;

/// (pid, uid, gid) of a request.
type Caller = (i32, u32, u32);

#[derive(Debug, Default)]
pub struct GroupCache {
    map: Mutex<HashMap<Caller, (Instant, Vec<u32>)>>,
}

/// The "Groups:" line of /proc/PID/status.
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
    pub fn creds(&self, uid: u32, gid: u32, pid: i32) -> Creds {
        if uid == 0 || pid <= 0 {
            // Root passes every check; pid 0 is the kernel itself
            // (writeback), whose request was checked when it was queued.
            return Creds {
                uid,
                gid,
                ..Creds::default()
            };
        }
        let key = (pid, uid, gid);
        let now = Instant::now();
        if let Ok(map) = self.map.lock() {
            if let Some((at, groups)) = map.get(&key) {
                if now.duration_since(*at) < TTL {
                    return Creds {
                        uid,
                        gid,
                        groups: groups.clone(),
                        ..Creds::default()
                    };
                }
            }
        }
        let groups = read_groups(pid).unwrap_or_default();
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_ENTRIES {
                map.retain(|_, (at, _)| now.duration_since(*at) < TTL);
                if map.len() >= MAX_ENTRIES {
                    map.clear();
                }
            }
            map.insert(key, (now, groups.clone()));
        }
        Creds {
            uid,
            gid,
            groups,
            ..Creds::default()
        }
    }
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
        let c = GroupCache::default().creds(1000, 1000, me);
        assert_eq!(c.groups, groups);
    }
}
