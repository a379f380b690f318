/** Limits the SCSI layer enforces and advertises (VPD B0h); every client number is checked against them. */
export const MAX_TRANSFER_BYTES = 32 * 1024 * 1024;
export const OPTIMAL_TRANSFER_BYTES = 1024 * 1024;
/** COMPARE AND WRITE: one byte in the CDB, so at most 255 anyway. */
export const MAX_COMPARE_AND_WRITE_BLOCKS = 255;
export const MAX_UNMAP_DESCRIPTORS = 256;
/** MAXIMUM UNMAP LBA COUNT in blocks (libiscsi calls more than 2^20 insane unless it is unlimited). */
export const MAX_UNMAP_BLOCKS = 1024 * 1024;
export const MAX_WRITE_SAME_BYTES = 1024 * 1024 * 1024;
/** PRE-FETCH of more than this returns GOOD (not all of it fits the "cache") rather than CONDITION MET. */
export const PREFETCH_CACHE_BYTES = 64 * 1024 * 1024;
/** GET LBA STATUS: descriptors per answer. */
export const MAX_LBA_STATUS_DESCRIPTORS = 512;

export function maxTransferBlocks(blockSize: number): number {
  return Math.floor(MAX_TRANSFER_BYTES / blockSize);
}

/**
 * The array stores volumes in 4 KiB pages (the file store's allocation unit, the page cache's
 * page): a 512-byte LUN is "512e", eight logical blocks per page. Block Limits VPD advertises it
 * as the optimal transfer and unmap granularity and as WRITE ATOMIC's alignment and granularity
 * (READ CAPACITY(16) does not: see capacity.ts).
 */
export const PHYSICAL_BLOCK_BYTES = 4096;

export function logicalPerPhysical(blockSize: number): number {
  return Math.max(1, PHYSICAL_BLOCK_BYTES / blockSize);
}

/**
 * WRITE ATOMIC: the largest atomic write. Atomic against every other command through this
 * target (range locks, see compareAndWrite.ts); 1 MiB is also the most the file store writes
 * in one synchronous step of the event loop. At 4096-byte blocks that is 256 blocks, the most
 * libiscsi's WRITE ATOMIC tests send.
 */
export const MAX_ATOMIC_TRANSFER_BYTES = 1024 * 1024;
