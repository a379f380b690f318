/**
 * Model-based randomised test of the copy engine (seeded; a failing seed reproduces).
 *
 * Volumes are real Volumes over SimStores (volatile until flush; a crash keeps any prefix
 * of each block's unflushed writes), 512-byte blocks, 2 KiB copy units (4 blocks, so most
 * writes are partial-unit), 62-block volumes (the last unit is short), one larger and one
 * smaller volume, and three capacity-limited snap volumes (ENOSPC happens).
 *
 * Each step is one random action: host writes / write-zeroes / trims / flushes on any
 * volume (refused ones must be refused with the right code), session starts of every type
 * (refusals predicted by the model), EC suspend / resume / split / rejoin / reverse /
 * restore, cancel (with and without force), background copy steps, consistency-group
 * starts and suspends, bursts of concurrent I/O (with a copy step, a racing flush and reads
 * of point-in-time images inside), and crash-restart points: between steps, in the middle of
 * a burst, and in the middle of a session start (the journal's commits take a random number
 * of microtasks, so crashes land inside them too).
 *
 * The model knows nothing of units, bitmaps or layers: each volume is an array of block
 * tags as hosts must see them, plus the set of values each block may hold after a crash
 * (the last flushed one and any written since). After every step every volume is read
 * through its client device and compared with the model.
 *
 *   SEED=n  run only seed n (prints the action log on failure)    SEEDS, STEPS  sizes
 */
import { describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../emulator/block/BlockDevice.js';
import type { Volume } from '../../emulator/array/Volume.js';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import type { CopyType, SessionInfo } from '../../emulator/copy/CopySession.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { client, makeVolume, rng, SimStore, tagged, tagsOf } from './support.js';

const BLOCK = 512;
const UNIT = 2048;
const SIZES: Record<string, number> = { A: 62, B: 62, C: 62, D: 70, E: 40, S1: 62, S2: 62, S3: 62 };
const DATA = ['A', 'B', 'C', 'D', 'E'];
const SNAPS = ['S1', 'S2', 'S3'];
const SNAP_CAPACITY = 24; // blocks: six units of before-images
const UNKNOWN = -1;

interface MVol {
  name: string;
  blocks: number;
  val: number[];
  /** Last durable value; UNKNOWN = anything. */
  flushed: number[];
  pending: Map<number, number[]>;
}

interface MSess {
  id: string;
  type: CopyType;
  state: string;
  src: string;
  dst: string;
  gen?: number;
}

type Access = 'ok' | 'EACCES' | 'EPERM' | 'EIO';

class Failure extends Error {}

class Sim {
  readonly rand: () => number;
  readonly storeRand: () => number;
  readonly log: string[] = [];
  private tag = 1;
  private ids = 0;
  stores = new Map<string, SimStore>();
  vols = new Map<string, Volume>();
  devs = new Map<string, BlockDevice>();
  engine!: CopyEngine;
  journal: MemoryJournal;
  readonly m = new Map<string, MVol>();
  readonly sessions = new Map<string, MSess>();
  /** OPC sessions that completed: after a crash they may come back (completion not yet durable). */
  private readonly completed = new Map<string, MSess>();
  crashes = 0;

  constructor(readonly seed: number) {
    this.rand = rng(seed);
    this.storeRand = rng(seed ^ 0x5eed);
    const jr = rng(seed ^ 0x10a1);
    this.journal = new MemoryJournal(undefined, async () => {
      for (let n = Math.floor(jr() * 6); n >= 0; n--) await Promise.resolve();
    });
    for (const [name, blocks] of Object.entries(SIZES)) {
      this.stores.set(name, new SimStore(blocks * BLOCK, this.storeRand, SNAPS.includes(name) ? SNAP_CAPACITY : Number.POSITIVE_INFINITY, undefined, BLOCK));
      this.m.set(name, { name, blocks, val: new Array(blocks).fill(0), flushed: new Array(blocks).fill(0), pending: new Map() });
    }
  }

  // ---- helpers ----

  fail(msg: string): never {
    throw new Failure(msg);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.rand() * xs.length)]!;
  }
  int(n: number): number {
    return Math.floor(this.rand() * n);
  }
  mv(name: string): MVol {
    return this.m.get(name)!;
  }

  async boot(recover: boolean): Promise<void> {
    this.vols = new Map();
    this.devs = new Map();
    this.engine = new CopyEngine({ journal: this.journal, clock: 'manual', defaultUnitSize: UNIT, newId: () => `s${++this.ids}` });
    let i = 0;
    for (const [name, store] of this.stores) {
      const v = makeVolume(name, store, i++);
      this.vols.set(name, v);
      this.engine.addVolume(v);
      this.devs.set(name, client(v));
    }
    if (recover) await this.engine.recover();
  }

  access(vol: string): { read: Access; write: Access } {
    for (const s of this.sessions.values()) {
      if (s.dst !== vol) continue;
      if (s.type === 'ec') {
        if (s.state === 'copying') return { read: 'EACCES', write: 'EACCES' };
        if (s.state === 'equivalent') return { read: 'ok', write: 'EPERM' };
      }
      if (s.type === 'snapopcplus') return { read: s.state === 'snap' ? 'ok' : 'EIO', write: 'EPERM' };
    }
    return { read: 'ok', write: 'ok' };
  }

  /** Destinations that mirror writes to vol. */
  mirrorsOf(vol: string, block = 0): string[] {
    return [...this.sessions.values()]
      .filter((s) => s.type === 'ec' && s.src === vol && (s.state === 'copying' || s.state === 'equivalent'))
      .filter((s) => block < Math.min(SIZES[s.src]!, SIZES[s.dst]!)) // the pair covers the smaller volume
      .map((s) => s.dst);
  }

  isMirrorDest(vol: string): boolean {
    return [...this.sessions.values()].some((s) => s.type === 'ec' && s.dst === vol && (s.state === 'copying' || s.state === 'equivalent'));
  }

  setVal(vol: string, b: number, tag: number): void {
    const v = this.mv(vol);
    v.val[b] = tag;
    let p = v.pending.get(b);
    if (p === undefined) v.pending.set(b, (p = []));
    p.push(tag);
  }

  markFlushed(vol: string): void {
    const v = this.mv(vol);
    v.flushed = [...v.val];
    v.pending.clear();
  }

  /** dst := src, as a fresh durable image. */
  copyImage(src: string, dst: string): void {
    const s = this.mv(src);
    const d = this.mv(dst);
    // Blocks past the source's end are not part of the copy: they keep their own history.
    for (let b = 0; b < Math.min(d.blocks, s.blocks); b++) {
      d.val[b] = s.val[b]!;
      d.flushed[b] = s.val[b]!;
      d.pending.delete(b);
    }
  }

  unknown(vol: string): void {
    const v = this.mv(vol);
    v.val.fill(UNKNOWN);
    v.flushed.fill(UNKNOWN);
    v.pending.clear();
  }

  // ---- actions ----

  /** Issues a host write/zero/trim; returns the promise that checks its outcome. */
  hostMutate(vol: string, b: number, n: number, kind: 'write' | 'zero' | 'trim', allowAlso: Access[] = []): Promise<void> {
    const dev = this.devs.get(vol)!;
    const tag = kind === 'write' ? this.tag++ : 0;
    const acc = this.access(vol).write;
    this.log.push(`${kind} ${vol}[${b}+${n}]${tag ? `=${tag}` : ''} expect ${acc}`);
    const p = kind === 'write' ? dev.write(b * BLOCK, tagged(tag, n, BLOCK)) : kind === 'zero' ? dev.writeZeroes(b * BLOCK, n * BLOCK) : dev.trim(b * BLOCK, n * BLOCK);
    if (acc === 'ok') {
      for (let k = b; k < b + n; k++) {
        this.setVal(vol, k, tag);
        for (const d of this.mirrorsOf(vol, k)) this.setVal(d, k, tag);
      }
    }
    return p.then(
      () => {
        if (acc !== 'ok') this.fail(`${kind} ${vol}[${b}+${n}] succeeded; expected ${acc}`);
      },
      (e: { code?: string; message?: string }) => {
        if (e.code === 'ESHUTDOWN' || /after a crash/.test(String(e.message))) return; // killed by a crash
        if (e.code !== acc && !allowAlso.includes(e.code as Access)) this.fail(`${kind} ${vol}[${b}+${n}] failed ${e.code} (${e.message}); expected ${acc}`);
      },
    );
  }

  /** A volume for a host write: data volumes, and snap volumes only while they are in a session (EPERM). */
  writeTarget(): string {
    const vol = this.pick([...DATA, ...DATA, ...SNAPS]);
    if (SNAPS.includes(vol) && ![...this.sessions.values()].some((s) => s.dst === vol)) return this.pick(DATA);
    return vol;
  }

  async write(): Promise<void> {
    const vol = this.writeTarget();
    const size = this.mv(vol).blocks;
    const n = 1 + this.int(6);
    const b = this.int(size - n + 1);
    const r = this.rand();
    await this.hostMutate(vol, b, n, r < 0.8 ? 'write' : r < 0.9 ? 'zero' : 'trim');
  }

  async flush(): Promise<void> {
    const vol = this.pick(DATA);
    this.log.push(`flush ${vol}`);
    await this.devs.get(vol)!.flush();
    this.markFlushed(vol);
    for (const d of this.mirrorsOf(vol)) {
      const dv = this.mv(d);
      for (let b = 0; b < Math.min(SIZES[vol]!, dv.blocks); b++) {
        dv.flushed[b] = dv.val[b]!;
        dv.pending.delete(b);
      }
    }
  }

  predictStart(type: CopyType, src: string, dst: string): 'ok' | 'restart' | 'refuse' {
    const all = [...this.sessions.values()];
    if (type === 'quickopc') {
      const q = all.find((s) => s.type === 'quickopc' && s.src === src && s.dst === dst);
      if (q) return q.state === 'tracking' ? 'restart' : 'refuse';
    }
    if (SIZES[dst]! < SIZES[src]!) return 'refuse';
    if (all.some((s) => s.src === dst || s.dst === dst)) return 'refuse';
    if (all.some((s) => s.dst === src)) return 'refuse';
    if (type === 'ec' && all.some((s) => s.type === 'ec' && s.src === src)) return 'refuse';
    return 'ok';
  }

  applyStart(info: SessionInfo, type: CopyType, src: string, dst: string): void {
    this.markFlushed(src); // J4
    this.copyImage(src, dst);
    const existing = this.sessions.get(info.id);
    if (existing) existing.state = 'copying';
    else this.sessions.set(info.id, { id: info.id, type, state: info.state, src, dst, gen: info.generation });
  }

  async start(): Promise<void> {
    const type = this.pick<CopyType>(['opc', 'quickopc', 'quickopc', 'ec', 'ec', 'snapopcplus', 'snapopcplus']);
    const src = this.pick(DATA);
    const dst = type === 'snapopcplus' ? this.pick(SNAPS) : this.pick(DATA.filter((d) => d !== src));
    const expect = this.predictStart(type, src, dst);
    const rate = this.rand() < 0.8 ? Number.POSITIVE_INFINITY : 0;
    this.log.push(`start ${type} ${src}->${dst} expect ${expect}`);
    let info: SessionInfo;
    try {
      info =
        type === 'opc'
          ? await this.engine.startOpc(src, dst, { rate })
          : type === 'quickopc'
            ? await this.engine.startQuickOpc(src, dst, { rate })
            : type === 'ec'
              ? await this.engine.startEc(src, dst, { rate })
              : await this.engine.startSnapOpcPlus(src, dst);
    } catch (e) {
      if (expect !== 'refuse') this.fail(`start ${type} ${src}->${dst} refused: ${(e as Error).message}`);
      return;
    }
    if (expect === 'refuse') this.fail(`start ${type} ${src}->${dst} succeeded; expected a refusal`);
    this.applyStart(info, type, src, dst);
  }

  /** A start that a crash interrupts: afterwards the session exists (and is exact) or does not. */
  async startThenCrash(): Promise<void> {
    const type = this.pick<CopyType>(['opc', 'quickopc', 'ec', 'snapopcplus']);
    const src = this.pick(DATA);
    const dst = type === 'snapopcplus' ? this.pick(SNAPS) : this.pick(DATA.filter((d) => d !== src));
    if (this.predictStart(type, src, dst) !== 'ok') return;
    const ticks = this.int(16);
    this.log.push(`start ${type} ${src}->${dst}, crash after ${ticks} ticks`);
    const e = this.engine;
    const p = (type === 'opc' ? e.startOpc(src, dst) : type === 'quickopc' ? e.startQuickOpc(src, dst) : type === 'ec' ? e.startEc(src, dst) : e.startSnapOpcPlus(src, dst)).catch(() => undefined);
    for (let i = 0; i < ticks; i++) await Promise.resolve();
    const srcVal = [...this.mv(src).val];
    if (type === 'snapopcplus') this.unknown(dst); // starting reclaims the snap volume's space
    this.pendingStart = { type, src, dst, srcVal };
    await this.crash();
    this.pendingStart = undefined;
    await p;
  }

  private pendingStart: { type: CopyType; src: string; dst: string; srcVal: number[] } | undefined;

  async group(): Promise<void> {
    const ecs = [...this.sessions.values()].filter((s) => s.type === 'ec');
    if (this.rand() < 0.4 && ecs.length > 0) {
      const picks = [...new Set([this.pick(ecs), this.pick(ecs)])];
      const op = this.pick(['suspend', 'split'] as const);
      const ok = picks.every((s) => s.state === 'equivalent' || (op === 'split' && s.state === 'suspended'));
      this.log.push(`group ${op} ${picks.map((s) => s.id).join(',')} expect ${ok}`);
      try {
        await this.engine.group(picks.map((s) => ({ op, id: s.id })));
      } catch (e) {
        if (ok) this.fail(`group ${op} refused: ${(e as Error).message}`);
        return;
      }
      if (!ok) this.fail(`group ${op} succeeded; expected a refusal`);
      for (const s of picks) this.freeze(s, op === 'suspend' ? 'suspended' : 'split');
      return;
    }
    const [a, b, c, d] = [...DATA].sort(() => this.rand() - 0.5) as [string, string, string, string];
    const t1 = this.pick<CopyType>(['opc', 'ec']);
    const t2 = this.pick<CopyType>(['opc', 'ec']);
    const ok = this.predictStart(t1, a, b) === 'ok' && this.predictStart(t2, c, d) === 'ok';
    this.log.push(`group start ${t1} ${a}->${b}, ${t2} ${c}->${d} expect ${ok}`);
    let infos: SessionInfo[];
    try {
      infos = await this.engine.group([
        { op: t1 as 'opc', source: a, destination: b },
        { op: t2 as 'opc', source: c, destination: d },
      ]);
    } catch (e) {
      if (ok) this.fail(`group start refused: ${(e as Error).message}`);
      return;
    }
    if (!ok) this.fail('group start succeeded; expected a refusal');
    this.applyStart(infos[0]!, t1, a, b);
    this.applyStart(infos[1]!, t2, c, d);
  }

  freeze(s: MSess, to: 'suspended' | 'split'): void {
    if (s.state === 'equivalent') {
      this.markFlushed(s.src);
      this.markFlushed(s.dst);
    }
    s.state = to;
  }

  async ecOp(): Promise<void> {
    const ecs = [...this.sessions.values()].filter((s) => s.type === 'ec');
    if (ecs.length === 0) return this.start();
    const s = this.pick(ecs);
    const op = this.pick(['suspend', 'split', 'resume', 'rejoin', 'reverse', 'restore'] as const);
    const alone = () => ![...this.sessions.values()].some((o) => o !== s && (o.src === s.src || o.dst === s.src || o.src === s.dst || o.dst === s.dst));
    const frozen = s.state === 'suspended' || s.state === 'split';
    const ok =
      op === 'suspend'
        ? s.state === 'equivalent'
        : op === 'split'
          ? s.state === 'equivalent' || s.state === 'suspended'
          : op === 'resume'
            ? s.state === 'suspended'
            : op === 'rejoin'
              ? s.state === 'split'
              : frozen && alone();
    this.log.push(`${op} ${s.id} (${s.state} ${s.src}->${s.dst}) expect ${ok}`);
    try {
      const e = this.engine;
      await (op === 'suspend' ? e.suspend(s.id) : op === 'split' ? e.split(s.id) : op === 'resume' ? e.resume(s.id) : op === 'rejoin' ? e.rejoin(s.id) : op === 'reverse' ? e.reverse(s.id) : e.restoreFromClone(s.id));
    } catch (err) {
      if (ok) this.fail(`${op} ${s.id} refused: ${(err as Error).message}`);
      return;
    }
    if (!ok) this.fail(`${op} ${s.id} succeeded in state ${s.state}; expected a refusal`);
    if (op === 'suspend' || op === 'split') this.freeze(s, op === 'suspend' ? 'suspended' : 'split');
    if (op === 'reverse' || op === 'restore') [s.src, s.dst] = [s.dst, s.src];
    if (op === 'resume' || op === 'rejoin' || op === 'restore') {
      s.state = 'copying';
      this.copyImage(s.src, s.dst);
    }
  }

  async cancel(): Promise<void> {
    const all = [...this.sessions.values()];
    if (all.length === 0) return;
    const s = this.pick(all);
    const force = this.rand() < 0.5;
    const older = all.filter((o) => o.type === 'snapopcplus' && s.type === 'snapopcplus' && o.src === s.src && o.gen! < s.gen!);
    const ok = older.length === 0 || force;
    this.log.push(`cancel ${s.id} (${s.type} ${s.state}) force=${force} expect ${ok}`);
    try {
      await this.engine.cancel(s.id, { force });
    } catch (e) {
      if (ok) this.fail(`cancel ${s.id} refused: ${(e as Error).message}`);
      return;
    }
    if (!ok) this.fail(`cancel ${s.id} succeeded; expected a refusal (older generations)`);
    for (const v of [s, ...older]) {
      this.sessions.delete(v.id);
      if (v.type === 'snapopcplus' || v.state === 'copying') this.unknown(v.dst);
    }
  }

  async step(): Promise<void> {
    const n = 1 + this.int(4);
    this.log.push(`step ${n}`);
    await this.engine.step(n);
  }

  async setRate(): Promise<void> {
    const all = [...this.sessions.values()];
    if (all.length === 0) return;
    const s = this.pick(all);
    const rate = this.rand() < 0.5 ? 0 : Number.POSITIVE_INFINITY;
    this.log.push(`rate ${s.id} ${rate}`);
    await this.engine.setRate(s.id, rate);
  }

  /** Concurrent I/O (and maybe a copy step), then either all complete or a crash hits. */
  async burst(): Promise<void> {
    const used = new Map<string, Set<number>>();
    const ps: Promise<void>[] = [];
    const hasStep = this.rand() < 0.5;
    const ops = 2 + this.int(4);
    this.log.push(`burst of ${ops}${hasStep ? ' with a step' : ''}`);
    for (let i = 0; i < ops; i++) {
      const vol = this.writeTarget();
      const size = this.mv(vol).blocks;
      const n = 1 + this.int(3);
      const b = this.int(size - n + 1);
      const u = used.get(vol) ?? new Set<number>();
      used.set(vol, u);
      let clash = false;
      for (let k = b; k < b + n; k++) clash ||= u.has(k);
      if (clash) continue;
      for (let k = b; k < b + n; k++) u.add(k);
      // Mirrored writes land on the destination too: reserve those blocks there.
      for (let k = b; k < b + n; k++) for (const d of this.mirrorsOf(vol, k)) (used.get(d) ?? used.set(d, new Set()).get(d)!).add(k);
      ps.push(this.hostMutate(vol, b, n, this.rand() < 0.85 ? 'write' : 'zero', hasStep ? ['EACCES', 'EPERM', 'EIO'] : ['EIO']));
    }
    // A read of a point-in-time image (or a plain volume) in the middle of it all.
    const readable = [...DATA].filter((v) => this.access(v).read === 'ok' && !this.isMirrorDest(v));
    if (readable.length > 0) {
      const vol = this.pick(readable);
      const mv = this.mv(vol);
      const expect = [...mv.val];
      const skip = used.get(vol) ?? new Set<number>();
      const buf = Buffer.alloc(mv.blocks * BLOCK);
      ps.push(
        this.devs
          .get(vol)!
          .read(0, buf)
          .then(
            () => {
              const got = tagsOf(buf, BLOCK);
              for (let k = 0; k < mv.blocks; k++) {
                if (skip.has(k) || expect[k] === UNKNOWN) continue;
                if (got[k] !== expect[k]) this.fail(`concurrent read of ${vol} block ${k}: got ${got[k]}, expected ${expect[k]}`);
              }
            },
            (e: { code?: string; message?: string }) => {
              if (e.code !== 'ESHUTDOWN' && !/after a crash/.test(String(e.message))) this.fail(`concurrent read of ${vol} failed: ${e.message}`);
            },
          ),
      );
    }
    if (hasStep) ps.push(this.engine.step(1 + this.int(3)).then(() => undefined, () => undefined));
    // A flush racing the writes: on completion, blocks no write of this burst touched are durable.
    if (this.rand() < 0.5) {
      const vol = this.pick(DATA);
      const racing = (v: string) => used.get(v) ?? new Set<number>();
      const mirrors = this.mirrorsOf(vol);
      this.log.push(`flush ${vol} (concurrent)`);
      const snap = [vol, ...mirrors].map((v) => [v, [...this.mv(v).val]] as const);
      const epoch = this.crashes;
      ps.push(
        this.devs
          .get(vol)!
          .flush()
          .then(
            () => {
              if (this.crashes !== epoch) return; // the crash already resolved what is durable
              for (const [v, vals] of snap) {
                const mv = this.mv(v);
                const limit = v === vol ? mv.blocks : Math.min(mv.blocks, SIZES[vol]!);
                for (let b = 0; b < limit; b++) {
                  if (racing(v).has(b)) continue;
                  mv.flushed[b] = vals[b]!;
                  mv.pending.delete(b);
                }
              }
            },
            () => undefined,
          ),
      );
    }
    if (this.rand() < 0.25) {
      const ticks = this.int(12);
      this.log.push(`crash after ${ticks} ticks`);
      for (let i = 0; i < ticks; i++) await Promise.resolve();
      await this.crash();
      const errors: unknown[] = [];
      await Promise.all(ps.map((p) => p.catch((e: unknown) => errors.push(e))));
      // Checks of operations cut short by the crash do not count; others do.
      for (const e of errors) if (!(e instanceof Failure) || !/ESHUTDOWN|after a crash/.test(e.message)) throw e;
      return;
    }
    await Promise.all(ps);
  }

  async crash(): Promise<void> {
    this.crashes++;
    this.log.push('CRASH + restart');
    void this.engine.close().catch(() => undefined);
    for (const [name, st] of this.stores) this.stores.set(name, st.crash());
    this.journal = this.journal.crash();
    await this.boot(true);
    this.reconcile(true);
    // Resolve what survived: each block must hold a value it may hold after a crash.
    const mirrorDests: MSess[] = [];
    for (const s of this.sessions.values()) if (s.type === 'ec' && (s.state === 'copying' || s.state === 'equivalent')) mirrorDests.push(s);
    for (const [name, v] of this.m) {
      if (mirrorDests.some((s) => s.dst === name) || this.access(name).read !== 'ok') continue;
      const got = await this.readAll(name);
      for (let b = 0; b < v.blocks; b++) {
        const cands = [v.flushed[b]!, ...(v.pending.get(b) ?? [])];
        if (v.val[b] !== UNKNOWN && v.flushed[b] !== UNKNOWN && !cands.includes(got[b]!)) {
          this.fail(`after the crash ${name} block ${b} holds ${got[b]}; it may only hold one of ${cands.join(', ')}`);
        }
        v.val[b] = got[b]!;
      }
      this.markFlushed(name);
    }
    for (const s of mirrorDests) {
      this.copyImage(s.src, s.dst);
      // Past the source's end the destination is its own, but unreadable until equivalent:
      // blocks with unflushed writes there may hold any of their values.
      const d = this.mv(s.dst);
      for (let b = this.mv(s.src).blocks; b < d.blocks; b++) if (d.pending.has(b)) (d.val[b] = UNKNOWN), (d.flushed[b] = UNKNOWN);
    }
  }

  /** Aligns the model with the engine's sessions, allowing only legal engine-driven changes. */
  reconcile(afterCrash: boolean): void {
    const eng = new Map(this.engine.list().map((s) => [s.id, s]));
    for (const s of [...this.sessions.values()]) {
      const e = eng.get(s.id);
      if (e === undefined) {
        if (s.type === 'opc' && s.state === 'copying') {
          this.sessions.delete(s.id);
          this.completed.set(s.id, s);
          continue;
        }
        this.fail(`session ${s.id} (${s.type} ${s.state}) disappeared${afterCrash ? ' in a crash' : ''}`);
      }
      if (e.source !== s.src || e.destination !== s.dst) this.fail(`session ${s.id} is ${e.source}->${e.destination}; model ${s.src}->${s.dst}`);
      if (e.state !== s.state) {
        const legal =
          (s.type === 'quickopc' && s.state === 'copying' && e.state === 'tracking') ||
          (s.type === 'ec' && s.state === 'copying' && e.state === 'equivalent') ||
          (s.type === 'snapopcplus' && s.state === 'snap' && e.state === 'error-suspended') ||
          (afterCrash && s.type === 'ec' && s.state === 'equivalent' && e.state === 'copying') ||
          (afterCrash && s.type === 'quickopc' && s.state === 'tracking' && e.state === 'copying'); // a restart's copy lost with its completion
        if (!legal) this.fail(`session ${s.id} (${s.type}) went ${s.state} -> ${e.state}`);
        s.state = e.state;
      }
    }
    for (const e of eng.values()) {
      if (this.sessions.has(e.id)) continue;
      const ps = this.pendingStart;
      if (afterCrash && ps !== undefined && e.type === ps.type && e.source === ps.src && e.destination === ps.dst) {
        // The interrupted start made it: its image is the source as of the start (J4 flushed it).
        this.log.push(`  (the interrupted start survived as ${e.id})`);
        this.mv(ps.src).val = [...ps.srcVal];
        this.markFlushed(ps.src);
        this.copyImage(ps.src, ps.dst);
        this.sessions.set(e.id, { id: e.id, type: e.type, state: e.state, src: ps.src, dst: ps.dst, gen: e.generation });
        this.ids = Math.max(this.ids, Number(e.id.slice(1)));
        continue;
      }
      const c = this.completed.get(e.id);
      if (afterCrash && c !== undefined && e.state === 'copying') {
        this.completed.delete(e.id);
        this.sessions.set(e.id, c);
        continue;
      }
      this.fail(`engine has session ${e.id} (${e.type} ${e.state}) the model does not know`);
    }
    if (afterCrash) this.completed.clear();
  }

  private readonly bufs = new Map<string, Buffer>();

  async readAll(name: string): Promise<number[]> {
    const v = this.mv(name);
    let buf = this.bufs.get(name);
    if (buf === undefined) this.bufs.set(name, (buf = Buffer.alloc(v.blocks * BLOCK)));
    await this.devs.get(name)!.read(0, buf);
    return tagsOf(buf, BLOCK);
  }

  /** Every volume, through its client device, against the model. */
  async checkAll(): Promise<void> {
    this.reconcile(false);
    for (const [name, v] of this.m) {
      const acc = this.access(name).read;
      let got: number[];
      try {
        got = await this.readAll(name);
      } catch (e) {
        if ((e as { code?: string }).code !== acc) this.fail(`read of ${name} failed ${(e as { code?: string }).code}: ${(e as Error).message}; expected ${acc}`);
        continue;
      }
      if (acc !== 'ok') this.fail(`read of ${name} succeeded; expected ${acc}`);
      for (let b = 0; b < v.blocks; b++) {
        if (v.val[b] === UNKNOWN) {
          v.val[b] = got[b]!;
          continue;
        }
        if (got[b] !== v.val[b]) this.fail(`${name} block ${b} reads ${got[b]}; the model says ${v.val[b]}`);
      }
    }
  }

  async run(steps: number): Promise<void> {
    await this.boot(false);
    for (let i = 0; i < steps; i++) {
      const r = this.rand() * 100;
      this.log.push(`#${i}`);
      if (r < 28) await this.write();
      else if (r < 34) await this.flush();
      else if (r < 44) await this.start();
      else if (r < 53) await this.ecOp();
      else if (r < 57) await this.cancel();
      else if (r < 75) await this.step();
      else if (r < 88) await this.burst();
      else if (r < 91) await this.crash();
      else if (r < 93) await this.setRate();
      else if (r < 95) await this.group();
      else if (r < 96) await this.startThenCrash();
      else await this.step();
      await this.checkAll();
    }
    await this.engine.close();
  }
}

export async function runSeed(seed: number, steps: number): Promise<Sim> {
  const sim = new Sim(seed);
  try {
    await sim.run(steps);
  } catch (e) {
    const tail = sim.log.slice(-Number(process.env.LOG ?? 40)).join('\n  ');
    throw new Error(`simulation failed: SEED=${seed} (replay: SEED=${seed} npx vitest run test/copy/simulation.test.ts)\n  ${(e as Error).message}\n  last actions:\n  ${tail}`, { cause: e });
  }
  return sim;
}

describe('copy engine simulation', () => {
  const only = process.env.SEED !== undefined ? Number(process.env.SEED) : undefined;
  const seeds = Number(process.env.SEEDS ?? 200);
  const steps = Number(process.env.STEPS ?? 300);

  it(only !== undefined ? `seed ${only}` : `${seeds} seeds x ${steps} steps`, async () => {
    let crashes = 0;
    const list = only !== undefined ? [only] : Array.from({ length: seeds }, (_, i) => i + 1);
    for (const seed of list) crashes += (await runSeed(seed, steps)).crashes;
    expect(crashes).toBeGreaterThan(0);
  });
});
