/**
 * The copy engine's one layer on each volume it manages.
 *
 * Why one layer per volume rather than one per session: Volume.popLayer removes the top
 * layer only, while sessions end in any order. So the engine pushes a single VolumeTap when
 * it adopts a volume, keeps it for the volume's life, and attaches session roles to it:
 *   - any number of SourceRoles (copy-on-write, mirroring, change tracking), which wrap
 *     every modifying request;
 *   - at most one DestRole (the volume is that session's destination), which serves reads
 *     and guards writes.
 * A volume with no roles costs one counter increment and one length test per write.
 *
 * The gate. Every modifying request is counted while in flight. hold() stops new ones at
 * the door and resolves when those in flight have drained; release() lets them through.
 * Holds nest (a consistency group holds, then each session's cut holds again at no cost).
 * Roles are only attached or detached under a hold, so a request never sees its roles
 * change half way. Reads are not held: a cut changes nothing a read depends on until the
 * roles change, and that change is atomic (single-threaded) between two awaits.
 * A role that acknowledges a write before applying it (SnapChain's write-behind) keeps the
 * write's in-flight token (pin/unpin) until it is applied, so a hold also waits for those:
 * an acknowledged write is in every later point-in-time copy. A flush first waits for every
 * role's settle() (writes acknowledged before it applied), then runs the flush chain.
 *
 * Trim is turned into write-zeroes while any role is attached: both sides of a copy must
 * agree on what a trimmed block reads as, and zeroes is one of the results trim allows.
 */
import { BlockDeviceError, type BlockDevice, type Extent, type WriteOptions, type ZeroOptions } from '../block/BlockDevice.js';
import { checkIo } from '../block/requestChecks.js';
import { applyMutation, CopyError, invariant, type Mutation } from './CopySession.js';

export type Next = () => Promise<void>;

export interface SourceRole {
  readonly sessionId: string;
  /** Wraps a modifying request to the source; must call next() exactly once to apply it. */
  sourceWrite(m: Mutation, next: Next): Promise<void>;
  /** Wraps a flush of the source; must call next() (which flushes the source) once. */
  sourceFlush?(next: Next): Promise<void>;
  /**
   * Serves a host read of the source: next() reads the source's own blocks into `into`; a
   * role that acknowledged writes it has not yet applied below (write-behind) overlays them,
   * so a host reads its own writes.
   */
  sourceRead?(offset: number, into: Buffer, next: Next): Promise<void>;
  /**
   * Resolves when every write this role acknowledged before the call has been applied to the
   * source below; rejects (once) with a deferred error of such a write. A flush of the source
   * waits for it before flushing.
   */
  settle?(): Promise<void>;
  /** True when the role holds acknowledged, unapplied writes overlapping the range (block status then reports data). */
  holdsWrites?(offset: number, length: number): boolean;
}

export interface DestRole {
  readonly sessionId: string;
  /** True when hosts may not write (the tap reports readOnly). */
  readonly hostReadOnly: boolean;
  /** Throws BlockDeviceError when hosts may not read now. */
  checkRead(op: string): void;
  /** Serves a host read; next() reads the destination's own blocks into `into`. */
  destRead(offset: number, into: Buffer, next: Next): Promise<void>;
  destWrite(m: Mutation, next: Next): Promise<void>;
}

export class VolumeTap implements BlockDevice {
  readonly sources: SourceRole[] = [];
  dest: DestRole | undefined;

  private inflight = 0;
  private holds = 0;
  private gateWaiters: Array<() => void> = [];
  private drainWaiters: Array<() => void> = [];

  constructor(
    /** Changed only by CopyEngine.renameVolume, under a hold. */
    public volumeName: string,
    readonly below: BlockDevice,
  ) {}

  get size(): number {
    return this.below.size;
  }
  get blockSize(): number {
    return this.below.blockSize;
  }
  get readOnly(): boolean {
    return this.below.readOnly || (this.dest?.hostReadOnly ?? false);
  }
  get thin(): boolean {
    return this.below.thin;
  }
  /** Throws BlockDeviceError when hosts may not attach to the volume now (they could not read it). */
  checkAttach(): void {
    this.dest?.checkRead('attach');
  }

  get hasRoles(): boolean {
    return this.sources.length > 0 || this.dest !== undefined;
  }

  // ---- the gate ----

  /** Stops new modifying requests; resolves when those in flight have finished. */
  async hold(): Promise<void> {
    this.holds++;
    if (this.inflight > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    invariant(this.inflight === 0, `volume ${this.volumeName}: writes in flight under a hold`);
  }

  release(): void {
    invariant(this.holds > 0, `volume ${this.volumeName}: release without hold`);
    if (--this.holds > 0) return;
    const waiters = this.gateWaiters;
    this.gateWaiters = [];
    for (const w of waiters) w();
  }

  get held(): boolean {
    return this.holds > 0;
  }

  /** A role keeps an acknowledged write in flight (until unpin) so holds wait for it. */
  pin(): void {
    this.inflight++;
  }

  unpin(): void {
    invariant(this.inflight > 0, `volume ${this.volumeName}: unpin without pin`);
    this.finished();
  }

  private finished(): void {
    if (--this.inflight === 0 && this.drainWaiters.length > 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }

  // ---- roles (attach and detach only under a hold) ----

  addSource(role: SourceRole): void {
    invariant(this.holds > 0, `volume ${this.volumeName}: source role attached without a hold`);
    invariant(!this.sources.includes(role), 'source role attached twice');
    this.sources.push(role);
  }

  removeSource(role: SourceRole): void {
    invariant(this.holds > 0, `volume ${this.volumeName}: source role detached without a hold`);
    const i = this.sources.indexOf(role);
    invariant(i >= 0, 'detaching a source role that is not attached');
    this.sources.splice(i, 1);
  }

  /** The roles now, and how to put them back (under a hold): CopyEngine's undo of a failed control operation. */
  checkpoint(): () => void {
    const sources = [...this.sources];
    const dest = this.dest;
    return () => {
      invariant(this.holds > 0, `volume ${this.volumeName}: roles put back without a hold`);
      this.sources.splice(0, this.sources.length, ...sources);
      this.dest = dest;
    };
  }

  setDest(role: DestRole | undefined): void {
    invariant(this.holds > 0, `volume ${this.volumeName}: destination role changed without a hold`);
    invariant(role === undefined || this.dest === undefined, `volume ${this.volumeName} is already a destination`);
    this.dest = role;
  }

  // ---- BlockDevice ----

  read(offset: number, into: Buffer): Promise<void> {
    const d = this.dest;
    const sources = this.sources;
    if (d === undefined && sources.length === 0) return this.below.read(offset, into);
    let own: Next = () => this.below.read(offset, into);
    for (let i = sources.length - 1; i >= 0; i--) {
      const role = sources[i]!;
      if (role.sourceRead === undefined) continue;
      const inner = own;
      own = () => role.sourceRead!(offset, into, inner);
    }
    if (d === undefined) return own();
    try {
      d.checkRead('read');
    } catch (err) {
      return Promise.reject(err);
    }
    return d.destRead(offset, into, own);
  }

  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.mutate({ kind: 'write', offset, length: data.length, data, opts });
  }

  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.mutate({ kind: 'zero', offset, length, opts });
  }

  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    if (!this.hasRoles && this.holds === 0) return this.below.trim(offset, length, opts);
    return this.mutate({ kind: 'zero', offset, length, opts: { fua: opts?.fua } });
  }

  flush(): Promise<void> {
    let settles: Promise<void>[] | undefined;
    for (const role of this.sources) if (role.settle !== undefined) (settles ??= []).push(role.settle());
    if (settles === undefined) return this.flushChain();
    return this.settledFlush(settles);
  }

  /** Writes acknowledged before the flush are applied first; a deferred write error fails the flush (after it flushed). */
  private async settledFlush(settles: Promise<void>[]): Promise<void> {
    const results = await Promise.allSettled(settles);
    await this.flushChain();
    for (const r of results) if (r.status === 'rejected') throw forHost(r.reason, 'flush');
  }

  private flushChain(): Promise<void> {
    let next: Next = () => this.below.flush();
    for (const role of this.sources) {
      if (role.sourceFlush === undefined) continue;
      const inner = next;
      next = () => role.sourceFlush!(inner);
    }
    return next();
  }

  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    const d = this.dest;
    if (d === undefined) {
      // A held (acknowledged, not yet applied) write reads as data: report data, always correct.
      for (const role of this.sources) {
        if (role.holdsWrites?.(offset, length) !== true) continue;
        const len = Math.min(length, this.size - offset);
        if (len > 0 && offset % this.blockSize === 0) return Promise.resolve([{ length: len, flags: 0 }]);
      }
      return this.below.blockStatus(offset, length, maxExtents);
    }
    try {
      d.checkRead('block-status');
    } catch (err) {
      return Promise.reject(err);
    }
    // Part of the image may live on the source: report data, always a correct answer.
    const len = Math.min(length, this.size - offset);
    if (!(len > 0) || offset % this.blockSize !== 0) return this.below.blockStatus(offset, length, maxExtents);
    return Promise.resolve([{ length: len, flags: 0 }]);
  }

  cache(offset: number, length: number): Promise<void> {
    try {
      this.dest?.checkRead('cache');
    } catch (err) {
      return Promise.reject(err);
    }
    return this.below.cache(offset, length);
  }

  private async mutate(m: Mutation): Promise<void> {
    while (this.holds > 0) await new Promise<void>((resolve) => this.gateWaiters.push(resolve));
    if (this.below.readOnly) throw new BlockDeviceError('EPERM', `write refused: volume ${this.volumeName} is read-only`);
    // Validate before any role copies units for a malformed request.
    checkIo(this.below, m.kind === 'write' ? 'write' : 'write-zeroes', m.offset, m.length, 'ENOSPC');
    this.inflight++;
    try {
      const d = this.dest;
      const sources = this.sources;
      if (d === undefined && sources.length === 0) return await applyMutation(this.below, m);
      let next: Next = () => applyMutation(this.below, m);
      for (let i = sources.length - 1; i >= 0; i--) {
        const role = sources[i]!;
        const inner = next;
        next = () => role.sourceWrite(m, inner);
      }
      if (d !== undefined) {
        const inner = next;
        next = () => d.destWrite(m, inner);
      }
      try {
        await next();
      } catch (err) {
        throw forHost(err, m.kind === 'write' ? 'write' : 'write-zeroes');
      }
    } finally {
      this.finished();
    }
  }
}

/**
 * What a host gets when a session's own bookkeeping fails under its request (the journal could
 * not record a bit the write needs first): a device error carrying the engine's reason, which
 * names the cause and the fix. A full data directory is ENOSPC, so hosts see "no space left"
 * rather than an unexplained I/O error; anything else from the engine is EIO.
 */
function forHost(err: unknown, op: string): unknown {
  if (!(err instanceof CopyError)) return err;
  return new BlockDeviceError(err.code === 'RESOURCE_EXHAUSTED' ? 'ENOSPC' : 'EIO', `${op} refused: ${err.message}`);
}
