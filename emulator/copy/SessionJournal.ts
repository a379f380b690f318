/**
 * Where sessions, their states and their bitmaps are kept across restarts.
 *
 * The interface is a write-ahead log of small records plus one durability point:
 *   putSession / deleteSession / setBits / clearBits   append; nothing is durable yet
 *   sync()                                             makes every record appended before it
 *                                                      durable, all or none (one transaction)
 *   load()                                             the durable state, for recovery
 * A SQLite implementation (MetadataStore) maps this to: a copy_sessions table (id primary
 * key, record as JSON), a copy_bitmaps table (session id, bitmap name, chunk index, chunk
 * bytes: AllocationMap chunk layout), appends buffered in memory and written in one
 * transaction per sync() (synchronous=FULL), concurrent sync() calls coalesced into one
 * transaction (group commit).
 *
 * Ordering rules (what makes a crash at any instant safe; each is asserted in the sessions):
 *   J1 data before metadata: a bit that says "this unit's data is on the destination/snap"
 *      is appended only after that data was written AND the destination flushed.
 *   J2 before-image before overwrite: a source write that needs copy-on-write is issued to
 *      the source only after the before-image's bit is durable (J1, then sync()). The host
 *      may be answered earlier (SnapOPC+ write-behind holds the write in memory until then;
 *      a flush of the source waits for it).
 *   J3 track before write: a bit that says "this unit may differ" (QuickOPC tracking, EC
 *      suspended changes, EC write intent) is durable before the write it covers is issued.
 *      Durable too early is harmless: it only makes a later resync copy more.
 *   J4 cut: a session's start, suspend or split flushes the volumes involved, then appends
 *      the new state and syncs, all while their I/O is held; a crash before the sync leaves
 *      the previous state, after it the new one, both exact.
 *   J5 clearing is lazy: a bit that says "nothing to do here" (EC diff cleared after a copy,
 *      EC intent cleared after a flush) may reach the journal late; a lost clear only makes
 *      recovery copy more. It is appended only after the data that justifies it is flushed.
 *   J6 in memory after durable: the copier and copy-on-write set a "copied/saved" bit in
 *      memory only after sync(), so the hot path never skips a copy on a bit a crash could
 *      take away.
 *   J7 control operations are all or nothing: the engine stages the appends of the sessions
 *      an operation touches (stage), commits them in one commit with everything else
 *      (commitStaged), and puts its memory back if that commit fails. Staged appends never
 *      ride on another caller's sync(), so a group cannot become durable in part, and a
 *      failed commit does not carry them to the next one.
 */
import { AllocationMap } from '../block/AllocationMap.js';
import { invariant, type BitmapName, type SessionRecord } from './CopySession.js';
import type { UnitRun } from './CopyBitmap.js';

export interface JournalSession {
  record: SessionRecord;
  bitmaps: Partial<Record<BitmapName, UnitRun[]>>;
}

export interface SessionJournal {
  putSession(record: SessionRecord): void;
  deleteSession(id: string): void;
  setBits(id: string, bitmap: BitmapName, start: number, count: number): void;
  clearBits(id: string, bitmap: BitmapName, start: number, count: number): void;
  /** Makes every record appended so far durable, atomically (not staged ones: J7). */
  sync(): Promise<void>;
  /**
   * From now until commitStaged() or dropStaged(), appends for these sessions are staged:
   * no sync() carries them. Called again, it adds sessions (one the operation creates). One
   * stage at a time (the engine's control queue).
   */
  stage(ids: Iterable<string>): void;
  /**
   * One commit of every append, staged or not, and the end of the stage. If it fails, the
   * staged appends are gone, as if never made; the others are carried to the next commit.
   */
  commitStaged(): Promise<void>;
  /** Forgets the staged appends and ends the stage (the operation was refused). */
  dropStaged(): void;
  /** The durable state, sessions in creation order. */
  load(): Promise<JournalSession[]>;
}

type Op =
  | { op: 'put'; record: SessionRecord }
  | { op: 'delete'; id: string }
  | { op: 'set' | 'clear'; id: string; bitmap: BitmapName; start: number; count: number };

interface Durable {
  record: SessionRecord;
  units: number;
  bitmaps: Map<BitmapName, AllocationMap>;
}

/**
 * In memory, for tests and the 'memory' backend. crash() returns the journal a restarted
 * process would see: everything synced, nothing that was only appended; the old object
 * refuses further use, like a dead process's file descriptors.
 */
export class MemoryJournal implements SessionJournal {
  private pending: Op[] = [];
  /** Batches of syncs still committing, oldest first. */
  private committing: Op[][] = [];
  private dead = false;
  private stageIds: Set<string> | undefined;
  private staged: Op[] = [];
  /** Number of sync() calls, for tests. */
  syncs = 0;
  /**
   * Fault injection (tests, the simulator): called as each commit lands; an error returned
   * fails that commit (nothing of it is applied), like SQLITE_FULL. staged: it carries a
   * control operation (commitStaged).
   */
  failCommit: ((commit: { staged: boolean }) => Error | undefined) | undefined;

  /**
   * @param delay how long a commit takes (tests: a random number of microtasks, so a crash
   *              can land inside it); default one microtask.
   */
  constructor(
    private readonly durable = new Map<string, Durable>(),
    private readonly delay: () => Promise<void> = () => Promise.resolve(),
  ) {}

  putSession(record: SessionRecord): void {
    this.append({ op: 'put', record: { ...record } });
  }
  deleteSession(id: string): void {
    this.append({ op: 'delete', id });
  }
  setBits(id: string, bitmap: BitmapName, start: number, count: number): void {
    if (count > 0) this.append({ op: 'set', id, bitmap, start, count });
    else this.live();
  }
  clearBits(id: string, bitmap: BitmapName, start: number, count: number): void {
    if (count > 0) this.append({ op: 'clear', id, bitmap, start, count });
    else this.live();
  }

  sync(): Promise<void> {
    return this.commit(undefined);
  }

  stage(ids: Iterable<string>): void {
    this.live();
    this.stageIds ??= new Set();
    for (const id of ids) this.stageIds.add(id);
  }

  commitStaged(): Promise<void> {
    const staged = this.staged;
    this.dropStaged();
    return this.commit(staged);
  }

  dropStaged(): void {
    this.stageIds = undefined;
    this.staged = [];
  }

  private append(o: Op): void {
    this.live();
    const id = o.op === 'put' ? o.record.id : o.id;
    (this.stageIds?.has(id) ? this.staged : this.pending).push(o);
  }

  /** staged: the operations of commitStaged(); undefined for a plain sync(). */
  private async commit(staged: Op[] | undefined): Promise<void> {
    this.live();
    const carried = this.pending;
    this.pending = [];
    const ops = [...carried, ...(staged ?? [])];
    this.committing.push(ops);
    await this.delay(); // a real commit takes time: let a crash land in between
    if (this.dead) return; // the process died during the commit: it did not happen
    // Commits land in order, as SQLite's do: a later sync carries everything appended before
    // it, so a batch still waiting on its own delay is applied first.
    const i = this.committing.indexOf(ops);
    if (i < 0) {
      this.syncs++;
      return;
    }
    const failure = this.failCommit?.({ staged: staged !== undefined });
    if (failure !== undefined) {
      for (const batch of this.committing.splice(0, i)) for (const o of batch) this.apply(o);
      this.committing.shift();
      this.pending.unshift(...carried); // J7: plain appends go with the next commit, staged ones are gone
      throw failure;
    }
    for (const batch of this.committing.splice(0, i + 1)) for (const o of batch) this.apply(o);
    this.syncs++;
  }

  async load(): Promise<JournalSession[]> {
    this.live();
    return [...this.durable.values()].map((d) => ({
      record: { ...d.record },
      bitmaps: Object.fromEntries([...d.bitmaps].map(([name, map]) => [name, runsOf(map)])),
    }));
  }

  /** The journal after a crash: only what was synced. */
  crash(): MemoryJournal {
    this.dead = true;
    const copy = new Map<string, Durable>();
    for (const [id, d] of this.durable) {
      const maps = new Map<BitmapName, AllocationMap>();
      for (const [name, map] of d.bitmaps) {
        const m = new AllocationMap(d.units);
        for (const [s, n] of runsOf(map)) m.set(s, n);
        maps.set(name, m);
      }
      copy.set(id, { record: { ...d.record }, units: d.units, bitmaps: maps });
    }
    return new MemoryJournal(copy, this.delay);
  }

  private apply(o: Op): void {
    switch (o.op) {
      case 'put': {
        const d = this.durable.get(o.record.id);
        if (d) d.record = o.record;
        else this.durable.set(o.record.id, { record: o.record, units: Math.ceil(o.record.sizeBytes / o.record.unitSize), bitmaps: new Map() });
        return;
      }
      case 'delete':
        this.durable.delete(o.id);
        return;
      case 'set':
      case 'clear': {
        const d = this.durable.get(o.id);
        invariant(d !== undefined, `journal: bits for unknown session ${o.id}`);
        let map = d.bitmaps.get(o.bitmap);
        if (map === undefined) {
          map = new AllocationMap(d.units);
          d.bitmaps.set(o.bitmap, map);
        }
        if (o.op === 'set') map.set(o.start, o.count);
        else map.clear(o.start, o.count);
        return;
      }
    }
  }

  private live(): void {
    if (this.dead) throw new Error('journal used after a crash');
  }
}

/** The set bits of a bitmap as [start, length] runs: the journal's form of a bitmap. */
export function runsOf(map: AllocationMap): UnitRun[] {
  const out: UnitRun[] = [];
  let u = map.nextSet(0, map.blocks);
  while (u < map.blocks) {
    const end = map.nextClear(u, map.blocks);
    out.push([u, end - u]);
    u = map.nextSet(end, map.blocks);
  }
  return out;
}
