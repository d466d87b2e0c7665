//! Reading a fuzz input: a cursor that hands out fields until the bytes
//! run out (then zeros and empty slices, so every input means something),
//! and the compact encoding of a 64 KiB block.

use scoutfs_engine::format::block::BLOCK_LG_SIZE;
use scoutfs_engine::format::key::{DiskKey, Key};

/// Fields taken in order from the front of an input.
#[derive(Debug)]
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.rest.len());
        let (b, rest) = self.rest.split_at(n);
        self.rest = rest;
        b
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.rest.len())
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        let mut a = [0u8; 2];
        let b = self.bytes(2);
        a[..b.len()].copy_from_slice(b);
        u16::from_le_bytes(a)
    }

    pub fn u32(&mut self) -> u32 {
        let mut a = [0u8; 4];
        let b = self.bytes(4);
        a[..b.len()].copy_from_slice(b);
        u32::from_le_bytes(a)
    }

    pub fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        let b = self.bytes(8);
        a[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(a)
    }

    /// A length-prefixed (u32) chunk.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = self.u32() as usize;
        self.bytes(n)
    }

    /// A key as stored on disk (32 bytes).
    pub fn key(&mut self) -> Key {
        let mut a = [0u8; std::mem::size_of::<DiskKey>()];
        let b = self.bytes(a.len());
        a[..b.len()].copy_from_slice(b);
        Key::from(bytemuck::pod_read_unaligned::<DiskKey>(&a))
    }
}

/// Append a length-prefixed chunk (the inverse of [`Input::chunk`]).
pub fn put_chunk(out: &mut Vec<u8>, chunk: &[u8]) {
    let len = u32::try_from(chunk.len()).expect("chunks are small");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(chunk);
}

/// A 64 KiB block from its compact form: `[u16 head_len][head][tail]`,
/// the head at the start of the block, the tail against its end, zeros
/// between. Btree blocks keep their headers at the front and values at
/// the back, so a real block shrinks to what it holds; anything too long
/// is cut to fit.
pub fn block_from_compact(compact: &[u8]) -> Vec<u8> {
    let mut inp = Input::new(compact);
    let head_len = usize::from(inp.u16());
    let head = inp.bytes(head_len.min(BLOCK_LG_SIZE));
    let tail = inp.rest();
    let mut b = vec![0u8; BLOCK_LG_SIZE];
    b[..head.len()].copy_from_slice(head);
    let tail = &tail[..tail.len().min(BLOCK_LG_SIZE - head.len())];
    b[BLOCK_LG_SIZE - tail.len()..].copy_from_slice(tail);
    b
}

/// The compact form of a block: the head up to `head_len` and the tail
/// from the last non-zero byte's region (`tail_from`) on.
pub fn block_to_compact(block: &[u8], head_len: usize) -> Vec<u8> {
    assert_eq!(block.len(), BLOCK_LG_SIZE);
    let head_len = head_len.min(BLOCK_LG_SIZE).min(u16::MAX as usize);
    let tail_from = block[head_len..]
        .iter()
        .position(|&b| b != 0)
        .map_or(BLOCK_LG_SIZE, |p| head_len + p);
    let mut out = Vec::with_capacity(2 + head_len + (BLOCK_LG_SIZE - tail_from));
    out.extend_from_slice(&(head_len as u16).to_le_bytes());
    out.extend_from_slice(&block[..head_len]);
    out.extend_from_slice(&block[tail_from..]);
    out
}

/// Recompute a block's crc (the first four bytes), so that a fuzzed block
/// gets past the crc and its contents are what is tested.
pub fn reseal_crc(block: &mut [u8]) {
    if block.len() < 4 {
        return;
    }
    let crc = crc32c::crc32c(&block[4..]);
    block[..4].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_blocks_round_trip() {
        let mut b = vec![0u8; BLOCK_LG_SIZE];
        b[..100].fill(7);
        b[BLOCK_LG_SIZE - 50..].fill(9);
        b[BLOCK_LG_SIZE - 60] = 1;
        let c = block_to_compact(&b, 100);
        assert_eq!(c.len(), 2 + 100 + 60);
        assert_eq!(block_from_compact(&c), b);
        // Anything decodes to a whole block.
        assert_eq!(block_from_compact(&[]).len(), BLOCK_LG_SIZE);
        assert_eq!(block_from_compact(&[0xff, 0xff, 1, 2]).len(), BLOCK_LG_SIZE);
    }

    #[test]
    fn inputs_run_out_into_zeros() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), 0x0201);
        assert_eq!(i.u32(), 3);
        assert_eq!(i.u64(), 0);
        assert!(i.is_empty());
        assert_eq!(i.chunk(), &[] as &[u8]);
    }
}
