/**
 * Reading a volume for tape: which parts hold data (block status, so holes cost nothing), and
 * the data itself in pieces of at most EXTENT_MAX bytes, cut at EXTENT_MAX-aligned offsets.
 * Pieces that read as all zeroes are left out (a snap volume or OPC destination reports its
 * whole range as data, but mostly reads zeroes): the plan is an upper bound, never exceeded
 * unless the volume gains data while it is read.
 */
import { EXTENT_ZERO, type BlockDevice } from '../block/BlockDevice.js';
import type { DataPiece } from './Cartridge.js';
import { EXTENT_MAX } from './format.js';

export interface DataPlan {
  extents: number;
  dataBytes: number;
}

/** Data runs of one EXTENT_MAX window, from block status. Zero-flagged extents read as zeroes. */
async function runsOf(dev: BlockDevice, start: number, end: number): Promise<Array<[number, number]>> {
  const runs: Array<[number, number]> = [];
  let pos = start;
  while (pos < end) {
    const exts = await dev.blockStatus(pos, end - pos);
    if (exts.length === 0) throw new Error(`block status at ${pos} returned nothing`);
    for (const e of exts) {
      const len = Math.min(e.length, end - pos);
      if (len <= 0) break;
      // A hole without the zero flag may read as anything; only EXTENT_ZERO is skipped unread.
      const zero = (e.flags & EXTENT_ZERO) !== 0;
      if (!zero) {
        const last = runs[runs.length - 1];
        if (last && last[1] === pos) last[1] = pos + len;
        else runs.push([pos, pos + len]);
      }
      pos += len;
      if (pos >= end) break;
    }
  }
  return runs;
}

/**
 * Lets the event loop run every 20 ms or so: reads of holes and of copy layers may resolve
 * without any I/O, and a long loop of them would starve NBD/iSCSI clients and the API's
 * progress messages.
 */
export function breather(): () => Promise<void> {
  let last = Date.now();
  return async () => {
    if (Date.now() - last < 20) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    last = Date.now();
  };
}

/**
 * How many extents and data bytes the volume would take at most, from block status alone;
 * exact: by reading the data too (all-zero pieces are not stored), for when the bound does not
 * fit (a snap volume or OPC destination reports data everywhere).
 */
export async function planData(dev: BlockDevice, size: number, signal?: AbortSignal, exact = false): Promise<DataPlan> {
  let extents = 0;
  let dataBytes = 0;
  if (exact) {
    for await (const p of dataPieces(dev, size, signal)) {
      extents++;
      dataBytes += p.data.length;
    }
    return { extents, dataBytes };
  }
  const breathe = breather();
  for (let w = 0; w < size; w += EXTENT_MAX) {
    signal?.throwIfAborted();
    await breathe();
    for (const [a, b] of await runsOf(dev, w, Math.min(size, w + EXTENT_MAX))) {
      extents++;
      dataBytes += b - a;
    }
  }
  return { extents, dataBytes };
}

/** The volume's non-zero data pieces in offset order; onScanned(end) after each window. */
export async function* dataPieces(dev: BlockDevice, size: number, signal?: AbortSignal, onScanned?: (pos: number) => void): AsyncGenerator<DataPiece> {
  const breathe = breather();
  for (let w = 0; w < size; w += EXTENT_MAX) {
    signal?.throwIfAborted();
    await breathe();
    const end = Math.min(size, w + EXTENT_MAX);
    for (const [a, b] of await runsOf(dev, w, end)) {
      const data = Buffer.allocUnsafe(b - a); // filled by the read
      await dev.read(a, data);
      if (isZero(data)) continue;
      yield { offset: a, data };
    }
    onScanned?.(end);
  }
}

const ZERO_PAGE = Buffer.alloc(64 * 1024);

export function isZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i += ZERO_PAGE.length) {
    const n = Math.min(ZERO_PAGE.length, buf.length - i);
    if (!buf.subarray(i, i + n).equals(ZERO_PAGE.subarray(0, n))) return false;
  }
  return true;
}
