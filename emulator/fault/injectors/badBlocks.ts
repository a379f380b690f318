/**
 * bad-blocks (after dm-dust): reads that touch a listed logical block fail with a medium
 * error naming that block; a write (or write-zeroes, or trim) that covers a whole block
 * rewrites it and heals it, as a drive remaps a sector on write, unless the fault is permanent.
 */
import { BlockDeviceError } from '../../block/BlockDevice.js';
import type { Injector, IoRequest } from '../io.js';
import type { ActionSpec } from '../spec.js';

export interface BadBlocks extends Injector {
  /** Blocks still bad. */
  readonly remaining: number;
}

export function badBlocksInjector(faultId: string, a: Extract<ActionSpec, { kind: 'bad-blocks' }>): BadBlocks {
  // Sorted, disjoint block numbers; a million at most (checked by the spec).
  const bad = new Set<number>();
  for (const [first, last] of a.lbas) for (let b = first; b <= last; b++) bad.add(b);

  const firstBadIn = (req: IoRequest): number | undefined => {
    if (bad.size === 0) return undefined;
    const first = Math.floor(req.offset / req.blockSize);
    const end = Math.ceil((req.offset + req.length) / req.blockSize);
    if (end - first < bad.size) {
      for (let b = first; b < end; b++) if (bad.has(b)) return b;
      return undefined;
    }
    let min: number | undefined;
    for (const b of bad) if (b >= first && b < end && (min === undefined || b < min)) min = b;
    return min;
  };

  return {
    get remaining(): number {
      return bad.size;
    },
    match(req: IoRequest): boolean {
      return req.op === 'read' && firstBadIn(req) !== undefined;
    },
    before(req: IoRequest): void {
      const lba = firstBadIn(req)!;
      throw new BlockDeviceError(
        'EIO',
        `medium error reading block ${lba} of volume ${req.volume}: it is a bad block (fault ${faultId}); rewrite it to heal it`,
        {
          lba,
        },
      );
    },
    observe(req: IoRequest): void {
      if (a.permanent || bad.size === 0) return;
      if (req.op !== 'write' && req.op !== 'zero' && req.op !== 'trim') return;
      // Only whole blocks are rewritten (requests are block-aligned by the front ends).
      const first = Math.ceil(req.offset / req.blockSize);
      const end = Math.floor((req.offset + req.length) / req.blockSize);
      if (end - first < bad.size) {
        for (let b = first; b < end; b++) bad.delete(b);
      } else {
        for (const b of bad) if (b >= first && b < end) bad.delete(b);
      }
    },
  };
}
