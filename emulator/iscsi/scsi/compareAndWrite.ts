/**
 * COMPARE AND WRITE (SBC-3 §5.2), atomic per device: the read, compare and write of one
 * command run under a range lock that excludes overlapping COMPARE AND WRITEs (and ORWRITEs,
 * WRITE ATOMICs: they take the same lock); reads and writes (READ, WRITE, WRITE SAME, UNMAP...)
 * that start while it is held wait for it, and it waits for the ones already in flight when it
 * took the lock (each holds a ticket: a Set add and delete, no promise or closure while no lock
 * is held). Commands through other front ends (NBD) do not see these locks.
 */
import type { BlockDevice } from '../../block/BlockDevice.js';
import { MAX_COMPARE_AND_WRITE_BLOCKS } from './limits.js';
import {
  ASC_MISCOMPARE_DURING_VERIFY,
  checkCondition,
  dataOutTooLong,
  dataOutTooShort,
  invalidFieldInCdb,
  lbaOutOfRange,
  MISCOMPARE,
  writeProtected,
} from './sense.js';
import type { CommandDescriptor } from './dispatch.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';
import type { ScsiLogicalUnits } from './scsiTarget.js';

interface Held {
  readonly dev: BlockDevice;
  readonly start: number;
  readonly end: number;
  readonly done: Promise<void>;
  release: () => void;
}

export class RangeLocks {
  private readonly held: Held[] = [];
  private writeSeq = 0;
  /** Tickets of writes in flight, in ascending order (a Set iterates in insertion order). */
  private readonly inflight = new Set<number>();
  private drainWaiters: { upTo: number; resolve: () => void }[] = [];

  /** Number of locks held; writers skip enterWrite when it is 0. */
  get active(): number {
    return this.held.length;
  }

  private overlapping(dev: BlockDevice, start: number, end: number): Held | undefined {
    for (const h of this.held) if (h.dev === dev && h.start < end && start < h.end) return h;
    return undefined;
  }

  /**
   * Registers a write (or a read: see READ in readWrite.ts) to [start, end) of dev, first
   * waiting out overlapping locks; returns the ticket for endWrite(). Callers take the fast
   * path `active === 0 ? beginWrite() : enterWrite()`.
   */
  async enterWrite(dev: BlockDevice, start: number, end: number): Promise<number> {
    for (let h = this.overlapping(dev, start, end); h !== undefined; h = this.overlapping(dev, start, end)) await h.done;
    return this.beginWrite(); // same synchronous step as the last check: no lock can slip in between
  }

  beginWrite(): number {
    const ticket = ++this.writeSeq;
    this.inflight.add(ticket);
    return ticket;
  }

  endWrite(ticket: number): void {
    this.inflight.delete(ticket);
    if (this.drainWaiters.length !== 0) this.wakeDrained();
  }

  private oldestInflight(): number {
    for (const t of this.inflight) return t;
    return Number.POSITIVE_INFINITY;
  }

  private wakeDrained(): void {
    const oldest = this.oldestInflight();
    this.drainWaiters = this.drainWaiters.filter((w) => {
      if (oldest <= w.upTo) return true;
      w.resolve();
      return false;
    });
  }

  /** Waits for every write registered up to ticket upTo (on any device: simple and short). */
  private drained(upTo: number): Promise<void> {
    if (this.oldestInflight() > upTo) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push({ upTo, resolve }));
  }

  /** Takes an exclusive lock on [start, end) of dev; call release() exactly once. */
  async acquire(dev: BlockDevice, start: number, end: number): Promise<Held> {
    for (;;) {
      const h = this.overlapping(dev, start, end);
      if (h === undefined) break;
      await h.done;
    }
    let resolve!: () => void;
    const done = new Promise<void>((r) => (resolve = r));
    const held: Held = {
      dev,
      start,
      end,
      done,
      release: () => {
        const i = this.held.indexOf(held);
        if (i >= 0) this.held.splice(i, 1);
        resolve();
      },
    };
    this.held.push(held);
    // From here on new overlapping writes wait for us; wait for the ones already started.
    await this.drained(this.writeSeq);
    return held;
  }
}

/** Offset of the first differing byte, or -1. */
export function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

export function miscompare(offset: number): ScsiResult {
  return checkCondition(MISCOMPARE, ASC_MISCOMPARE_DURING_VERIFY, { information: offset });
}

async function compareAndWrite(cmd: ScsiCommand, lu: LunDevice, t: ScsiLogicalUnits): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const dev = lu.device;
  const bs = dev.blockSize;
  const lba = cdb.readUInt32BE(2) * 0x1_0000_0000 + cdb.readUInt32BE(6);
  const n = cdb[13]!;
  const nb = dev.size / bs;
  if (lba > nb || n > nb - lba) return lbaOutOfRange();
  if (n > MAX_COMPARE_AND_WRITE_BLOCKS) return invalidFieldInCdb(13);
  // 0 blocks is a no-op (SBC-3), but not with data attached: an initiator that sends data for
  // "0" meant 256 (a one-byte field cannot say it), which is past our maximum.
  if (n === 0) return cmd.dataOut.length === 0 ? { status: GOOD } : invalidFieldInCdb(13);
  if (lu.readOnly || dev.readOnly) return writeProtected();
  const len = n * bs;
  if (cmd.dataOut.length < 2 * len) return dataOutTooShort();
  // More data than the verify and write instances of NUMBER OF LOGICAL BLOCKS: the CDB and the
  // expected transfer length disagree, so which blocks were meant is unknown; write nothing.
  if (cmd.dataOut.length > 2 * len) return dataOutTooLong();
  const offset = lba * bs;
  const lock = await t.locks.acquire(dev, offset, offset + len);
  try {
    const current = Buffer.allocUnsafe(len);
    await dev.read(offset, current);
    const diff = firstDifference(current, cmd.dataOut.subarray(0, len));
    if (diff >= 0) return miscompare(diff);
    await dev.write(offset, cmd.dataOut.subarray(len, 2 * len), { fua: (cdb[1]! & 0x08) !== 0 });
    return { status: GOOD };
  } finally {
    lock.release();
  }
}

export const compareAndWriteCommands: CommandDescriptor[] = [
  {
    name: 'COMPARE AND WRITE',
    opcode: 0x89,
    // WRPROTECT unsupported; DPO, FUA, FUA_NV; LBA; NUMBER OF LOGICAL BLOCKS; GROUP NUMBER.
    usage: [0x89, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0xff, 0x1f, 0x00],
    access: 'write',
    handler: compareAndWrite,
  },
];
