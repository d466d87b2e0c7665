//! Lock modes and their rules, as scoutfs's (`format.h`'s
//! `enum scoutfs_lock_mode`, `lock.c`'s `lock_modes_match`,
//! `lock_server.c`'s `client_entries_compatible` and `invalidation_mode`).
//!
//! - **Read**: shared; holders read items, nobody writes them.
//! - **Write**: exclusive; the holder reads and writes.
//! - **WriteOnly**: shared among writers that only create items blindly and
//!   never read them (index items, orphans, `.totl.` deltas): their changes
//!   commute, so they may run side by side, but none may trust what it has
//!   cached for reading.
//! - **Null**: no access; what a node is invalidated down to, and the mode
//!   of a lock it does not hold.

use std::fmt;

/// A lock mode. The discriminants are scoutfs's on-wire values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum LockMode {
    #[default]
    Null = 0,
    Read = 1,
    Write = 2,
    WriteOnly = 3,
}

/// How many modes there are (the size of per-mode counters).
pub const LOCK_NR_MODES: usize = 4;

impl LockMode {
    pub const ALL: [LockMode; LOCK_NR_MODES] = [
        LockMode::Null,
        LockMode::Read,
        LockMode::Write,
        LockMode::WriteOnly,
    ];

    /// The mode of an on-wire value; `None` for anything else (a garbled
    /// message is refused, never trusted).
    pub fn from_u8(v: u8) -> Option<LockMode> {
        LockMode::ALL.get(usize::from(v)).copied()
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Holders may read items under the lock (scoutfs's
    /// `lock_mode_can_read`).
    pub fn can_read(self) -> bool {
        matches!(self, LockMode::Read | LockMode::Write)
    }

    /// Holders may dirty items under the lock (`lock_mode_can_write`).
    pub fn can_write(self) -> bool {
        matches!(self, LockMode::Write | LockMode::WriteOnly)
    }

    /// Whether a node granted `self` may let a user have `wanted`
    /// (`lock_modes_match`): the same mode, or a read under a write grant.
    /// Directional: a read grant does not satisfy a write.
    pub fn covers(self, wanted: LockMode) -> bool {
        self == wanted || (self == LockMode::Write && wanted == LockMode::Read)
    }

    /// Whether two different holders may hold these modes at once: reads
    /// share with reads, write-only with write-only, write with nothing.
    /// This is the rule between nodes (for live grants), and within a node
    /// between the tasks holding one lock name.
    pub fn compatible(self, other: LockMode) -> bool {
        self == other && matches!(self, LockMode::Read | LockMode::WriteOnly)
    }

    /// The mode to give a holder when two users of one name want `self`
    /// and `other` (a set naming a lock twice): the weakest mode that does
    /// both, which is `Write` unless they are equal.
    pub fn join(self, other: LockMode) -> LockMode {
        match (self, other) {
            (a, b) if a == b => a,
            (LockMode::Null, b) => b,
            (a, LockMode::Null) => a,
            _ => LockMode::Write,
        }
    }
}

/// Whether every mode with a non-zero count in `users` is covered by a
/// grant of `granted` (scoutfs's `lock_counts_match`).
pub fn counts_covered(granted: LockMode, users: &[u32; LOCK_NR_MODES]) -> bool {
    LockMode::ALL
        .iter()
        .all(|m| users[m.index()] == 0 || granted.covers(*m))
}

/// The mode the server invalidates a grant of `granted` down to so that
/// a request for `requested` can be granted (`invalidation_mode`): a write
/// drops to read for a reader (its cache stays valid once written back);
/// everything else drops to null.
pub fn invalidation_mode(granted: LockMode, requested: LockMode) -> LockMode {
    if granted == LockMode::Write && requested == LockMode::Read {
        LockMode::Read
    } else {
        LockMode::Null
    }
}

/// Whether the server may let `requested` (from node `req_rid`) stand
/// beside `granted` (held by node `gr_rid`) without invalidating it
/// (`client_entries_compatible`). Between nodes: compatible modes, and a
/// null on either side. On one node: its read upgrades to a write in
/// place, since the reads it cached stay valid; any other change of its
/// own mode goes through an invalidation of its grant first (write-only to
/// write must drop the blind writer's cache; write to write-only passes
/// through null).
pub fn server_compatible(
    gr_rid: u64,
    granted: LockMode,
    req_rid: u64,
    requested: LockMode,
) -> bool {
    if gr_rid != req_rid {
        granted == LockMode::Null || requested == LockMode::Null || granted.compatible(requested)
    } else {
        granted == LockMode::Read && requested == LockMode::Write
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Null => "null",
            LockMode::Read => "read",
            LockMode::Write => "write",
            LockMode::WriteOnly => "write_only",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::LockMode::*;
    use super::*;

    #[test]
    fn wire_values_are_scoutfs_s() {
        assert_eq!(Null as u8, 0);
        assert_eq!(Read as u8, 1);
        assert_eq!(Write as u8, 2);
        assert_eq!(WriteOnly as u8, 3);
        for m in LockMode::ALL {
            assert_eq!(LockMode::from_u8(m as u8), Some(m));
        }
        assert_eq!(LockMode::from_u8(4), None);
        assert_eq!(LockMode::from_u8(255), None);
    }

    #[test]
    fn read_shares_with_read_and_write_only_with_write_only() {
        let table = [
            (Read, Read, true),
            (Read, Write, false),
            (Read, WriteOnly, false),
            (Write, Write, false),
            (Write, WriteOnly, false),
            (WriteOnly, WriteOnly, true),
        ];
        for (a, b, ok) in table {
            assert_eq!(a.compatible(b), ok, "{a} with {b}");
            assert_eq!(b.compatible(a), ok, "{b} with {a}");
        }
    }

    #[test]
    fn a_write_grant_covers_reads_but_nothing_covers_write_only_but_itself() {
        assert!(Write.covers(Read));
        assert!(Write.covers(Write));
        assert!(!Write.covers(WriteOnly));
        assert!(!Read.covers(Write));
        assert!(!Read.covers(WriteOnly));
        assert!(!WriteOnly.covers(Read));
        assert!(!WriteOnly.covers(Write));
        assert!(WriteOnly.covers(WriteOnly));
        assert!(!Null.covers(Read));
        let mut users = [0u32; LOCK_NR_MODES];
        users[Read.index()] = 2;
        assert!(counts_covered(Write, &users));
        assert!(counts_covered(Read, &users));
        assert!(!counts_covered(Null, &users));
        users[WriteOnly.index()] = 1;
        assert!(!counts_covered(Write, &users));
    }

    #[test]
    fn only_write_to_read_keeps_the_cache() {
        assert_eq!(invalidation_mode(Write, Read), Read);
        assert_eq!(invalidation_mode(Write, Write), Null);
        assert_eq!(invalidation_mode(Write, WriteOnly), Null);
        assert_eq!(invalidation_mode(Read, Write), Null);
        assert_eq!(invalidation_mode(WriteOnly, Read), Null);
    }

    #[test]
    fn the_server_upgrades_a_node_s_own_read_in_place_only() {
        assert!(server_compatible(1, Read, 1, Write));
        assert!(!server_compatible(1, WriteOnly, 1, Write));
        assert!(!server_compatible(1, Write, 1, WriteOnly));
        assert!(!server_compatible(1, Write, 1, Null));
        assert!(server_compatible(1, Read, 2, Read));
        assert!(server_compatible(1, WriteOnly, 2, WriteOnly));
        assert!(!server_compatible(1, Read, 2, Write));
        assert!(!server_compatible(1, Write, 2, Read));
        assert!(server_compatible(1, Write, 2, Null));
    }

    #[test]
    fn join_is_the_weakest_mode_doing_both() {
        assert_eq!(Read.join(Read), Read);
        assert_eq!(Read.join(Write), Write);
        assert_eq!(Read.join(WriteOnly), Write);
        assert_eq!(WriteOnly.join(WriteOnly), WriteOnly);
        assert_eq!(Null.join(Read), Read);
    }
}
