//! Synchronous block I/O on the metadata device, for tools, tests and the
//! in-process single-node engine: read a 64 KiB block into the cache, write
//! a transaction's dirty blocks in batches up to the queue depth, flush,
//! and read and write the 4 KiB super block. Runs on whichever thread owns
//! it by submitting to a queue pair and polling for completions.

use crate::dev::{open_queue_with_pool, BlockDev, Completion, DevError, IoRequest, QueuePair};
use crate::dma::DmaPool;
use crate::format::block::{BLOCK_LG_SHIFT, BLOCK_LG_SIZE, BLOCK_SM_SIZE};
use crate::format::super_block::SUPER_OFFSET_BYTES;

use super::BlockError;

const DEPTH: u32 = 16;

/// A queue pair and buffers for metadata block I/O.
pub struct MetaIo {
    qp: QueuePair,
    pool: DmaPool,
    name: String,
    total_blocks: u64,
}

impl std::fmt::Debug for MetaIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaIo")
            .field("device", &self.name)
            .finish()
    }
}

impl MetaIo {
    pub fn open(dev: &dyn BlockDev) -> Result<MetaIo, DevError> {
        let (qp, pool) = open_queue_with_pool(dev, BLOCK_LG_SIZE, DEPTH as usize, DEPTH)?;
        let total_blocks = dev.geometry().capacity_bytes >> BLOCK_LG_SHIFT;
        Ok(MetaIo {
            qp,
            pool,
            name: dev.name(),
            total_blocks,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// Whole 64 KiB blocks on the device.
    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    fn io_err(&self, blkno: u64, e: &DevError) -> BlockError {
        BlockError::Io {
            device: self.name.clone(),
            blkno,
            msg: e.to_string(),
        }
    }

    fn buf(&self) -> crate::dma::DmaBuf {
        // The queue is idle between calls and each call holds at most
        // DEPTH buffers, so the pool cannot run dry.
        self.pool.try_get().expect("meta io buffer")
    }

    /// Read 64 KiB block `blkno` (unverified: the cache verifies).
    pub fn read_block(&mut self, blkno: u64) -> Result<Vec<u8>, BlockError> {
        let c = self.qp.run_one(IoRequest::read(
            blkno << BLOCK_LG_SHIFT,
            BLOCK_LG_SIZE as u32,
            self.buf(),
            0,
        ));
        c.result.map_err(|e| self.io_err(blkno, &e))?;
        Ok(c.buf.expect("read returns its buffer").as_slice()[..BLOCK_LG_SIZE].to_vec())
    }

    /// Write 64 KiB blocks, up to the queue depth at a time. Every write is
    /// waited for; the first error is returned after all have finished.
    pub fn write_blocks<'a>(
        &mut self,
        blocks: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<u64, BlockError> {
        let mut first_err: Option<BlockError> = None;
        let mut written = 0u64;
        let mut iter = blocks.into_iter().peekable();
        loop {
            while self.qp.in_flight() < self.qp.depth() {
                let Some((blkno, data)) = iter.next() else {
                    break;
                };
                assert!(blkno < self.total_blocks, "block {blkno} past the device");
                let mut b = self.buf();
                b.as_mut_slice()[..BLOCK_LG_SIZE].copy_from_slice(&data[..BLOCK_LG_SIZE]);
                let req = IoRequest::write(blkno << BLOCK_LG_SHIFT, BLOCK_LG_SIZE as u32, b, blkno);
                if let Err(r) = self.qp.submit(req) {
                    first_err.get_or_insert(self.io_err(blkno, &r.error));
                }
            }
            if self.qp.in_flight() == 0 && iter.peek().is_none() {
                break;
            }
            self.poll(&mut |c| match &c.result {
                Ok(()) => written += 1,
                Err(e) => {
                    first_err.get_or_insert(BlockError::Io {
                        device: String::new(),
                        blkno: c.tag,
                        msg: e.to_string(),
                    });
                }
            });
        }
        match first_err {
            Some(BlockError::Io { blkno, msg, .. }) => Err(BlockError::Io {
                device: self.name.clone(),
                blkno,
                msg,
            }),
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    fn poll(&mut self, f: &mut dyn FnMut(Completion)) {
        if let Err(e) = self.qp.kick() {
            tracing::warn!("{}: {e}", self.name);
        }
        if self.qp.reap(f) == 0 {
            std::hint::spin_loop();
        }
    }

    /// Make every completed write durable.
    pub fn flush(&mut self) -> Result<(), BlockError> {
        let c = self.qp.run_one(IoRequest::flush(0));
        c.result.map_err(|e| self.io_err(0, &e))
    }

    /// Read the 4 KiB super block (unverified).
    pub fn read_super_block(&mut self) -> Result<Vec<u8>, BlockError> {
        let c = self.qp.run_one(IoRequest::read(
            SUPER_OFFSET_BYTES,
            BLOCK_SM_SIZE as u32,
            self.buf(),
            0,
        ));
        c.result
            .map_err(|e| self.io_err(SUPER_OFFSET_BYTES >> 12, &e))?;
        Ok(c.buf.expect("read returns its buffer").as_slice()[..BLOCK_SM_SIZE].to_vec())
    }

    /// Write a sealed 4 KiB super block.
    pub fn write_super_block(&mut self, block: &[u8]) -> Result<(), BlockError> {
        assert_eq!(block.len(), BLOCK_SM_SIZE);
        let mut b = self.buf();
        b.as_mut_slice()[..BLOCK_SM_SIZE].copy_from_slice(block);
        let c = self.qp.run_one(IoRequest::write(
            SUPER_OFFSET_BYTES,
            BLOCK_SM_SIZE as u32,
            b,
            0,
        ));
        c.result
            .map_err(|e| self.io_err(SUPER_OFFSET_BYTES >> 12, &e))
    }

    /// Write raw bytes at a byte offset (mkfs: zeroing, the data device's
    /// super). `data.len()` must be a multiple of 4 KiB, at most 64 KiB.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        let mut b = self.buf();
        b.as_mut_slice()[..data.len()].copy_from_slice(data);
        let c = self
            .qp
            .run_one(IoRequest::write(offset, data.len() as u32, b, 0));
        c.result
            .map_err(|e| self.io_err(offset >> BLOCK_LG_SHIFT, &e))
    }

    /// Read raw bytes at a byte offset (up to 64 KiB, 4 KiB multiple).
    pub fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, BlockError> {
        let c = self
            .qp
            .run_one(IoRequest::read(offset, len as u32, self.buf(), 0));
        c.result
            .map_err(|e| self.io_err(offset >> BLOCK_LG_SHIFT, &e))?;
        Ok(c.buf.expect("read returns its buffer").as_slice()[..len].to_vec())
    }
}
