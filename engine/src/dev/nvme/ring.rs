//! One submission/completion queue pair as the spec defines it: entries
//! written at the SQ tail and announced with one doorbell per batch,
//! completions found by their phase tag at the CQ head, the phase flipping
//! each time the head wraps, and the CQ head doorbell written once per
//! batch of reaped entries. Used for the admin queue and every I/O queue.

use super::mmio::{DmaRegion, Regs};
use super::spec::{CqEntry, SqEntry};

pub const SQ_ENTRY_BYTES: usize = 64;
pub const CQ_ENTRY_BYTES: usize = 16;

#[derive(Debug)]
pub struct Rings {
    qid: u16,
    entries: u32,
    sq: DmaRegion,
    cq: DmaRegion,
    /// Next SQ slot we fill.
    sq_tail: u32,
    /// The tail the device was last told about.
    sq_tail_rung: u32,
    /// The device's SQ head, as last reported in a completion.
    sq_head: u32,
    cq_head: u32,
    /// The phase tag a new completion carries; starts at 1 (the CQ is
    /// zeroed) and flips each time cq_head wraps.
    phase: bool,
    sq_doorbell: usize,
    cq_doorbell: usize,
    /// Completions taken since the CQ head doorbell was last written.
    cq_unannounced: u32,
    doorbell_writes: u64,
}

/// The CQ head doorbell is written once this many completions have been
/// taken since the last write: half the queue. The controller then always
/// sees at least half the CQ free, and when it sees none free every entry
/// is ours to take, so taking them writes the doorbell: no stall lasts.
/// Each doorbell is an MMIO write (a VM exit under emulation), so this
/// halves the doorbells of a QD1 workload.
fn cq_doorbell_every(entries: u32) -> u32 {
    (entries / 2).max(1)
}

impl Rings {
    /// `sq` and `cq` must hold `entries` entries each; they are zeroed.
    pub fn new(
        qid: u16,
        entries: u32,
        sq: DmaRegion,
        cq: DmaRegion,
        sq_doorbell: usize,
        cq_doorbell: usize,
    ) -> Rings {
        assert!((2..=65536).contains(&entries), "queue of {entries} entries");
        assert!(sq.len() >= entries as usize * SQ_ENTRY_BYTES);
        assert!(cq.len() >= entries as usize * CQ_ENTRY_BYTES);
        Rings {
            qid,
            entries,
            sq,
            cq,
            sq_tail: 0,
            sq_tail_rung: 0,
            sq_head: 0,
            cq_head: 0,
            phase: true,
            sq_doorbell,
            cq_doorbell,
            cq_unannounced: 0,
            doorbell_writes: 0,
        }
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    pub fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    pub fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    /// Doorbell writes so far (both kinds), for tests and statistics.
    pub fn doorbell_writes(&self) -> u64 {
        self.doorbell_writes
    }

    /// Entries in the SQ the device has not consumed (as far as we know).
    pub fn sq_used(&self) -> u32 {
        (self.sq_tail + self.entries - self.sq_head) % self.entries
    }

    /// Free SQ slots; one slot always stays empty (full is tail + 1 == head).
    pub fn sq_free(&self) -> u32 {
        self.entries - 1 - self.sq_used()
    }

    /// Write an entry at the tail. False when the SQ is full.
    pub fn push(&mut self, entry: &SqEntry) -> bool {
        if self.sq_free() == 0 {
            return false;
        }
        self.sq
            .write(self.sq_tail as usize * SQ_ENTRY_BYTES, *entry);
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        true
    }

    /// Entries pushed since the last doorbell.
    pub fn unannounced(&self) -> u32 {
        (self.sq_tail + self.entries - self.sq_tail_rung) % self.entries
    }

    /// Tell the device about every entry pushed since the last call: one
    /// doorbell write, none when nothing is new.
    pub fn ring_sq(&mut self, regs: &dyn Regs) {
        if self.sq_tail == self.sq_tail_rung {
            return;
        }
        regs.write32(self.sq_doorbell, self.sq_tail);
        self.sq_tail_rung = self.sq_tail;
        self.doorbell_writes += 1;
    }

    /// Take up to `max` completions whose phase tag is current; write the
    /// CQ head doorbell once, when enough have been taken since the last
    /// write (`cq_doorbell_every`).
    pub fn poll(&mut self, regs: &dyn Regs, max: usize, out: &mut dyn FnMut(CqEntry)) -> usize {
        let mut n = 0;
        while n < max {
            let at = self.cq_head as usize * CQ_ENTRY_BYTES;
            // The status word holds the phase tag; read it alone first so a
            // half-written entry is never taken.
            let status: u16 = self.cq.read(at + 14);
            if (status & 1 == 1) != self.phase {
                break;
            }
            // Loads of the rest of the entry must not move before the
            // phase check.
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            let cqe: CqEntry = self.cq.read(at);
            let head = u32::from(cqe.sq_head);
            if head < self.entries {
                self.sq_head = head;
            }
            self.cq_head += 1;
            if self.cq_head == self.entries {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            n += 1;
            out(cqe);
        }
        self.cq_unannounced += n as u32;
        if self.cq_unannounced >= cq_doorbell_every(self.entries) {
            regs.write32(self.cq_doorbell, self.cq_head);
            self.cq_unannounced = 0;
            self.doorbell_writes += 1;
        }
        n
    }
}
