/**
 * The allocation limit of a thin store: the most blocks it may hold allocated, like the
 * physical capacity of a snap data pool behind a large logical size.
 *
 * A request that would allocate blocks past the limit fails ENOSPC and changes nothing (all
 * or nothing per request). Overwrites of allocated blocks need no new space and always work;
 * trim and write-zeroes without no-hole free space. A limit below what is allocated already
 * (lowered afterwards) lets no new block be allocated until enough is freed.
 *
 * Cost on the hot path. The stores keep the allocated-block count in the AllocationMap (an
 * O(1) counter maintained by set/clear), so the check is one comparison when there is room
 * for the whole request even if every block were new, and a countRange of the request's own
 * bits (a few 32-bit words) only near the limit. With no limit it is one property test.
 *
 * Requests that complete across an await (FileBlockStore's large writes and no-hole zeroing)
 * reserve the blocks they will allocate while in flight, so concurrent requests cannot
 * together pass the limit. The reservation is exact for each request on its own; two
 * overlapping requests in flight at once may each reserve the same blocks, which can only
 * refuse early, never overshoot.
 */
import { formatSize } from '../../proto/util/units.js';
import type { AllocationMap } from './AllocationMap.js';
import { BlockDeviceError } from './BlockDevice.js';

export interface AllocationLimitLabels {
  /** What the message names, e.g. "volume snap1"; default "the device". */
  subject?: string;
  /** How to fix it, e.g. "raise it with 'arraylab volume set snap1 --alloc-limit SIZE', ..."; default generic. */
  fix?: string;
}

export interface AllocationLimit {
  /** Limit in blocks. */
  readonly blocks: number;
  readonly subject: string;
  readonly fix: string;
}

/** Validates a limit for a store and returns it in blocks (undefined: no limit). */
export function makeAllocationLimit(
  store: { readonly thin: boolean; readonly blockSize: number },
  limitBytes: number | undefined,
  labels: AllocationLimitLabels = {},
): AllocationLimit | undefined {
  if (limitBytes === undefined) return undefined;
  const bs = store.blockSize;
  if (!store.thin) throw new BlockDeviceError('EINVAL', 'an allocation limit needs a thin store: a thick one has every block allocated');
  if (!Number.isSafeInteger(limitBytes) || limitBytes <= 0 || limitBytes % bs !== 0) {
    throw new BlockDeviceError('EINVAL', `allocation limit ${String(limitBytes)} must be a positive multiple of the ${bs}-byte block size`);
  }
  return {
    blocks: limitBytes / bs,
    subject: labels.subject ?? 'the device',
    fix: labels.fix ?? 'raise the limit, trim data, or use a larger device',
  };
}

/**
 * Checks that allocating blocks [first, first + count) fits under the limit, with `reserved`
 * blocks already promised to requests in flight. Returns how many of them are not allocated
 * yet (what a request in flight must reserve); throws ENOSPC naming the subject and the fix.
 */
export function checkAllocation(
  map: AllocationMap,
  limit: AllocationLimit,
  blockSize: number,
  op: string,
  first: number,
  count: number,
  reserved: number,
): number {
  const used = map.allocated + reserved;
  const fresh = count - map.countRange(first, count);
  if (fresh === 0 || used + fresh <= limit.blocks) return fresh;
  throw limitError(limit, blockSize, op, used, fresh);
}

/** The same without the count: true when the request fits even if every block were new. */
export function fitsAnyway(map: AllocationMap, limit: AllocationLimit, count: number, reserved: number): boolean {
  return map.allocated + reserved + count <= limit.blocks;
}

function limitError(limit: AllocationLimit, bs: number, op: string, usedBlocks: number, freshBlocks: number): BlockDeviceError {
  return new BlockDeviceError(
    'ENOSPC',
    `${limit.subject} has reached its allocation limit of ${formatSize(limit.blocks * bs)} (${formatSize(usedBlocks * bs)} allocated, ` +
      `the ${op} needs ${formatSize(freshBlocks * bs)} more); ${limit.fix}`,
  );
}
