/**
 * The copy engine's journal (SessionJournal) in the array's metadata database.
 *
 * Appends (putSession, deleteSession, setBits, clearBits) change an in-memory mirror of the
 * journal and mark what changed: session records by id, bitmaps by AllocationMap chunk.
 * sync() writes every change since the last commit in one SQLite transaction
 * (MetadataStore.commitCopyJournal; synchronous=FULL, so it is durable when it returns).
 * Calls to sync() made before that commit runs share it (group commit): the commit runs on
 * the next setImmediate turn, so the copy-on-write syncs of many concurrent host writes
 * become one transaction. A failed commit marks everything it carried as changed again and
 * rejects every caller that waited on it.
 *
 * Ordering rules J1-J6 (SessionJournal.ts) hold because a sync() resolves only after a commit
 * that started after the call, and a commit carries everything appended before it started.
 *
 * J7, control operations: appends for staged sessions are kept as a list of operations, apart
 * from the mirror. The commit after commitStaged() applies them to copies of those sessions'
 * mirrors and writes them in the same transaction, after the plain appends; only once it has
 * committed do the copies become the mirrors. A failed commit leaves the mirrors as they were.
 */
import { AllocationMap, CHUNK_BYTES } from '../block/AllocationMap.js';
import { decodeRate, encodeRate, invariant, type BitmapName, type SessionRecord } from '../copy/CopySession.js';
import { runsOf, type JournalSession, type SessionJournal } from '../copy/SessionJournal.js';
import type { CopyJournalBatch, MetadataStore } from './MetadataStore.js';

interface Mirror {
  units: number;
  maps: Map<BitmapName, AllocationMap>;
}

type StagedOp =
  | { op: 'put'; record: SessionRecord }
  | { op: 'delete'; id: string }
  | { op: 'set' | 'clear'; id: string; bitmap: BitmapName; start: number; count: number };

export class SqliteSessionJournal implements SessionJournal {
  private readonly mirrors = new Map<string, Mirror>();
  private puts = new Map<string, SessionRecord>();
  private deletes = new Set<string>();
  private pending: Promise<void> | undefined;
  private stageIds: Set<string> | undefined;
  private staged: StagedOp[] = [];
  /** Staged operations the next commit carries (commitStaged). */
  private toCommit: StagedOp[] | undefined;
  /** Number of commits, for tests. */
  commits = 0;

  constructor(private readonly db: MetadataStore) {}

  putSession(record: SessionRecord): void {
    if (this.stageIds?.has(record.id)) return void this.staged.push({ op: 'put', record: { ...record } });
    if (!this.mirrors.has(record.id)) this.mirrors.set(record.id, { units: Math.ceil(record.sizeBytes / record.unitSize), maps: new Map() });
    this.puts.set(record.id, { ...record });
  }

  deleteSession(id: string): void {
    if (this.stageIds?.has(id)) return void this.staged.push({ op: 'delete', id });
    this.mirrors.delete(id);
    this.puts.delete(id);
    this.deletes.add(id);
  }

  setBits(id: string, bitmap: BitmapName, start: number, count: number): void {
    if (count <= 0) return;
    if (this.stageIds?.has(id)) this.staged.push({ op: 'set', id, bitmap, start, count });
    else this.map(id, bitmap).set(start, count);
  }

  clearBits(id: string, bitmap: BitmapName, start: number, count: number): void {
    if (count <= 0) return;
    if (this.stageIds?.has(id)) this.staged.push({ op: 'clear', id, bitmap, start, count });
    else this.map(id, bitmap).clear(start, count);
  }

  sync(): Promise<void> {
    this.pending ??= new Promise<void>((resolve, reject) => {
      setImmediate(() => {
        this.pending = undefined;
        try {
          this.commit();
          resolve();
        } catch (err) {
          reject(err as Error);
        }
      });
    });
    return this.pending;
  }

  stage(ids: Iterable<string>): void {
    invariant(this.toCommit === undefined, 'journal: a stage while a staged commit is on its way');
    this.stageIds ??= new Set();
    for (const id of ids) this.stageIds.add(id);
  }

  commitStaged(): Promise<void> {
    invariant(this.toCommit === undefined, 'journal: two staged commits at once');
    this.toCommit = this.staged;
    this.dropStaged();
    return this.sync();
  }

  dropStaged(): void {
    this.stageIds = undefined;
    this.staged = [];
  }

  /** Reads the durable state and makes it the mirror (call once, before any append). */
  load(): Promise<JournalSession[]> {
    this.mirrors.clear();
    const out: JournalSession[] = [];
    for (const row of this.db.listCopySessions()) {
      const raw = JSON.parse(row.record) as SessionRecord;
      const record: SessionRecord = { ...raw, rate: decodeRate(raw.rate) };
      const mirror: Mirror = { units: Math.ceil(record.sizeBytes / record.unitSize), maps: new Map() };
      for (const c of row.chunks) {
        const name = c.bitmap as BitmapName;
        let m = mirror.maps.get(name);
        if (m === undefined) {
          m = new AllocationMap(mirror.units, true);
          mirror.maps.set(name, m);
        }
        if (c.index < m.chunkCount && c.bits.length === CHUNK_BYTES) m.loadChunk(c.index, c.bits);
      }
      for (const m of mirror.maps.values()) m.takeDirty(); // durable already
      this.mirrors.set(record.id, mirror);
      out.push({ record, bitmaps: Object.fromEntries([...mirror.maps].map(([name, map]) => [name, runsOf(map)])) });
    }
    return Promise.resolve(out);
  }

  /**
   * Writes everything appended so far, now, in one transaction (with the staged operations
   * when commitStaged() asked for it). A disk that is full fails with a CopyError
   * RESOURCE_EXHAUSTED that names the data directory.
   */
  commit(): void {
    const stagedOps = this.toCommit;
    this.toCommit = undefined;
    if (!this.db.isOpen) throw new Error('the copy journal is closed (the array is shutting down)');
    const batch: CopyJournalBatch = { deletes: [...this.deletes], puts: new Map(), chunks: [] };
    for (const [id, r] of this.puts) batch.puts.set(id, JSON.stringify({ ...r, rate: encodeRate(r.rate) }));
    const taken: Array<{ map: AllocationMap; indices: number[] }> = [];
    for (const [id, mirror] of this.mirrors) {
      for (const [name, map] of mirror.maps) {
        if (!map.hasDirty) continue;
        const indices = map.takeDirty();
        taken.push({ map, indices });
        for (const index of indices) batch.chunks.push(chunkOf(id, name, map, index));
      }
    }
    const staged = stagedOps === undefined ? undefined : this.applyStaged(stagedOps);
    const puts = this.puts;
    const deletes = this.deletes;
    this.puts = new Map();
    this.deletes = new Set();
    const batches = [batch, ...(staged ? [staged.batch] : [])].filter((b) => b.deletes.length > 0 || b.puts.size > 0 || b.chunks.length > 0);
    if (batches.length === 0) return;
    try {
      this.db.commitCopyJournal(...batches);
      this.commits++;
    } catch (err) {
      // Nothing of it happened: carry the plain appends to the next commit; staged ones are
      // dropped (J7: their operation fails and its caller puts its memory back).
      for (const [id, r] of puts) if (!this.puts.has(id)) this.puts.set(id, r);
      for (const id of deletes) this.deletes.add(id);
      for (const t of taken) t.map.markDirty(t.indices);
      throw this.db.explainWriteError(err);
    }
    for (const [id, mirror] of staged?.mirrors ?? []) {
      if (mirror === undefined) this.mirrors.delete(id);
      else this.mirrors.set(id, mirror);
    }
  }

  /** The staged operations applied to copies of their sessions' mirrors, and their batch. */
  private applyStaged(ops: StagedOp[]): { batch: CopyJournalBatch; mirrors: Map<string, Mirror | undefined> } {
    const mirrors = new Map<string, Mirror | undefined>();
    const deleted = new Set<string>();
    const puts = new Map<string, SessionRecord>();
    const mirrorOf = (id: string): Mirror | undefined => {
      if (!mirrors.has(id)) {
        const m = this.mirrors.get(id);
        mirrors.set(id, m && { units: m.units, maps: new Map([...m.maps].map(([name, map]) => [name, map.clone(true)])) });
      }
      return mirrors.get(id);
    };
    for (const o of ops) {
      if (o.op === 'put') {
        if (mirrorOf(o.record.id) === undefined) mirrors.set(o.record.id, { units: Math.ceil(o.record.sizeBytes / o.record.unitSize), maps: new Map() });
        puts.set(o.record.id, o.record);
      } else if (o.op === 'delete') {
        mirrorOf(o.id);
        mirrors.set(o.id, undefined);
        puts.delete(o.id);
        deleted.add(o.id);
      } else {
        const mirror = mirrorOf(o.id);
        invariant(mirror !== undefined, `journal: bits for unknown session ${o.id}`);
        let map = mirror.maps.get(o.bitmap);
        if (map === undefined) {
          map = new AllocationMap(mirror.units, true);
          mirror.maps.set(o.bitmap, map);
        }
        if (o.op === 'set') map.set(o.start, o.count);
        else map.clear(o.start, o.count);
      }
    }
    const batch: CopyJournalBatch = { deletes: [...deleted], puts: new Map(), chunks: [] };
    for (const [id, r] of puts) batch.puts.set(id, JSON.stringify({ ...r, rate: encodeRate(r.rate) }));
    for (const [id, mirror] of mirrors) {
      if (mirror === undefined) continue;
      for (const [name, map] of mirror.maps) for (const index of map.takeDirty()) batch.chunks.push(chunkOf(id, name, map, index));
    }
    return { batch, mirrors };
  }

  private map(id: string, bitmap: BitmapName): AllocationMap {
    const mirror = this.mirrors.get(id);
    invariant(mirror !== undefined, `journal: bits for unknown session ${id}`);
    let m = mirror.maps.get(bitmap);
    if (m === undefined) {
      m = new AllocationMap(mirror.units, true);
      mirror.maps.set(bitmap, m);
    }
    return m;
  }
}

function chunkOf(sessionId: string, bitmap: BitmapName, map: AllocationMap, index: number): CopyJournalBatch['chunks'][number] {
  const bits = Buffer.alloc(CHUNK_BYTES);
  map.serializeChunk(index, bits);
  return { sessionId, bitmap, index, bits: isZero(bits) ? undefined : bits };
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i += 8) if (b.readBigUInt64LE(i) !== 0n) return false;
  return true;
}
