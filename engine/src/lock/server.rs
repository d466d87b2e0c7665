//! The lock server's state machine (scoutfs's `lock_server.c`), pure: it
//! takes the messages nodes send and returns the messages to send them.
//! Today [`LocalGrantSource`] runs it in-process for the one node; the
//! cluster issue runs the same machine in the server role behind the
//! network, for every node.
//!
//! Per cluster lock (known by its start key): the nodes granted a mode,
//! the requests in arrival order, and the grants being invalidated.
//! Requests are served in order. For the first, every grant it is not
//! compatible with is sent an invalidation (to read for a write facing a
//! reader, else to null), and nothing more is granted on that lock until
//! every answer is in; then the request is granted, replacing the node's
//! own grant. Write and write-only grants carry a new `write_seq`.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use crate::format::Key;

use super::mode::{invalidation_mode, server_compatible, LockMode};
use super::seam::{ClientMsg, GrantSource, NetLock, ServerMsg};
use super::table::LockTableHandle;

/// A node's entry on a server lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    rid: u64,
    mode: LockMode,
}

#[derive(Debug, Default)]
struct ServerLock {
    granted: Vec<Entry>,
    requested: VecDeque<Entry>,
    invalidated: Vec<Entry>,
}

impl ServerLock {
    fn is_empty(&self) -> bool {
        self.granted.is_empty() && self.requested.is_empty() && self.invalidated.is_empty()
    }
}

/// A message the server refuses (it would come from a confused or hostile
/// node; the network layer drops the connection).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockServerError {
    #[error("node {rid} answered an invalidation of {key} it was not sent")]
    UnexpectedResponse { rid: u64, key: Key },
    #[error("node {rid} sent a second request for {key} before the first was granted")]
    DuplicateRequest { rid: u64, key: Key },
}

/// The lock server's state: every lock some node holds or wants.
#[derive(Debug, Default)]
pub struct LockServer {
    locks: BTreeMap<Key, ServerLock>,
    write_seq: u64,
}

/// Messages for nodes: (rid, message), in sending order.
pub type Outbox = Vec<(u64, ServerMsg)>;

impl LockServer {
    pub fn new() -> LockServer {
        LockServer::default()
    }

    /// A message from node `rid`.
    pub fn receive(&mut self, rid: u64, msg: ClientMsg) -> Result<Outbox, LockServerError> {
        match msg {
            ClientMsg::Request(nl) => self.request(rid, nl),
            ClientMsg::Invalidated(nl) => self.invalidated(rid, nl),
        }
    }

    /// scoutfs's `scoutfs_lock_server_request`.
    pub fn request(&mut self, rid: u64, nl: NetLock) -> Result<Outbox, LockServerError> {
        let sl = self.locks.entry(nl.key).or_default();
        if sl.requested.iter().any(|e| e.rid == rid) {
            return Err(LockServerError::DuplicateRequest { rid, key: nl.key });
        }
        sl.requested.push_back(Entry {
            rid,
            mode: nl.new_mode,
        });
        let mut out = Vec::new();
        self.process(nl.key, &mut out);
        Ok(out)
    }

    /// scoutfs's `scoutfs_lock_server_response`: node `rid` answered an
    /// invalidation.
    pub fn invalidated(&mut self, rid: u64, nl: NetLock) -> Result<Outbox, LockServerError> {
        let err = LockServerError::UnexpectedResponse { rid, key: nl.key };
        let sl = self.locks.get_mut(&nl.key).ok_or(err.clone())?;
        let i = sl
            .invalidated
            .iter()
            .position(|e| e.rid == rid)
            .ok_or(err)?;
        let mut e = sl.invalidated.remove(i);
        if nl.new_mode != LockMode::Null {
            e.mode = nl.new_mode;
            sl.granted.push(e);
        }
        let mut out = Vec::new();
        self.process(nl.key, &mut out);
        Ok(out)
    }

    /// Forget node `rid` (farewell, or fenced): its grants and requests go,
    /// and so does its part in invalidations under way, which may let
    /// waiting requests be granted.
    pub fn remove_node(&mut self, rid: u64) -> Outbox {
        let keys: Vec<Key> = self.locks.keys().copied().collect();
        let mut out = Vec::new();
        for key in keys {
            if let Some(sl) = self.locks.get_mut(&key) {
                sl.granted.retain(|e| e.rid != rid);
                sl.requested.retain(|e| e.rid != rid);
                sl.invalidated.retain(|e| e.rid != rid);
            }
            self.process(key, &mut out);
        }
        out
    }

    /// The modes granted on the lock at `key`, per node (for tests and
    /// debugging).
    pub fn granted(&self, key: &Key) -> Vec<(u64, LockMode)> {
        self.locks.get(key).map_or(Vec::new(), |sl| {
            sl.granted.iter().map(|e| (e.rid, e.mode)).collect()
        })
    }

    /// scoutfs's `process_waiting_requests`.
    fn process(&mut self, key: Key, out: &mut Outbox) {
        let Some(sl) = self.locks.get_mut(&key) else {
            return;
        };
        while sl.invalidated.is_empty() {
            let Some(req) = sl.requested.front().copied() else {
                break;
            };
            let mut i = 0;
            while i < sl.granted.len() {
                let gr = sl.granted[i];
                if server_compatible(gr.rid, gr.mode, req.rid, req.mode) {
                    i += 1;
                    continue;
                }
                out.push((
                    gr.rid,
                    ServerMsg::Invalidate(NetLock {
                        key,
                        write_seq: 0,
                        old_mode: gr.mode,
                        new_mode: invalidation_mode(gr.mode, req.mode),
                    }),
                ));
                sl.invalidated.push(sl.granted.remove(i));
            }
            if !sl.invalidated.is_empty() {
                break;
            }
            sl.requested.pop_front();
            let old_mode = match sl.granted.iter().position(|e| e.rid == req.rid) {
                Some(i) => sl.granted.remove(i).mode,
                None => LockMode::Null,
            };
            let write_seq = if req.mode.can_write() {
                self.write_seq += 1;
                self.write_seq
            } else {
                0
            };
            out.push((
                req.rid,
                ServerMsg::Grant(NetLock {
                    key,
                    write_seq,
                    old_mode,
                    new_mode: req.mode,
                }),
            ));
            if req.mode != LockMode::Null {
                sl.granted.push(req);
            }
        }
        if sl.is_empty() {
            self.locks.remove(&key);
        }
    }
}

/// The grant source of a single node: the lock server in-process, its
/// answers delivered to the table before `send` returns. Grants come at
/// once; only a change of the node's own mode that the server would not
/// make in place (write-only to write, write to write-only, anything to
/// null) goes through an invalidation of its own grant first, as with the
/// original's server.
#[derive(Clone, Debug)]
pub struct LocalGrantSource {
    rid: u64,
    inner: Rc<RefCell<LocalInner>>,
}

#[derive(Debug, Default)]
struct LocalInner {
    server: LockServer,
    table: Option<LockTableHandle>,
}

impl LocalGrantSource {
    pub fn new(rid: u64) -> LocalGrantSource {
        LocalGrantSource {
            rid,
            inner: Rc::new(RefCell::new(LocalInner::default())),
        }
    }

    /// Where to deliver the server's messages.
    pub fn attach(&self, table: LockTableHandle) {
        self.inner.borrow_mut().table = Some(table);
    }
}

impl GrantSource for LocalGrantSource {
    fn send(&self, msg: ClientMsg) {
        let (out, table) = {
            let mut inner = self.inner.borrow_mut();
            let out = match inner.server.receive(self.rid, msg) {
                Ok(out) => out,
                Err(e) => {
                    // Our own table broke the protocol: a bug, not input.
                    debug_assert!(false, "{e}");
                    tracing::error!("local lock server: {e}");
                    Vec::new()
                }
            };
            (out, inner.table.clone())
        };
        let Some(table) = table else { return };
        for (rid, m) in out {
            debug_assert_eq!(rid, self.rid);
            table.deliver(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockMode::*;

    fn req(key: u64, old: LockMode, new: LockMode) -> NetLock {
        NetLock {
            key: Key::inode_first(key),
            write_seq: 0,
            old_mode: old,
            new_mode: new,
        }
    }

    fn grant(key: u64, old: LockMode, new: LockMode, write_seq: u64) -> ServerMsg {
        ServerMsg::Grant(NetLock {
            key: Key::inode_first(key),
            write_seq,
            old_mode: old,
            new_mode: new,
        })
    }

    fn inval(key: u64, old: LockMode, new: LockMode) -> ServerMsg {
        ServerMsg::Invalidate(NetLock {
            key: Key::inode_first(key),
            write_seq: 0,
            old_mode: old,
            new_mode: new,
        })
    }

    #[test]
    fn readers_share_and_a_writer_waits_for_their_invalidation() {
        let mut s = LockServer::new();
        assert_eq!(
            s.request(1, req(0, Null, Read)).unwrap(),
            vec![(1, grant(0, Null, Read, 0))]
        );
        assert_eq!(
            s.request(2, req(0, Null, Read)).unwrap(),
            vec![(2, grant(0, Null, Read, 0))]
        );
        // A writer on node 3: both readers are invalidated to null.
        let out = s.request(3, req(0, Null, Write)).unwrap();
        assert_eq!(
            out,
            vec![(1, inval(0, Read, Null)), (2, inval(0, Read, Null))]
        );
        // Nothing more is granted until both answer, even compatible ones.
        assert_eq!(s.request(4, req(0, Null, Read)).unwrap(), vec![]);
        assert_eq!(s.invalidated(1, req(0, Read, Null)).unwrap(), vec![]);
        let out = s.invalidated(2, req(0, Read, Null)).unwrap();
        // The writer, then the reader behind it: the writer to read.
        assert_eq!(
            out,
            vec![(3, grant(0, Null, Write, 1)), (3, inval(0, Write, Read))]
        );
        let out = s.invalidated(3, req(0, Write, Read)).unwrap();
        assert_eq!(out, vec![(4, grant(0, Null, Read, 0))]);
        let mut g = s.granted(&Key::inode_first(0));
        g.sort();
        assert_eq!(g, vec![(3, Read), (4, Read)]);
    }

    #[test]
    fn a_node_s_read_upgrades_in_place_but_write_only_goes_through_null() {
        let mut s = LockServer::new();
        s.request(1, req(0, Null, Read)).unwrap();
        assert_eq!(
            s.request(1, req(0, Read, Write)).unwrap(),
            vec![(1, grant(0, Read, Write, 1))]
        );
        let mut s = LockServer::new();
        s.request(1, req(0, Null, WriteOnly)).unwrap();
        s.request(2, req(0, Null, WriteOnly)).unwrap();
        let out = s.request(1, req(0, WriteOnly, Write)).unwrap();
        assert_eq!(
            out,
            vec![
                (1, inval(0, WriteOnly, Null)),
                (2, inval(0, WriteOnly, Null))
            ]
        );
        s.invalidated(2, req(0, WriteOnly, Null)).unwrap();
        let out = s.invalidated(1, req(0, WriteOnly, Null)).unwrap();
        assert_eq!(out, vec![(1, grant(0, Null, Write, 3))]);
    }

    #[test]
    fn a_null_request_is_granted_after_the_node_s_own_invalidation() {
        let mut s = LockServer::new();
        s.request(1, req(0, Null, Write)).unwrap();
        s.request(2, req(1, Null, Read)).unwrap();
        let out = s.request(1, req(0, Write, Null)).unwrap();
        assert_eq!(out, vec![(1, inval(0, Write, Null))]);
        let out = s.invalidated(1, req(0, Write, Null)).unwrap();
        assert_eq!(out, vec![(1, grant(0, Null, Null, 0))]);
        assert!(s.granted(&Key::inode_first(0)).is_empty());
        assert_eq!(s.locks.len(), 1, "an empty lock is forgotten");
    }

    #[test]
    fn bad_messages_are_refused() {
        let mut s = LockServer::new();
        assert!(s.invalidated(1, req(0, Read, Null)).is_err());
        s.request(1, req(0, Null, Write)).unwrap();
        s.request(2, req(0, Null, Write)).unwrap();
        assert!(s.request(2, req(0, Null, Write)).is_err());
        assert!(s.invalidated(2, req(0, Write, Null)).is_err());
    }

    #[test]
    fn removing_a_node_lets_the_others_go_on() {
        let mut s = LockServer::new();
        s.request(1, req(0, Null, Write)).unwrap();
        assert_eq!(
            s.request(2, req(0, Null, Write)).unwrap(),
            vec![(1, inval(0, Write, Null))]
        );
        assert_eq!(s.remove_node(1), vec![(2, grant(0, Null, Write, 2))]);
    }
}
