/**
 * Support for the REC simulator (test/remote/unit/recSimulation.test.ts): an in-memory network
 * between two CopyEngines in one process, and a crashable store that honours FUA.
 *
 * SimNet is site-a's RemoteCopyHook. Control calls go to site-b's engine as RemoteArrays'
 * gRPC calls do (openRemoteEnd, setRemoteEndState, resumeRemoteEnd, cancel with force at
 * CloseRemoteEnd); data goes into site-b's destination tap's `below` device, as the array's
 * `.rec/PAIR/SECRET` export does (StorageArray.openReplica, CopyEngine.remoteEndFor).
 *
 * Faults, seeded: the link goes down (every call rejects with RemoteLinkError 'link-down',
 * connected pairs hear events.down and site-b's remote ends hear the data connection close)
 * and up (watching links call events.up at the next poll, as RecDataPath's back-off timer
 * would); every call takes a random number of microtasks on the way there and back, so
 * completions reorder; a data transfer may fail with an I/O error on the remote
 * ('remote-failed'); a control call may be carried out at site-b and its answer lost (a
 * deadline: 'link-down'). Crashes: crashA() kills site-a's links (their connections close at
 * site-b); crashB() drops every data connection (site-a's pairs hear events.down).
 */
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../../emulator/block/BlockDevice.js';
import type { VolumeStore } from '../../emulator/array/Volume.js';
import type { CopyEngine, RemoteCopyHook } from '../../emulator/copy/CopyEngine.js';
import { CopyError, type HaltReason, type RecMode, RemoteLinkError, RemoteRefusalError, type SessionRecord } from '../../emulator/copy/CopySession.js';
import type { RecLink, RecLinkEvents, RemoteEndState } from '../../emulator/copy/SessionBase.js';
import type { SimStore } from '../copy/support.js';

/** A SimStore whose FUA writes are durable when they complete (SimStore ignores FUA). */
export class FuaStore implements VolumeStore {
  readonly readOnly = false;
  readonly thin = true;
  constructor(readonly inner: SimStore) {}
  get size(): number {
    return this.inner.size;
  }
  get blockSize(): number {
    return this.inner.blockSize;
  }
  get allocatedBytes(): number {
    return this.inner.allocatedBytes;
  }
  read(offset: number, into: Buffer): Promise<void> {
    return this.inner.read(offset, into);
  }
  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    await this.inner.write(offset, data, opts);
    if (opts?.fua) await this.inner.flush();
  }
  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await this.inner.writeZeroes(offset, length, opts);
    if (opts?.fua) await this.inner.flush();
  }
  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    await this.inner.trim(offset, length, opts);
    if (opts?.fua) await this.inner.flush();
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.inner.blockStatus(offset, length);
  }
  cache(): Promise<void> {
    return Promise.resolve();
  }
  resize(): void {
    throw new Error('FuaStore does not resize');
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  /** The store after a crash (see SimStore.crash). */
  crash(): FuaStore {
    return new FuaStore(this.inner.crash());
  }
}

const REMOTE = 'site-b';

export class SimNet {
  up = true;
  /** Probability that a data transfer fails with an I/O error at the remote (remote-failed). */
  remoteFail = 0;
  /** Probability that a control call is carried out at site-b but its answer is lost (link-down). */
  lostReply = 0;
  /** Control calls (by what they do) whose replies are never lost. */
  noLostReply: ((what: string) => boolean) | undefined;
  /** Counts of what happened, for the run's statistics. */
  readonly stats = { remoteFailed: 0, lostReplies: 0, downEvents: 0, upEvents: 0, dataOps: 0 };
  /** Site-a's process generation: links and hooks of an older one are dead. */
  epochA = 0;
  /** Site-b's process generation: a data connection or a call answered by an older one is lost. */
  epochB = 0;
  readonly links = new Set<SimLink>();
  /** Work queued on site-b (data connections that closed): awaited by settle(). */
  readonly pendingB: Array<Promise<unknown>> = [];

  constructor(
    /** Site-b's engine now (undefined while it is down). */
    readonly siteB: () => CopyEngine | undefined,
    readonly rand: () => number,
    /** Most microtasks a call spends on the way there, and again on the way back. */
    readonly maxDelay: number,
  ) {}

  async delay(): Promise<void> {
    const n = Math.floor(this.rand() * (this.maxDelay + 1));
    for (let i = 0; i < n; i++) await Promise.resolve();
  }

  /** Site-a's hook for the current process generation. */
  hook(): RemoteCopyHook {
    const epoch = this.epochA;
    const dead = (): void => {
      if (this.epochA !== epoch) throw new RemoteLinkError('site-a crashed: this process is gone', 'link-down');
    };
    // Built apart from the return so that it fits RemoteCopyHook with or without consistency
    // mode's members (bufferSettings, commitCycle), which this simulator does not drive.
    const hook = {
      checkRemote: (name: string) => {
        if (name !== REMOTE) throw new CopyError('NOT_FOUND', `no remote array named ${name}; known: ${REMOTE}`);
      },
      openRemoteEnd: async (r: SessionRecord, blockSize: number, force: boolean) => {
        dead();
        const rec = r.rec!;
        await this.control('open the remote end', epoch, (b) =>
          b.openRemoteEnd(
            {
              pairId: r.id,
              source: `site-a:${r.source}`,
              peer: 'site-a',
              peerArrayId: 'a0a0a0a0a0a0',
              sourceVolume: r.source,
              volume: rec.peerVolume,
              sizeBytes: r.sizeBytes,
              blockSize,
              unitSize: r.unitSize,
              mode: rec.mode,
              secret: rec.secret,
            },
            force ? undefined : () => undefined,
          ),
        );
      },
      closeRemoteEnd: async (r: SessionRecord) => {
        dead();
        await this.control('close the remote end', epoch, (b) => b.cancel(r.id, { force: true }));
      },
      link: (r: SessionRecord, events: RecLinkEvents): RecLink => {
        const l = new SimLink(this, r, events, epoch);
        this.links.add(l);
        return l;
      },
      bufferSettings: () => ({ bytes: 1024 * 1024, haltWaitMs: 0, monitorMs: 300_000, cycleMs: 1000 }),
      commitCycle: () => Promise.reject(new RemoteLinkError('consistency mode is not simulated', 'link-down')),
    };
    return hook;
  }

  /**
   * A control call to site-b, as RemoteArrays.control makes it: a link that is down (or a
   * crashed caller) is link-down; site-b's refusal comes back as a CopyError naming it.
   */
  async control<T>(what: string, epochA: number, call: (b: CopyEngine) => Promise<T>): Promise<T> {
    await this.delay();
    const b = this.siteB();
    if (!this.up || b === undefined || this.epochA !== epochA) throw new RemoteLinkError(`link to remote ${REMOTE} is down (simulated)`, 'link-down');
    const epochB = this.epochB;
    let out: T;
    try {
      out = await call(b);
    } catch (err) {
      if (this.epochB !== epochB) throw new RemoteLinkError(`remote array ${REMOTE} did not answer: it restarted`, 'link-down');
      if (err instanceof CopyError) {
        const code = err.code === 'NOT_FOUND' || err.code === 'INVALID_ARGUMENT' || err.code === 'ALREADY_EXISTS' ? err.code : 'FAILED_PRECONDITION';
        throw new RemoteRefusalError(code, `remote ${REMOTE} refused to ${what}: ${err.message}`);
      }
      throw new RemoteLinkError(`remote array ${REMOTE} did not answer: ${(err as Error).message}`, 'link-down');
    }
    await this.delay();
    if (!this.up || this.epochB !== epochB || this.epochA !== epochA)
      throw new RemoteLinkError(`remote array ${REMOTE} did not answer: the link went down`, 'link-down');
    if (this.lostReply > 0 && !this.noLostReply?.(what) && this.rand() < this.lostReply) {
      this.stats.lostReplies++;
      throw new RemoteLinkError(`remote array ${REMOTE} did not answer: deadline exceeded (simulated lost reply to ${what})`, 'link-down');
    }
    return out;
  }

  /** The link goes down: connected pairs hear it, and site-b sees their data connections close. */
  down(): void {
    this.up = false;
    for (const l of this.links) l.lose('link-down fault (simulated)');
  }

  /** Links a halted pair watches reconnect now (RecDataPath's back-off timer firing). */
  poll(): void {
    for (const l of [...this.links]) l.tryUp();
  }

  /** Site-a crashed: its links die; site-b sees their data connections close. */
  crashA(): void {
    this.epochA++;
    for (const l of [...this.links]) l.kill();
    this.links.clear();
  }

  /** Site-b crashed: every data connection is gone; site-a's pairs hear it. */
  crashB(): void {
    this.epochB++;
    for (const l of this.links) l.lose(`connection to remote ${REMOTE} lost: the remote array restarted`, false);
  }

  /** Site-b's data connection of a pair closed (its .rec export handle's onClose). */
  closedAtB(id: string, reason: string): void {
    const b = this.siteB();
    if (b === undefined) return;
    this.pendingB.push(b.remoteEndLinkLost(id, reason).catch(() => undefined));
  }
}

export class SimLink implements RecLink {
  private device: BlockDevice | undefined;
  private deviceEpochB = -1;
  private watching = false;
  private closed = false;

  constructor(
    private readonly net: SimNet,
    private readonly record: SessionRecord,
    private readonly events: RecLinkEvents,
    private readonly epochA: number,
  ) {}

  get up(): boolean {
    return this.device !== undefined;
  }

  private get alive(): boolean {
    return !this.closed && this.epochA === this.net.epochA;
  }

  private linkDown(why: string): RemoteLinkError {
    return new RemoteLinkError(`link to remote ${REMOTE}: ${why}`, 'link-down');
  }

  /** The data connection, dialled on demand (the export .rec/ID/SECRET must exist at site-b). */
  private dial(): BlockDevice {
    if (!this.alive) throw this.linkDown(`the link of REC session ${this.record.id} is closed`);
    if (this.device !== undefined) return this.device;
    const b = this.net.siteB();
    if (!this.net.up || b === undefined) throw this.linkDown('down (simulated)');
    const end = b.remoteEndFor(this.record.id, this.record.rec!.secret);
    if (end === undefined) throw this.linkDown(`remote has no export .rec/${this.record.id} (no such remote end)`);
    const refused = end.accepting();
    if (refused !== undefined) throw this.linkDown(refused);
    this.device = end.tap.below;
    this.deviceEpochB = this.net.epochB;
    this.accepting = end.accepting;
    return this.device;
  }

  /** The remote end's gate, as the real export's ReplicaDevice checks it per write. */
  private accepting: () => string | undefined = () => undefined;

  private async transfer(what: string, fn: (d: BlockDevice) => Promise<void>): Promise<void> {
    await this.net.delay();
    const dev = this.dial();
    const refused = this.accepting();
    if (refused !== undefined) throw new RemoteLinkError(`remote ${REMOTE} failed a ${what} (${refused})`, 'remote-failed');
    if (this.net.remoteFail > 0 && this.net.rand() < this.net.remoteFail) {
      this.net.stats.remoteFailed++;
      throw new RemoteLinkError(`remote ${REMOTE} failed a ${what} (EIO, simulated) on ${this.record.destination}`, 'remote-failed');
    }
    this.net.stats.dataOps++;
    try {
      await fn(dev);
    } catch (err) {
      if (this.device !== dev || this.deviceEpochB !== this.net.epochB) throw this.linkDown(`connection lost during a ${what}`);
      throw new RemoteLinkError(`remote ${REMOTE} failed a ${what} (${(err as Error).message}) on ${this.record.destination}`, 'remote-failed');
    }
    await this.net.delay();
    // The answer is lost with the connection, whether or not the remote did it.
    if (this.device !== dev || !this.alive) throw this.linkDown(`connection lost before the ${what} was answered`);
  }

  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.transfer('write', (d) => d.write(offset, data, opts?.fua ? { fua: true } : {}));
  }

  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.transfer('write', (d) => d.writeZeroes(offset, length, opts?.fua ? { fua: true } : {}));
  }

  flush(): Promise<void> {
    return this.transfer('flush', (d) => d.flush());
  }

  async setRemoteState(
    state: RemoteEndState,
    extra: { imageAt?: string | undefined; haltReason?: HaltReason | undefined; mode?: RecMode | undefined; resynced?: boolean | undefined } = {},
  ): Promise<void> {
    if (!this.alive) throw this.linkDown('closed');
    await this.net.control(`set the remote end ${state}`, this.epochA, (b) =>
      b.setRemoteEndState(this.record.id, state, {
        ...(extra.imageAt ? { imageAt: extra.imageAt } : {}),
        ...(extra.haltReason !== undefined ? { haltReason: extra.haltReason } : {}),
        ...(extra.mode !== undefined ? { mode: extra.mode } : {}),
        ...(extra.resynced ? { resynced: true } : {}),
      }),
    );
  }

  async resumeRemote(force: boolean): Promise<{ runs: Array<[number, number]>; restarted: boolean }> {
    if (!this.alive) throw this.linkDown('closed');
    const res = await this.net.control('resume the remote end', this.epochA, (b) => b.resumeRemoteEnd(this.record.id, force));
    return { runs: res.runs, restarted: res.restarted };
  }

  /** Reverse is not simulated: the source stays the source. */
  reverseRemote(): Promise<void> {
    return Promise.reject(new RemoteLinkError('reverse is not simulated', 'link-down'));
  }

  watch(on: boolean): void {
    this.watching = on && this.alive;
  }

  /** The reconnect timer fired: dial; once connected, the session hears events.up(). */
  tryUp(): void {
    if (!this.watching || !this.alive) return;
    // As RecDataPath: the remote answers (not a data dial: a halted remote end refuses it).
    if (!this.net.up || this.net.siteB() === undefined) return;
    this.watching = false;
    this.net.stats.upEvents++;
    this.events.up();
  }

  /** The connection goes (link down, or site-b restarted): the session hears it if it was connected. */
  lose(reason: string, tellB = true): void {
    if (this.device === undefined) return;
    this.device = undefined;
    if (tellB) this.net.closedAtB(this.record.id, `the data connection from the source array closed (${reason})`);
    if (this.alive) {
      this.net.stats.downEvents++;
      this.events.down(new RemoteLinkError(reason, 'link-down'));
    }
  }

  /** Site-a crashed: the link is gone; site-b sees its connection close. */
  kill(): void {
    this.closed = true;
    this.watching = false;
    if (this.device === undefined) return;
    this.device = undefined;
    this.net.closedAtB(this.record.id, 'the data connection from the source array closed (the source array crashed)');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watching = false;
    this.net.links.delete(this);
    if (this.device === undefined) return;
    this.device = undefined;
    this.net.closedAtB(this.record.id, 'the data connection from the source array closed');
  }
}
