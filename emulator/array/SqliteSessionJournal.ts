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
 */
import { AllocationMap, CHUNK_BYTES } from '../block/AllocationMap.js';
import { decodeRate, encodeRate, invariant, type BitmapName, type SessionRecord } from '../copy/CopySession.js';
import { runsOf, type JournalSession, type SessionJournal } from '../copy/SessionJournal.js';
import type { CopyJournalBatch, MetadataStore } from './MetadataStore.js';

interface Mirror {
  units: number;
  maps: Map<BitmapName, AllocationMap>;
}

export class SqliteSessionJournal implements SessionJournal {
  private readonly mirrors = new Map<string, Mirror>();
  private puts = new Map<string, SessionRecord>();
  private deletes = new Set<string>();
  private pending: Promise<void> | undefined;
  /** Number of commits, for tests. */
  commits = 0;

  constructor(private readonly db: MetadataStore) {}

  putSession(record: SessionRecord): void {
    if (!this.mirrors.has(record.id)) this.mirrors.set(record.id, { units: Math.ceil(record.sizeBytes / record.unitSize), maps: new Map() });
    this.puts.set(record.id, { ...record });
  }

  deleteSession(id: string): void {
    this.mirrors.delete(id);
    this.puts.delete(id);
    this.deletes.add(id);
  }

  setBits(id: string, bitmap: BitmapName, start: number, count: number): void {
    if (count > 0) this.map(id, bitmap).set(start, count);
  }

  clearBits(id: string, bitmap: BitmapName, start: number, count: number): void {
    if (count > 0) this.map(id, bitmap).clear(start, count);
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

  /** Writes everything appended so far, now, in one transaction. */
  commit(): void {
    if (!this.db.isOpen) throw new Error('the copy journal is closed (the array is shutting down)');
    const batch: CopyJournalBatch = { deletes: [...this.deletes], puts: new Map(), chunks: [] };
    for (const [id, r] of this.puts) batch.puts.set(id, JSON.stringify({ ...r, rate: encodeRate(r.rate) }));
    const taken: Array<{ map: AllocationMap; indices: number[] }> = [];
    for (const [id, mirror] of this.mirrors) {
      for (const [name, map] of mirror.maps) {
        if (!map.hasDirty) continue;
        const indices = map.takeDirty();
        taken.push({ map, indices });
        for (const index of indices) {
          const bits = Buffer.alloc(CHUNK_BYTES);
          map.serializeChunk(index, bits);
          batch.chunks.push({ sessionId: id, bitmap: name, index, bits: isZero(bits) ? undefined : bits });
        }
      }
    }
    const puts = this.puts;
    const deletes = this.deletes;
    this.puts = new Map();
    this.deletes = new Set();
    if (batch.deletes.length === 0 && batch.puts.size === 0 && batch.chunks.length === 0) return;
    try {
      this.db.commitCopyJournal(batch);
      this.commits++;
    } catch (err) {
      // Nothing of it happened: carry it all to the next commit.
      for (const [id, r] of puts) if (!this.puts.has(id)) this.puts.set(id, r);
      for (const id of deletes) this.deletes.add(id);
      for (const t of taken) t.map.markDirty(t.indices);
      throw err;
    }
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

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i += 8) if (b.readBigUInt64LE(i) !== 0n) return false;
  return true;
}

