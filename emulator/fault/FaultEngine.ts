/**
 * The array's fault engine: the faults set on it, the flags that gate them, and the events
 * of every injection.
 *
 * Where faults act:
 *   volume:NAME, export:NAME  host I/O to the volume (a FaultPoint on its device), and for
 *                             disconnect/reset and connect faults, its connections;
 *   session:ID                the copy engine's own I/O for that session (copyFault);
 *                             a copy-error fault on volume:NAME: the copy engine's I/O on
 *                             that volume, whatever session does it (one a backup product
 *                             starts, whose id nobody knows beforehand), not host I/O;
 *                             bad-blocks on volume:NAME: both. Bad blocks are on the medium,
 *                             so the copy engine's reads meet them and its writes heal them;
 *                             every other volume fault is on the host's path only;
 *   tape:LABEL                tape reads and writes of that cartridge (tapeFault);
 *   api                       control-API calls by RPC name (apiFault);
 *   remote:NAME               transfers on the link to a remote array (linkSend, linkDown:
 *                             the engine is the links' LinkFaultHook, link.ts).
 * Each check is one map lookup when no fault is set, so the array pays nothing for the
 * engine it does not use.
 *
 * Repeatability: every fault has a seed (given, derived from its plan's seed, or drawn and
 * shown), and a trigger that counts only the operations its fault matches. The same plan
 * and the same workload produce the same injections, in the same order.
 */
import { parse as parseYaml } from 'yaml';
import { BlockDeviceError, type ClientInfo, type HandleEvent } from '../block/BlockDevice.js';
import { StatusError } from '../../proto/errors.js';
import type { Logger } from '../../proto/util/log.js';
import type { EventLog } from '../events/EventLog.js';
import { FaultPoint, type ActiveFault, type FiredEvent, opMaskOf } from './FaultPoint.js';
import type { Injector, IoRequest } from './io.js';
import { badBlocksInjector } from './injectors/badBlocks.js';
import { corruptInjector } from './injectors/corrupt.js';
import { delayInjector, delayMs } from './injectors/delay.js';
import { disconnectInjector, resetInjector } from './injectors/disconnect.js';
import { errorInjector } from './injectors/error.js';
import { lyingFlushInjector } from './injectors/lyingFlush.js';
import { pauseInjector } from './injectors/pause.js';
import { rateInjector, type RateInjector } from './injectors/rate.js';
import { sleep } from './injectors/sleep.js';
import { LinkFaultError, type LinkFaultHook, type LinkOp } from './link.js';
import { deriveSeed, freshSeed, SeededRandom } from './random.js';
import { describeFault, type Fault, FaultSpecError, type FaultSpec, formatTarget, type LooseFaultSpec, parseFaultSpec, parseFlagName } from './spec.js';
import { Trigger } from './trigger.js';

/** One injection, as `arraylab fault events` shows it. */
export interface FaultEvent {
  /** Increases by one per event, from 1 at the array's start. */
  seq: number;
  at: string;
  faultId: string;
  kind: string;
  target: string;
  /** The operation: read, write, ..., connect, an RPC name, or "add" for faults applied at once. */
  op: string;
  /** Bytes, for block operations. */
  offset?: number | undefined;
  length?: number | undefined;
  /** The client's connection, for block operations from a client. */
  connection?: string | undefined;
  /** What happened, in words. */
  detail: string;
}

/** What the engine needs of the array (kept small: tests give it a fake). */
export interface FaultTargets {
  volumeExists(name: string): boolean;
  sessionExists(id: string): boolean;
  tapeExists(label: string): boolean;
  /** Installs (or with undefined removes) the fault point on a volume's host path. */
  setFaultPoint(volume: string, point: FaultPoint | undefined): void;
  /** Signals every open connection of an export; returns how many. */
  signalExport(name: string, event: HandleEvent): number;
}

/** Where non-transient faults are kept across restarts (the metadata store). */
export interface FaultStore {
  loadFaults(): Fault[];
  saveFault(f: Fault): void;
  removeFault(id: string): void;
  /** A fault number never given before in this array (1, 2, ...). */
  takeFaultNumber(): number;
}

export interface FaultEngineOptions {
  targets: FaultTargets;
  store?: FaultStore | undefined;
  logger?: Logger | undefined;
  /** Events kept for late readers (default 10,000). */
  historySize?: number | undefined;
  now?: () => number;
}

interface Held extends ActiveFault {
  /** Set when the fault is removed (its waiters are released). */
  removed: boolean;
  /** link-delay: the generator of its delays. */
  rng?: SeededRandom | undefined;
  /** link-down with a window: tells the links when the window opens. */
  timer?: NodeJS.Timeout | undefined;
}

/** A plan file: a name, one seed, and the faults. */
export interface FaultPlan {
  name: string;
  seed: number;
  faults: LooseFaultSpec[];
}

export class FaultEngine implements LinkFaultHook {
  private readonly faults = new Map<string, Held>();
  /** Link faults by remote name, in the order added (rebuilt with the fault points). */
  private readonly links = new Map<string, Held[]>();
  /** The links' drop callbacks, by remote name (onLinkDown). */
  private readonly linkListeners = new Map<string, Set<(err: LinkFaultError) => void>>();
  /**
   * Set by whoever owns the remote arrays (emulator/remote), so a link fault can only name a
   * registered one. Until it is set (an array that serves no remote copy yet, unit tests), any
   * valid name is taken: such a fault does nothing until a link of that name sends.
   */
  remoteExists: ((name: string) => boolean) | undefined = undefined;
  private readonly points = new Map<string, FaultPoint>();
  private readonly flags = new Set<string>();
  /** Exports whose reconnects are refused until the time (ms). */
  private readonly refused = new Map<string, { until: number; faultId: string }>();
  private readonly history: FaultEvent[] = [];
  private readonly historySize: number;
  private readonly listeners = new Set<(e: FaultEvent) => void>();
  private seq = 0;
  /** Injections by fault kind since the array started (the metrics' arraylab_fault_injections_total). */
  private readonly injected = new Map<string, number>();
  private nextId = 1;
  private readonly now: () => number;
  private readonly log: Logger | undefined;
  /** The array's event stream, when on (api.events): faults set and removed. */
  eventLog: EventLog | undefined = undefined;

  constructor(private readonly opts: FaultEngineOptions) {
    this.historySize = opts.historySize ?? 10_000;
    this.now = opts.now ?? Date.now;
    this.log = opts.logger?.child({ component: 'fault' });
  }

  /** Loads the kept faults (at start). A fault whose target is gone is kept and reported. */
  load(): Fault[] {
    const loaded = this.opts.store?.loadFaults() ?? [];
    for (const f of loaded) this.install(f);
    return loaded;
  }

  /** True when any fault is set (for `arraylab status`). */
  get count(): number {
    return this.faults.size;
  }

  // ---- faults ----

  /** Validates and sets a fault; applies disconnect and reset faults without a trigger at once. */
  async add(loose: LooseFaultSpec, opts: { drain?: boolean; seed?: () => number } = {}): Promise<Fault> {
    const spec = parseFaultSpec(loose, opts.seed ?? freshSeed);
    this.checkTarget(spec);
    const n = this.opts.store?.takeFaultNumber() ?? this.nextId++;
    const fault: Fault = { ...spec, id: `f${n}`, createdAt: new Date(this.now()).toISOString() };
    if (!fault.transient) this.opts.store?.saveFault(fault);
    const held = this.install(fault);
    this.log?.info(
      { faultId: fault.id, target: formatTarget(fault.target), fault: describeFault(fault) },
      `fault ${fault.id} set on ${formatTarget(fault.target)}`,
    );
    this.eventLog?.add({
      kind: 'fault.added',
      subject: { kind: 'fault', name: fault.id },
      message: `fault ${fault.id} set on ${formatTarget(fault.target)}: ${describeFault(fault)}`,
      fields: { target: formatTarget(fault.target) },
    });
    if (fault.ops.length === 0) {
      this.applyAtOnce(held);
    }
    if (fault.action.kind === 'link-down') this.linkWentDown(held, 'add');
    if (opts.drain === true && fault.action.kind === 'pause') {
      const point = this.pointOf(fault);
      if (point !== undefined) await point.drained();
    }
    return fault;
  }

  /** Removes a fault: waiting operations go on (a pause ends, delays are cut short). */
  remove(id: string): Fault {
    const held = this.faults.get(id);
    if (held === undefined) throw new StatusError('NOT_FOUND', `no fault ${id}; 'arraylab fault list' shows the faults set`);
    this.uninstall(held);
    if (!held.fault.transient) this.opts.store?.removeFault(id);
    this.log?.info({ faultId: id }, `fault ${id} removed`);
    this.eventLog?.add({
      kind: 'fault.removed',
      subject: { kind: 'fault', name: id },
      message: `fault ${id} removed`,
      fields: { target: formatTarget(held.fault.target) },
    });
    return held.fault;
  }

  /** Removes every fault (and with `flags`, clears the flags too); returns how many. */
  clear(opts: { flags?: boolean } = {}): number {
    const ids = [...this.faults.keys()];
    for (const id of ids) this.remove(id);
    if (opts.flags === true) this.flags.clear();
    this.refused.clear();
    return ids.length;
  }

  list(): Array<Fault & { seen: number; fired: number }> {
    return [...this.faults.values()].map((h) => ({ ...h.fault, seen: h.trigger.seen, fired: h.trigger.fired }));
  }

  get(id: string): Fault & { seen: number; fired: number } {
    const h = this.faults.get(id);
    if (h === undefined) throw new StatusError('NOT_FOUND', `no fault ${id}; 'arraylab fault list' shows the faults set`);
    return { ...h.fault, seen: h.trigger.seen, fired: h.trigger.fired };
  }

  /** Changes a rate fault's caps while it runs. */
  setRate(id: string, mibs: number | undefined, iops: number | undefined): Fault {
    const h = this.faults.get(id);
    if (h === undefined) throw new StatusError('NOT_FOUND', `no fault ${id}; 'arraylab fault list' shows the faults set`);
    const a = h.fault.action;
    if (a.kind !== 'rate' && a.kind !== 'link-rate')
      throw new FaultSpecError(`fault ${id} is a ${a.kind} fault; only rate and link-rate faults take a new rate`);
    if (a.kind === 'link-rate') {
      // A link is capped in bytes only: its transfers are few and large, so IOPS say nothing.
      if (iops !== undefined || mibs === undefined)
        throw new FaultSpecError(`fault ${id} is a link-rate fault: it takes --mibs only, e.g. arraylab fault rate ${id} --mibs 10`);
      if (!Number.isFinite(mibs) || mibs < 0.001 || mibs > 1_000_000) throw new FaultSpecError(`mibs must be a number from 0.001 to 1000000, not ${mibs}`);
    }
    if (mibs === undefined && iops === undefined) throw new FaultSpecError('give --mibs or --iops');
    (h.injector as RateInjector).setRate(mibs, iops);
    const action: Fault['action'] = a.kind === 'link-rate' ? { kind: 'link-rate', mibs: mibs! } : { kind: 'rate', mibs, iops, perConnection: a.perConnection };
    const fault: Fault = { ...h.fault, action };
    this.faults.set(id, { ...h, fault });
    this.rebuildPoints();
    if (!fault.transient) this.opts.store?.saveFault(fault);
    return fault;
  }

  // ---- plans ----

  /**
   * Applies a plan: removes the faults a plan of the same name set before, then adds the
   * plan's faults with seeds derived from the plan's seed, in order, so that applying the
   * same plan again replays the same injections from the start.
   */
  async applyPlan(text: string, source = 'plan'): Promise<{ plan: FaultPlan; faults: Fault[] }> {
    const plan = parsePlan(text, source);
    const label = `plan:${plan.name}`;
    const added: Fault[] = [];
    const planned = plan.faults.map((f, i) => ({ ...f, label, seed: f.seed ?? deriveSeed(plan.seed, i) }));
    // Validate everything before changing anything.
    for (const [i, f] of planned.entries()) {
      try {
        this.checkTarget(parseFaultSpec(f, () => 0));
      } catch (err) {
        throw new FaultSpecError(`${source}: faults[${i}]: ${(err as Error).message}`);
      }
    }
    for (const h of [...this.faults.values()]) if (h.fault.label === label) this.remove(h.fault.id);
    for (const f of planned) added.push(await this.add(f));
    return { plan, faults: added };
  }

  // ---- flags ----

  setFlag(name: string, on: boolean): string[] {
    parseFlagName(name);
    const was = this.flags.has(name);
    if (on) this.flags.add(name);
    else this.flags.delete(name);
    this.log?.info({ flag: name, on }, `fault flag ${name} ${on ? 'set' : 'cleared'}`);
    if (on && !was) for (const h of [...this.faults.values()]) if (h.fault.flag === name && h.fault.action.kind === 'link-down') this.linkWentDown(h, 'flag');
    return this.listFlags();
  }

  listFlags(): string[] {
    return [...this.flags].sort();
  }

  // ---- events ----

  /** Events after `since` (a seq), oldest first. */
  events(since = 0): FaultEvent[] {
    const first = this.history.findIndex((e) => e.seq > since);
    return first < 0 ? [] : this.history.slice(first);
  }

  /** How many times each fault kind was injected since the array started; kinds never injected are absent. */
  injections(): ReadonlyMap<string, number> {
    return this.injected;
  }

  /** An event the array reports itself in the same stream (a power cut: faultId "power-cut"). */
  note(kind: string, target: string, detail: string): void {
    this.emit(kind, kind, target, kind, detail, {}, detail);
  }

  onEvent(listener: (e: FaultEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---- checks the rest of the array calls ----

  /** The point to install on a volume (a new or renamed volume); undefined when none. */
  pointFor(volume: string): FaultPoint | undefined {
    return this.points.get(volume);
  }

  /** Throws BlockDeviceError when a client may not connect to the export now. */
  checkConnect(exportName: string, client: ClientInfo): void {
    if (this.faults.size === 0) return;
    const r = this.refused.get(exportName);
    if (r !== undefined) {
      const left = r.until - this.now();
      if (left > 0) {
        this.emit(r.faultId, 'disconnect', `export:${exportName}`, 'connect', `refused ${client.protocol} connection from ${client.remoteAddress}`, {
          connection: client.connectionId,
        });
        throw new BlockDeviceError('ESHUTDOWN', `export ${exportName} refuses connections for ${Math.ceil(left / 1000)} s more (fault ${r.faultId})`);
      }
      this.refused.delete(exportName);
    }
    for (const h of this.faults.values()) {
      const t = h.fault.target;
      if ((t.kind !== 'volume' && t.kind !== 'export') || t.name !== exportName || h.fault.action.kind !== 'error') continue;
      if (!h.fault.ops.includes('connect') || !this.flagOk(h) || !h.trigger.fires()) continue;
      this.emit(h.fault.id, 'error', formatTarget(t), 'connect', `refused ${client.protocol} connection from ${client.remoteAddress}`, {
        connection: client.connectionId,
      });
      throw new BlockDeviceError(h.fault.action.errno, `connection to ${exportName} refused by fault ${h.fault.id}`, { sense: h.fault.action.sense });
    }
  }

  /**
   * Throws BlockDeviceError when a copy-error fault fires on the session's I/O (by session, or
   * by the volume it reads or writes), or when it reads a bad block of the volume.
   */
  copyFault(sessionId: string, op: 'read' | 'write', volume: string, offset: number, length: number, blockSize: number): void {
    if (this.faults.size === 0) return;
    for (const h of this.faults.values()) {
      const t = h.fault.target;
      if (t.kind === 'volume' && t.name === volume && h.fault.action.kind === 'bad-blocks') {
        this.onMedium(h, op, volume, offset, length, blockSize);
        continue;
      }
      const mine = t.kind === 'session' ? t.id === sessionId : t.kind === 'volume' && t.name === volume && h.fault.action.kind === 'copy-error';
      if (!mine || !h.fault.ops.includes(op) || !this.flagOk(h) || !h.trigger.fires()) continue;
      this.emit(h.fault.id, 'copy-error', formatTarget(t), op, `copy ${op} of volume ${volume} failed`, { offset, length });
      throw new BlockDeviceError('EIO', `injected copy ${op} error on volume ${volume} at byte ${offset} (fault ${h.fault.id})`);
    }
  }

  /** A bad-blocks fault meets the copy engine's own I/O: its reads fail on a bad block, its writes heal them (badBlocks.ts). */
  private onMedium(h: Held, op: 'read' | 'write', volume: string, offset: number, length: number, blockSize: number): void {
    if (!h.fault.ops.includes(op)) return;
    const req: IoRequest = { op, offset, length, volume, blockSize, client: undefined, data: undefined, into: undefined, fua: false, skip: false };
    h.injector.observe?.(req);
    if (!this.flagOk(h) || h.injector.match?.(req) !== true) return;
    this.fired({ fault: h, req });
    void h.injector.before(req, { connection: undefined }); // throws the medium error
  }

  /** Throws an Error when a tape-error fault fires on a read or write of the cartridge. */
  tapeFault(label: string, op: 'read' | 'write'): void {
    if (this.faults.size === 0) return;
    for (const h of this.faults.values()) {
      const t = h.fault.target;
      if (t.kind !== 'tape' || t.label !== label || !h.fault.ops.includes(op) || !this.flagOk(h) || !h.trigger.fires()) continue;
      this.emit(h.fault.id, 'tape-error', formatTarget(t), op, `tape ${op} of ${label} failed`);
      throw new StatusError('DATA_LOSS', `tape ${op} error on cartridge ${label} (injected by fault ${h.fault.id}); remove the fault or use another cartridge`);
    }
  }

  /** Delays or fails an API call when an api fault fires for the RPC. */
  async apiFault(method: string): Promise<void> {
    if (this.faults.size === 0) return;
    for (const h of this.faults.values()) {
      const a = h.fault.action;
      if (h.fault.target.kind !== 'api' || !(h.fault.ops.includes('*') || h.fault.ops.includes(method))) continue;
      // Fault management itself is never faulted: an operator must always be able to remove one.
      if (FAULT_RPCS.has(method) || !this.flagOk(h) || !h.trigger.fires()) continue;
      if (a.kind === 'api-delay') {
        this.emit(h.fault.id, a.kind, 'api', method, `delayed ${a.ms} ms`);
        await sleep(a.ms, this.wakersOf(h));
      } else if (a.kind === 'api-error') {
        this.emit(h.fault.id, a.kind, 'api', method, `failed with ${a.code}`);
        throw new StatusError(
          a.code as never,
          `${method} failed: injected ${a.code} (fault ${h.fault.id}); remove it with 'arraylab fault remove ${h.fault.id}'`,
        );
      }
    }
  }

  // ---- links to remote arrays (LinkFaultHook) ----

  linkSend(remote: string, op: LinkOp, bytes: number): Promise<void> | undefined {
    if (this.faults.size === 0) return undefined;
    const list = this.links.get(remote);
    if (list === undefined) return undefined;
    // A down link fails every transfer at once, before any delay or cap added before it.
    for (const h of list) {
      if (h.fault.action.kind !== 'link-down' || !this.flagOk(h) || !h.trigger.fires()) continue;
      this.emit(h.fault.id, 'link-down', `remote:${remote}`, op, `${op} of ${bytes} bytes failed: the link is down`, { length: bytes });
      return Promise.reject(new LinkFaultError(remote, 'link-down', h.fault.id));
    }
    let wait: Promise<void> | undefined;
    for (const h of list) {
      const a = h.fault.action;
      if (a.kind === 'link-down' || !h.fault.ops.includes(op) || !this.flagOk(h) || !h.trigger.fires()) continue;
      const target = `remote:${remote}`;
      if (a.kind === 'link-loss') {
        this.emit(h.fault.id, a.kind, target, op, `${op} of ${bytes} bytes lost: the link drops its connection`, { length: bytes });
        const err = new LinkFaultError(remote, 'link-loss', h.fault.id);
        return wait === undefined ? Promise.reject(err) : wait.then(() => Promise.reject(err));
      }
      if (a.kind === 'link-delay') {
        const ms = delayMs(a, h.rng!);
        this.emit(h.fault.id, a.kind, target, op, `delayed ${Math.round(ms * 10) / 10} ms`, { length: bytes });
        const wakers = this.wakersOf(h);
        wait = wait === undefined ? sleep(ms, wakers) : wait.then(() => (h.removed ? undefined : sleep(ms, wakers)));
      } else if (a.kind === 'link-rate') {
        this.emit(h.fault.id, a.kind, target, op, `${bytes} bytes through ${a.mibs} MiB/s`, { length: bytes });
        const bucket = h.injector as RateInjector;
        wait = wait === undefined ? bucket.take(bytes) : wait.then(() => bucket.take(bytes));
      }
    }
    return wait;
  }

  linkDown(remote: string): boolean {
    if (this.faults.size === 0) return false;
    const list = this.links.get(remote);
    if (list === undefined) return false;
    for (const h of list) if (h.fault.action.kind === 'link-down' && this.flagOk(h) && h.trigger.openNow()) return true;
    return false;
  }

  onLinkDown(remote: string, drop: (err: LinkFaultError) => void): () => void {
    let set = this.linkListeners.get(remote);
    if (set === undefined) {
      set = new Set();
      this.linkListeners.set(remote, set);
    }
    set.add(drop);
    return () => {
      const s = this.linkListeners.get(remote);
      if (s === undefined) return;
      s.delete(drop);
      if (s.size === 0) this.linkListeners.delete(remote);
    };
  }

  /** Ends every fault's waits (array shutdown). */
  close(): void {
    for (const h of this.faults.values()) {
      h.injector.dispose?.();
      if (h.timer !== undefined) clearTimeout(h.timer);
    }
  }

  // ---- internals ----

  private readonly apiWakers = new Map<string, Set<() => void>>();

  private wakersOf(h: Held): Set<() => void> {
    let w = this.apiWakers.get(h.fault.id);
    if (w === undefined) {
      w = new Set();
      this.apiWakers.set(h.fault.id, w);
    }
    return w;
  }

  private flagOk(h: Held): boolean {
    return h.fault.flag === undefined || this.flags.has(h.fault.flag);
  }

  private checkTarget(spec: FaultSpec): void {
    const t = spec.target;
    const tg = this.opts.targets;
    const missing = (what: string, list: string): never => {
      throw new StatusError('NOT_FOUND', `cannot add the ${spec.action.kind} fault: there is no ${what}; '${list}' shows them`);
    };
    if ((t.kind === 'volume' || t.kind === 'export') && !tg.volumeExists(t.name)) missing(`volume ${t.name}`, 'arraylab volume list');
    if (t.kind === 'session' && !tg.sessionExists(t.id)) missing(`copy session ${t.id}`, 'arraylab copy list');
    if (t.kind === 'tape' && !tg.tapeExists(t.label)) missing(`cartridge ${t.label}`, 'arraylab tape list');
    if (t.kind === 'remote' && this.remoteExists !== undefined && !this.remoteExists(t.name)) missing(`remote array ${t.name}`, 'arraylab remote list');
  }

  private install(fault: Fault): Held {
    const held: Held = {
      fault,
      trigger: new Trigger(fault.trigger, fault.seed, this.now),
      injector: this.injectorFor(fault),
      opMask: opMaskOf(fault.ops),
      removed: false,
    };
    const a = fault.action;
    if (a.kind === 'link-delay') held.rng = new SeededRandom(deriveSeed(fault.seed, 1));
    if (a.kind === 'link-down' && fault.trigger.kind === 'window' && fault.trigger.startMs > 0) {
      // The links learn when the window opens, not at their next transfer (+1: a timer may run a ms early).
      held.timer = setTimeout(() => {
        held.timer = undefined;
        if (!held.removed) this.linkWentDown(held, 'window');
      }, fault.trigger.startMs + 1);
      held.timer.unref();
    }
    this.faults.set(fault.id, held);
    this.rebuildPoints();
    return held;
  }

  private uninstall(held: Held): void {
    held.removed = true;
    if (held.timer !== undefined) clearTimeout(held.timer);
    this.faults.delete(held.fault.id);
    this.rebuildPoints();
    held.injector.dispose?.();
    const w = this.apiWakers.get(held.fault.id);
    if (w !== undefined) for (const wake of [...w]) wake();
    this.apiWakers.delete(held.fault.id);
    for (const [name, r] of this.refused) if (r.faultId === held.fault.id) this.refused.delete(name);
  }

  private injectorFor(f: Fault): Injector {
    const a = f.action;
    switch (a.kind) {
      case 'error':
        return errorInjector(f.id, a);
      case 'bad-blocks':
        return badBlocksInjector(f.id, a);
      case 'delay':
        return delayInjector(a, deriveSeed(f.seed, 1));
      case 'rate':
        return rateInjector(a);
      case 'link-rate':
        // The rate fault's bucket, shared by every transfer on the link; setRate works alike.
        return rateInjector({ kind: 'rate', mibs: a.mibs, iops: undefined, perConnection: false });
      case 'pause':
        return pauseInjector();
      case 'corrupt':
        return corruptInjector(a, deriveSeed(f.seed, 2));
      case 'lying-flush':
        return lyingFlushInjector();
      case 'disconnect':
        return disconnectInjector(f.id);
      case 'reset':
        return resetInjector(a);
      default:
        // Faults the engine checks itself (copy, tape, api): no block injector.
        return { before: () => undefined };
    }
  }

  /** Faults with no trigger that act on connections act at once, on every connection. */
  private applyAtOnce(h: Held): void {
    const a = h.fault.action;
    const t = h.fault.target;
    if ((a.kind !== 'disconnect' && a.kind !== 'reset') || (t.kind !== 'export' && t.kind !== 'volume')) return;
    if (a.kind === 'disconnect' && a.refuseMs > 0) this.refused.set(t.name, { until: this.now() + a.refuseMs, faultId: h.fault.id });
    const event: HandleEvent =
      a.kind === 'disconnect' ? { kind: 'disconnect', reason: `fault ${h.fault.id} dropped the connection` } : { kind: 'reset', scope: a.scope };
    const n = this.opts.targets.signalExport(t.name, event);
    h.trigger.fires();
    this.emit(
      h.fault.id,
      a.kind,
      formatTarget(t),
      'add',
      `${a.kind === 'disconnect' ? 'dropped' : `${a.scope} reset on`} ${n} connection${n === 1 ? '' : 's'}`,
    );
  }

  /**
   * A link-down fault began to apply (added, its flag set, its window opened): the links to
   * the remote drop their connection now. Counted as a firing, as a disconnect at once is.
   */
  private linkWentDown(h: Held, why: 'add' | 'flag' | 'window'): void {
    const t = h.fault.target;
    if (t.kind !== 'remote' || !this.flagOk(h) || !h.trigger.openNow()) return;
    h.trigger.fires();
    const drops = [...(this.linkListeners.get(t.name) ?? [])];
    const when = why === 'add' ? 'added' : why === 'flag' ? `flag ${h.fault.flag ?? ''} set` : 'window opened';
    this.emit(
      h.fault.id,
      'link-down',
      `remote:${t.name}`,
      why,
      `link down (${when}): ${drops.length === 0 ? 'no link open to drop' : `${drops.length} link${drops.length === 1 ? '' : 's'} told to drop the connection`}`,
    );
    const err = new LinkFaultError(t.name, 'link-down', h.fault.id);
    for (const drop of drops) {
      try {
        drop(err);
      } catch (e) {
        // A link's failure to drop is its own bug: the fault stands, and later transfers still fail.
        this.log?.warn({ faultId: h.fault.id, remote: t.name, err: (e as Error).message }, `link to remote ${t.name} failed to drop its connection`);
      }
    }
  }

  /** Volumes' fault points follow the faults: a volume with no block fault has none. */
  private rebuildPoints(): void {
    this.rebuildLinks();
    const byVolume = new Map<string, Held[]>();
    for (const h of this.faults.values()) {
      const t = h.fault.target;
      // A copy-error fault on a volume acts on the copy engine's I/O only (copyFault).
      if ((t.kind !== 'volume' && t.kind !== 'export') || h.opMask === 0 || h.fault.action.kind === 'copy-error') continue;
      const list = byVolume.get(t.name);
      if (list === undefined) byVolume.set(t.name, [h]);
      else list.push(h);
    }
    for (const [name, point] of this.points) {
      if (!byVolume.has(name)) {
        this.points.delete(name);
        this.opts.targets.setFaultPoint(name, undefined);
        point.faults = [];
      }
    }
    for (const [name, list] of byVolume) {
      let point = this.points.get(name);
      if (point === undefined) {
        point = new FaultPoint(
          name,
          (flag) => this.flags.has(flag),
          (e) => this.fired(e),
        );
        this.points.set(name, point);
        this.opts.targets.setFaultPoint(name, point);
      }
      point.faults = list;
    }
  }

  /** Link faults by remote: a remote with none is absent, so linkSend is one lookup. */
  private rebuildLinks(): void {
    this.links.clear();
    for (const h of this.faults.values()) {
      const t = h.fault.target;
      if (t.kind !== 'remote') continue;
      const list = this.links.get(t.name);
      if (list === undefined) this.links.set(t.name, [h]);
      else list.push(h);
    }
  }

  private pointOf(f: Fault): FaultPoint | undefined {
    const t = f.target;
    return t.kind === 'volume' || t.kind === 'export' ? this.points.get(t.name) : undefined;
  }

  private fired(e: FiredEvent): void {
    const f = e.fault.fault;
    const r = e.req;
    this.emit(f.id, f.action.kind, formatTarget(f.target), r.op, describeFault(f), {
      offset: r.op === 'flush' ? undefined : r.offset,
      length: r.op === 'flush' ? undefined : r.length,
      connection: r.client?.connectionId,
    });
  }

  private emit(
    faultId: string,
    kind: string,
    target: string,
    op: string,
    detail: string,
    where: { offset?: number | undefined; length?: number | undefined; connection?: string | undefined } = {},
    /** The log line, when it is not a fault firing (an event the array notes itself). */
    message?: string,
  ): void {
    // Every injection passes here, once; a note (message given: a power cut) is not one.
    if (message === undefined) this.injected.set(kind, (this.injected.get(kind) ?? 0) + 1);
    const e: FaultEvent = { seq: ++this.seq, at: new Date(this.now()).toISOString(), faultId, kind, target, op, ...where, detail };
    this.history.push(e);
    if (this.history.length > this.historySize) this.history.splice(0, this.history.length - this.historySize);
    // Shaping faults fire on every operation: their events stay out of the info log.
    const quiet = kind === 'delay' || kind === 'rate' || kind === 'pause' || kind === 'link-delay' || kind === 'link-rate';
    if (this.log !== undefined) {
      const line = { faultId, kind, target, op, offset: e.offset, length: e.length, connection: e.connection, seq: e.seq };
      if (quiet) this.log.debug(line, `fault ${faultId} fired: ${op}`);
      else this.log.info(line, message ?? `fault ${faultId} fired: ${kind} on ${op} of ${target}`);
    }
    for (const l of [...this.listeners]) l(e);
  }
}

/** RPCs of fault management: never faulted themselves. */
const FAULT_RPCS = new Set([
  'AddFault',
  'ListFaults',
  'GetFault',
  'RemoveFault',
  'ClearFaults',
  'SetFaultRate',
  'ApplyFaultPlan',
  'SetFaultFlag',
  'ListFaultFlags',
  'WatchFaultEvents',
  'PowerCut',
]);

/** Parses a plan file (YAML): `name`, `seed`, and `faults:` as in the lab file. */
export function parsePlan(text: string, source: string): FaultPlan {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new FaultSpecError(`${source}: not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const example = 'name: flaky-reads\nseed: 42\nfaults:\n  - kind: error\n    target: volume:vol1\n    ops: [read]\n    probability: 0.01';
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc))
    throw new FaultSpecError(`${source}: a plan is a mapping with name, seed and faults; for example:\n${example}`);
  const d = doc as Record<string, unknown>;
  for (const k of Object.keys(d))
    if (!['name', 'seed', 'faults'].includes(k)) throw new FaultSpecError(`${source}: unknown key '${k}'; a plan has name, seed and faults`);
  const name = d.name ?? 'plan';
  if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name))
    throw new FaultSpecError(`${source}: name must be 1 to 64 letters, digits, '_', '.' or '-'`);
  const seed = d.seed ?? 0;
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0 || seed > 2 ** 32 - 1)
    throw new FaultSpecError(`${source}: seed must be a whole number from 0 to 4294967295`);
  if (!Array.isArray(d.faults) || d.faults.length === 0)
    throw new FaultSpecError(`${source}: faults must be a list of at least one fault; for example:\n${example}`);
  if (d.faults.length > 1000) throw new FaultSpecError(`${source}: at most 1000 faults per plan, not ${d.faults.length}`);
  const faults = d.faults.map((f, i) => {
    if (f === null || typeof f !== 'object' || Array.isArray(f)) throw new FaultSpecError(`${source}: faults[${i}] must be a mapping (kind, target, ...)`);
    return toLoose(f as Record<string, unknown>);
  });
  return { name, seed, faults };
}

/** YAML keys are written kebab-case (jitter-ms) or camelCase (jitterMs); both are accepted. */
export function toLoose(o: Record<string, unknown>): LooseFaultSpec {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o))
    out[k.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase())] = typeof v === 'number' && k === 'lba' ? String(v) : v;
  return out as LooseFaultSpec;
}
