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
 *
 * Data transfers of one link arrive in the order they were sent (the array's NBD server
 * dispatches a connection's requests in order; a consistency-mode cycle relies on it for
 * overlapping writes), each after a random delay; their answers come back in any order.
 *
 * Consistency mode, as StorageArray does it: a pair's remote end gets a CycleStage (in memory)
 * when it is set equivalent in consistency mode, reset when it leaves that or resumes; while
 * the remote end stages, its data goes to the stage (as ReplicaDevice routes it); commitCycle
 * is StorageArray.commitRemoteCycle (the engine's commit for every pair, then each stage
 * applied to the volume below the tap, then remoteCycleApplied); recoverB() is its
 * recoverRemoteEnds. A stage is a file that survives a crash of site-b as far as it was
 * flushed (and perhaps some records beyond: a prefix of what was appended since).
 */
import { BlockDeviceError, type BlockDevice, type Extent, type WriteOptions, type ZeroOptions } from '../../emulator/block/BlockDevice.js';
import type { VolumeStore } from '../../emulator/array/Volume.js';
import type { CopyEngine, RemoteCopyHook } from '../../emulator/copy/CopyEngine.js';
import { CopyError, type HaltReason, type RecMode, RemoteLinkError, RemoteRefusalError, type SessionRecord } from '../../emulator/copy/CopySession.js';
import type { RecBufferSettings } from '../../emulator/copy/recBuffer.js';
import type { RecLink, RecLinkEvents, RemoteEndState } from '../../emulator/copy/SessionBase.js';
import { CycleStage } from '../../emulator/remote/CycleStage.js';
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

/** What the simulator's model hears of consistency mode at site-b (each only while site-b lives on). */
export interface ConsistencyObserver {
  /** The remote end of a pair began staging cycles: R holds the source's image of this instant. */
  stagingStarted(id: string): void;
  /** It stopped staging for a state in which R may change other than by a cycle (resync, freeze, sync, closed). */
  stagingEnded(id: string, why: string): void;
  /** A CommitCycle of cycle `key` (`EPOCH_A:SEQ`): about to commit (start), committed durably (done), the call is over (end). */
  commit(key: string, phase: 'start' | 'done' | 'end'): void;
}

interface StageRecord {
  offset: number;
  length: number;
  data: Buffer | undefined;
}

/** A stage's file at site-b: its records, of which the first `synced` are durable. */
interface StageFile {
  records: StageRecord[];
  synced: number;
}

/** Site-b's process: its open stages (StorageArray.stages). */
interface SiteB {
  epoch: number;
  stages: Map<string, SimStage>;
}

/** A CycleStage (memory) with its file's durability modelled: a crash keeps what was flushed. */
export class SimStage {
  constructor(
    private readonly net: SimNet,
    readonly stage: CycleStage,
    private readonly file: StageFile,
    private readonly epochB: number,
  ) {}

  /** Only site-b's live process changes the file (an old one's work dies with it). */
  private get live(): boolean {
    return this.net.epochB === this.epochB;
  }

  write(offset: number, data: Buffer): Promise<void> {
    const before = this.stage.size;
    const p = this.stage.write(offset, data); // in memory: recorded at once (or refused)
    if (this.live && this.stage.size > before) this.file.records.push({ offset, length: data.length, data: Buffer.from(data) });
    return p;
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    const before = this.stage.size;
    const p = this.stage.writeZeroes(offset, length);
    if (this.live && this.stage.size > before) this.file.records.push({ offset, length, data: undefined });
    return p;
  }

  flush(): Promise<void> {
    if (this.live) this.file.synced = this.file.records.length;
    return this.stage.flush();
  }

  apply(target: BlockDevice): Promise<void> {
    return this.stage.apply(target);
  }

  async reset(): Promise<void> {
    await this.stage.reset();
    if (this.live) {
      this.file.records = [];
      this.file.synced = 0;
    }
  }
}

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
  /**
   * Consistency mode: the REC buffer's settings. cycleMs is out of reach: the simulator closes
   * cycles itself (RecBuffer.cycleNow), so runs are deterministic.
   */
  bufferSettings: RecBufferSettings = { bytes: 16 * 1024, haltWaitMs: 0, monitorMs: 3_600_000, cycleMs: 2_000_000_000 };
  /** Site-b's stage files (they outlive its process). */
  readonly stageFiles = new Map<string, StageFile>();
  /** Site-b's process now. */
  procB: SiteB = { epoch: 0, stages: new Map() };
  observer: ConsistencyObserver | undefined;
  /** Pairs whose remote end applied a cycle since it began staging (its applied mark may not be durable yet). */
  readonly appliedSinceStaging = new Set<string>();
  /** Control calls and data transfers under way: idle() waits for them. */
  readonly busy = new Set<Promise<unknown>>();

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

  /** p, counted as work under way until it settles. */
  track<T>(p: Promise<T>): Promise<T> {
    this.busy.add(p);
    const done = (): void => {
      this.busy.delete(p);
    };
    p.then(done, done);
    return p;
  }

  /** Waits until no call or transfer is under way (a cycle being sent and committed, say). */
  async idle(): Promise<void> {
    for (let round = 0; round < 1000; round++) {
      if (this.busy.size > 0) await Promise.allSettled([...this.busy]);
      for (let i = 0; i < 20; i++) await Promise.resolve();
      if (this.busy.size === 0) return;
    }
    throw new Error('the simulated link never went idle');
  }

  /** Site-b's stage of a pair, opened from its file (StorageArray.stageOf). */
  async stageOf(proc: SiteB, id: string): Promise<SimStage> {
    const have = proc.stages.get(id);
    if (have !== undefined) return have;
    const stage = await CycleStage.open(id, undefined);
    let file = this.stageFiles.get(id);
    if (file === undefined) this.stageFiles.set(id, (file = { records: [], synced: 0 }));
    for (const r of file.records) await (r.data === undefined ? stage.writeZeroes(r.offset, r.length) : stage.write(r.offset, r.data));
    const raced = proc.stages.get(id);
    if (raced !== undefined) return raced;
    const s = new SimStage(this, stage, file, proc.epoch);
    proc.stages.set(id, s);
    return s;
  }

  /** Whether site-b's remote end of this pair stages cycles now. */
  stagingAtB(id: string): boolean {
    const b = this.siteB();
    return b !== undefined && this.staging(b, id);
  }

  private staging(b: CopyEngine, id: string): boolean {
    return b.remoteEnds().find((e) => e.id === id)?.staging ?? false;
  }

  /** SetRemoteEndState at site-b, as StorageArray.setRemoteEndState does it (the stage). */
  async setRemoteEndStateAtB(
    b: CopyEngine,
    id: string,
    state: RemoteEndState,
    extra: { imageAt?: string; haltReason?: HaltReason; mode?: RecMode; resynced?: boolean },
  ): Promise<void> {
    const proc = this.procB;
    const was = this.staging(b, id);
    if (state === 'equivalent' && extra.mode === 'consistency') await this.stageOf(proc, id);
    const info = await b.setRemoteEndState(id, state, extra);
    if (!(state === 'equivalent' && info.remote?.mode === 'consistency')) await proc.stages.get(id)?.reset();
    if (proc.epoch !== this.epochB) return;
    const now = this.staging(b, id);
    if (was !== now) this.appliedSinceStaging.delete(id);
    if (!was && now) this.observer?.stagingStarted(id);
    else if (state !== 'halt' && !now) this.observer?.stagingEnded(id, `set ${state}${extra.mode ? ` (${extra.mode})` : ''}`);
  }

  /** ResumeRemoteEnd at site-b (StorageArray.resumeRemoteEnd): the stage goes. */
  async resumeRemoteEndAtB(b: CopyEngine, id: string, force: boolean): Promise<{ runs: Array<[number, number]>; restarted: boolean }> {
    const proc = this.procB;
    const out = await b.resumeRemoteEnd(id, force);
    await proc.stages.get(id)?.reset(); // a cycle cut short by the loss: never committed
    if (proc.epoch !== this.epochB) return { runs: out.runs, restarted: out.restarted };
    this.appliedSinceStaging.delete(id);
    this.observer?.stagingEnded(id, 'resume');
    return { runs: out.runs, restarted: out.restarted };
  }

  /** CommitCycle at site-b (StorageArray.commitRemoteCycle), from site-a's hook of generation epochA. */
  commitCycle(epochA: number, cycle: number, ids: string[]): Promise<void> {
    const key = `${epochA}:${cycle}`;
    return this.control(`commit cycle ${cycle}`, epochA, async (b) => {
      if (ids.length === 0) return;
      const proc = this.procB;
      for (const id of ids) if (!proc.stages.has(id)) throw new CopyError('FAILED_PRECONDITION', `REC pair ${id} has no cycle stage here; resume the pair`);
      this.observer?.commit(key, 'start');
      try {
        let committed = false;
        await b.commitRemoteCycle(ids, cycle, {
          apply: async (e) => {
            // The engine has made the commit durable before the first apply.
            if (!committed && proc.epoch === this.epochB) this.observer?.commit(key, 'done');
            committed = true;
            await proc.stages.get(e.id)!.apply(e.tap.below);
          },
          reset: async (e) => proc.stages.get(e.id)?.reset(),
        });
        if (proc.epoch === this.epochB) for (const id of ids) this.appliedSinceStaging.add(id);
      } finally {
        if (proc.epoch === this.epochB) this.observer?.commit(key, 'end');
      }
    });
  }

  /** Site-b restarted (its engine recovered): StorageArray.recoverRemoteEnds. */
  async recoverB(b: CopyEngine): Promise<string[]> {
    const proc = this.procB;
    const did: string[] = [];
    for (const e of b.remoteEnds()) {
      if (!e.consistency) continue;
      const stage = await this.stageOf(proc, e.id);
      if (e.unapplied !== undefined) {
        did.push(`${e.id}: applied committed cycle ${e.unapplied} (a stage of ${stage.stage.size} bytes)`);
        await stage.apply(e.tap.below);
        await b.remoteCycleApplied([e.id], e.unapplied);
      } else if (stage.stage.size > 0) did.push(`${e.id}: dropped an uncommitted stage of ${stage.stage.size} bytes`);
      await stage.reset();
    }
    return did;
  }

  /** Site-a's hook for the current process generation. */
  hook(): RemoteCopyHook {
    const epoch = this.epochA;
    const dead = (): void => {
      if (this.epochA !== epoch) throw new RemoteLinkError('site-a crashed: this process is gone', 'link-down');
    };
    const hook: RemoteCopyHook = {
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
        await this.control('close the remote end', epoch, async (b) => {
          const proc = this.procB;
          await b.cancel(r.id, { force: true });
          proc.stages.delete(r.id);
          if (proc.epoch !== this.epochB) return;
          this.stageFiles.delete(r.id);
          this.observer?.stagingEnded(r.id, 'closed');
        });
      },
      link: (r: SessionRecord, events: RecLinkEvents): RecLink => {
        const l = new SimLink(this, r, events, epoch);
        this.links.add(l);
        return l;
      },
      bufferSettings: () => ({ ...this.bufferSettings }),
      commitCycle: async (_remote: string, cycle: number, pairIds: string[]) => {
        dead();
        await this.commitCycle(epoch, cycle, pairIds);
      },
    };
    return hook;
  }

  /**
   * A control call to site-b, as RemoteArrays.control makes it: a link that is down (or a
   * crashed caller) is link-down; site-b's refusal comes back as a CopyError naming it.
   */
  control<T>(what: string, epochA: number, call: (b: CopyEngine) => Promise<T>): Promise<T> {
    return this.track(this.controlNow(what, epochA, call));
  }

  private async controlNow<T>(what: string, epochA: number, call: (b: CopyEngine) => Promise<T>): Promise<T> {
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

  /** Site-b crashed: every data connection is gone; site-a's pairs hear it; stage files keep what was flushed (and perhaps a little more). */
  crashB(): void {
    this.epochB++;
    this.procB = { epoch: this.epochB, stages: new Map() };
    this.appliedSinceStaging.clear();
    for (const f of this.stageFiles.values()) {
      const keep = f.synced + Math.floor(this.rand() * (f.records.length - f.synced + 1));
      f.records = f.records.slice(0, keep);
      f.synced = keep;
    }
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
  /** Site-b's process the connection reaches, and whether its remote end stages now. */
  private proc: SiteB | undefined;
  private staging: () => boolean = () => false;
  /** Transfers arrive in order: each waits for the one sent before it to arrive. */
  private wire: Promise<void> = Promise.resolve();
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
    this.staging = end.staging;
    this.proc = this.net.procB;
    return this.device;
  }

  /** The remote end's gate, as the real export's ReplicaDevice checks it per write. */
  private accepting: () => string | undefined = () => undefined;

  private transfer(what: string, fn: (d: BlockDevice, stage: SimStage | undefined) => Promise<void>): Promise<void> {
    const arrived = this.wire.then(() => this.net.delay());
    this.wire = arrived;
    return this.net.track(this.transferNow(what, arrived, fn));
  }

  private async transferNow(what: string, arrived: Promise<void>, fn: (d: BlockDevice, stage: SimStage | undefined) => Promise<void>): Promise<void> {
    await arrived;
    const dev = this.dial();
    const refused = this.accepting();
    if (refused !== undefined) throw new RemoteLinkError(`remote ${REMOTE} failed a ${what} (${refused})`, 'remote-failed');
    if (this.net.remoteFail > 0 && this.net.rand() < this.net.remoteFail) {
      this.net.stats.remoteFailed++;
      throw new RemoteLinkError(`remote ${REMOTE} failed a ${what} (EIO, simulated) on ${this.record.destination}`, 'remote-failed');
    }
    this.net.stats.dataOps++;
    try {
      // As ReplicaDevice: while the remote end stages cycles, data goes to the pair's stage.
      let stage: SimStage | undefined;
      if (this.staging()) {
        stage = this.proc?.stages.get(this.record.id);
        if (stage === undefined) throw new BlockDeviceError('EIO', `REC pair ${this.record.id}: the cycle stage is not open; the source resumes the pair`);
      }
      await fn(dev, stage);
    } catch (err) {
      if (this.device !== dev || this.deviceEpochB !== this.net.epochB) throw this.linkDown(`connection lost during a ${what}`);
      throw new RemoteLinkError(`remote ${REMOTE} failed a ${what} (${(err as Error).message}) on ${this.record.destination}`, 'remote-failed');
    }
    await this.net.delay();
    // The answer is lost with the connection, whether or not the remote did it.
    if (this.device !== dev || !this.alive) throw this.linkDown(`connection lost before the ${what} was answered`);
  }

  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.transfer('write', (d, stage) => (stage !== undefined ? stage.write(offset, data) : d.write(offset, data, opts?.fua ? { fua: true } : {})));
  }

  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.transfer('write', (d, stage) =>
      stage !== undefined ? stage.writeZeroes(offset, length) : d.writeZeroes(offset, length, opts?.fua ? { fua: true } : {}),
    );
  }

  flush(): Promise<void> {
    return this.transfer('flush', async (d, stage) => {
      await Promise.all([stage?.flush(), d.flush()]);
    });
  }

  async setRemoteState(
    state: RemoteEndState,
    extra: { imageAt?: string | undefined; haltReason?: HaltReason | undefined; mode?: RecMode | undefined; resynced?: boolean | undefined } = {},
  ): Promise<void> {
    if (!this.alive) throw this.linkDown('closed');
    await this.net.control(`set the remote end ${state}`, this.epochA, (b) =>
      this.net.setRemoteEndStateAtB(b, this.record.id, state, {
        ...(extra.imageAt ? { imageAt: extra.imageAt } : {}),
        ...(extra.haltReason !== undefined ? { haltReason: extra.haltReason } : {}),
        ...(extra.mode !== undefined ? { mode: extra.mode } : {}),
        ...(extra.resynced ? { resynced: true } : {}),
      }),
    );
  }

  async resumeRemote(force: boolean): Promise<{ runs: Array<[number, number]>; restarted: boolean }> {
    if (!this.alive) throw this.linkDown('closed');
    return this.net.control('resume the remote end', this.epochA, (b) => this.net.resumeRemoteEndAtB(b, this.record.id, force));
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
