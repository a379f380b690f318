/**
 * The faults set on one volume, on the path of every host operation to it.
 *
 * A volume with no fault has no FaultPoint: its device forwards straight to the layers below
 * (one property test per operation). With one, each operation becomes an IoRequest that every
 * fault whose operations and block range match sees in the order the faults were added:
 * its trigger decides, and when it fires the injector acts and an event is emitted. The
 * operation then reaches the device unless an injector failed it or skipped it.
 */
import type { BlockDevice, ClientInfo, Extent, WriteOptions, ZeroOptions } from '../block/BlockDevice.js';
import type { Connection, Injector, IoRequest } from './io.js';
import type { Fault, FaultOp } from './spec.js';
import type { Trigger } from './trigger.js';

/** A fault as the point runs it. */
export interface ActiveFault {
  readonly fault: Fault;
  readonly trigger: Trigger;
  readonly injector: Injector;
  /** Bit per FaultOp the fault applies to. */
  readonly opMask: number;
}

export interface FiredEvent {
  fault: ActiveFault;
  req: IoRequest;
}

const OP_BITS: Record<FaultOp, number> = { read: 1, write: 2, flush: 4, trim: 8, zero: 16, 'block-status': 32, connect: 64 };

export function opMaskOf(ops: readonly string[]): number {
  let m = 0;
  for (const op of ops) m |= OP_BITS[op as FaultOp] ?? 0;
  return m;
}

/** The client side of one operation: who sent it and how to reach its connection. */
export interface Caller {
  readonly client: ClientInfo | undefined;
  readonly connection: Connection | undefined;
}

export class FaultPoint {
  /** In the order added. Replaced, never mutated, so a running operation sees one list. */
  faults: readonly ActiveFault[] = [];
  /** Operations past the faults and not yet completed (pause --drain waits for them). */
  private inflight = 0;
  private drainWaiters: Array<() => void> = [];

  constructor(
    readonly volume: string,
    private readonly flagSet: (name: string) => boolean,
    private readonly fired: (e: FiredEvent) => void,
  ) {}

  /** Resolves when no operation that got past the faults is still in flight. */
  drained(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  read(c: Caller, below: BlockDevice, offset: number, into: Buffer): Promise<void> {
    return this.run(c, below, 'read', offset, into.length, undefined, into, false, (r) => below.read(r.offset, into));
  }

  write(c: Caller, below: BlockDevice, offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.run(c, below, 'write', offset, data.length, data, undefined, opts?.fua === true, (r) => below.write(r.offset, r.data!, { fua: r.fua }));
  }

  flush(c: Caller, below: BlockDevice): Promise<void> {
    return this.run(c, below, 'flush', 0, 0, undefined, undefined, false, () => below.flush());
  }

  trim(c: Caller, below: BlockDevice, offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.run(c, below, 'trim', offset, length, undefined, undefined, opts?.fua === true, (r) => below.trim(r.offset, r.length, { fua: r.fua }));
  }

  writeZeroes(c: Caller, below: BlockDevice, offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.run(c, below, 'zero', offset, length, undefined, undefined, opts?.fua === true, (r) =>
      below.writeZeroes(r.offset, r.length, { ...opts, fua: r.fua }),
    );
  }

  async blockStatus(c: Caller, below: BlockDevice, offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    let out: Extent[] = [];
    await this.run(c, below, 'block-status', offset, length, undefined, undefined, false, async () => {
      out = await below.blockStatus(offset, length, maxExtents);
    });
    return out;
  }

  private async run(
    c: Caller,
    below: BlockDevice,
    op: FaultOp,
    offset: number,
    length: number,
    data: Buffer | undefined,
    into: Buffer | undefined,
    fua: boolean,
    doIt: (r: IoRequest) => Promise<void>,
  ): Promise<void> {
    const bit = OP_BITS[op];
    const req: IoRequest = { op, offset, length, volume: this.volume, blockSize: below.blockSize, client: c.client, data, into, fua, skip: false };
    let after: ActiveFault[] | undefined;
    for (const f of this.faults) {
      if ((f.opMask & bit) === 0 || !this.inRange(f, req)) continue;
      f.injector.observe?.(req);
      if (f.fault.flag !== undefined && !this.flagSet(f.fault.flag)) continue;
      const fires = f.injector.match !== undefined ? f.injector.match(req) : f.trigger.fires();
      if (!fires) continue;
      this.fired({ fault: f, req });
      const w = f.injector.before(req, { connection: c.connection });
      if (w !== undefined) await w;
      if (f.injector.after !== undefined) (after ??= []).push(f);
    }
    if (req.skip) return;
    this.inflight++;
    try {
      await doIt(req);
    } finally {
      if (--this.inflight === 0 && this.drainWaiters.length > 0) {
        const w = this.drainWaiters;
        this.drainWaiters = [];
        for (const go of w) go();
      }
    }
    if (after !== undefined) for (const f of after) f.injector.after!(req);
  }

  private inRange(f: ActiveFault, req: IoRequest): boolean {
    const r = f.fault.lba;
    if (r === undefined || req.op === 'flush') return true;
    const first = Math.floor(req.offset / req.blockSize);
    const last = Math.ceil((req.offset + req.length) / req.blockSize) - 1;
    return first <= r.last && last >= r.first;
  }
}
