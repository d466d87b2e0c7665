//! Block I/O on the data device: 4 KiB file blocks read and written in
//! runs of up to 1 MiB per request through a queue pair.

use crate::dev::{open_queue_with_pool, BlockDev, DevError, IoRequest, QueuePair};
use crate::dma::DmaPool;
use crate::format::block::{BLOCK_SM_SHIFT, BLOCK_SM_SIZE};

/// Largest request, in 4 KiB blocks.
const RUN_BLOCKS: usize = 256;
const DEPTH: u32 = 8;

pub struct DataIo {
    qp: QueuePair,
    pool: DmaPool,
    total_blocks: u64,
}

impl std::fmt::Debug for DataIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataIo")
            .field("device", &self.qp.device_name())
            .finish()
    }
}

impl DataIo {
    pub fn open(dev: &dyn BlockDev) -> Result<DataIo, DevError> {
        let (qp, pool) =
            open_queue_with_pool(dev, RUN_BLOCKS * BLOCK_SM_SIZE, DEPTH as usize, DEPTH)?;
        Ok(DataIo {
            qp,
            pool,
            total_blocks: dev.geometry().capacity_bytes >> BLOCK_SM_SHIFT,
        })
    }

    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// Write whole blocks starting at device block `blkno`.
    pub fn write(&mut self, blkno: u64, data: &[u8]) -> Result<(), DevError> {
        assert_eq!(data.len() % BLOCK_SM_SIZE, 0);
        for (i, chunk) in data.chunks(RUN_BLOCKS * BLOCK_SM_SIZE).enumerate() {
            let mut b = self.pool.try_get().expect("data io buffer");
            b.as_mut_slice()[..chunk.len()].copy_from_slice(chunk);
            let at = (blkno + (i * RUN_BLOCKS) as u64) << BLOCK_SM_SHIFT;
            self.qp
                .run_one(IoRequest::write(at, chunk.len() as u32, b, 0))
                .result?;
        }
        Ok(())
    }

    /// Read `nr` whole blocks starting at device block `blkno` into `out`.
    pub fn read(&mut self, blkno: u64, out: &mut [u8]) -> Result<(), DevError> {
        assert_eq!(out.len() % BLOCK_SM_SIZE, 0);
        for (i, chunk) in out.chunks_mut(RUN_BLOCKS * BLOCK_SM_SIZE).enumerate() {
            let b = self.pool.try_get().expect("data io buffer");
            let at = (blkno + (i * RUN_BLOCKS) as u64) << BLOCK_SM_SHIFT;
            let c = self
                .qp
                .run_one(IoRequest::read(at, chunk.len() as u32, b, 0));
            c.result?;
            chunk.copy_from_slice(
                &c.buf.expect("read returns its buffer").as_slice()[..chunk.len()],
            );
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), DevError> {
        self.qp.run_one(IoRequest::flush(0)).result
    }
}
