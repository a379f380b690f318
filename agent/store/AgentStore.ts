/**
 * The agent's own records (SQLite through better-sqlite3): registered transaction and backup
 * volumes, generations (history), sync pairs, operations in progress and locks not yet undone.
 *
 * Same house style as the array's MetadataStore: WAL, synchronous=FULL (a record is on stable
 * storage when its call returns: post-processing and resource-match rely on that), numbered
 * migrations applied once each in a transaction. Add a migration, never edit one.
 *
 * Several agent processes may open one store (the CLI and the daemon); every multi-row change
 * is one IMMEDIATE transaction, so claiming a volume for an operation is atomic across them.
 *
 * The database (and SQLite's -wal and -shm beside it, which take its mode) is 0600: it names
 * every volume, device and mount point the agent acts on as root.
 */
import Database from 'better-sqlite3';
import { chmodSync, closeSync, existsSync, openSync, statSync } from 'node:fs';
import type {
  BackupType,
  BackupVolumeRecord,
  GenerationRecord,
  GenerationStatus,
  LockMode,
  LockRecord,
  PrepDone,
  TapeCopyRecord,
  TransactionVolumeRecord,
} from '../types.js';

export const AGENT_DATABASE_FILE = 'agent.db';

type Migration = (db: Database.Database) => void;

const MIGRATIONS: Migration[] = [
  // 1: registrations, generations, sync pairs, operations, outstanding locks.
  // last_generation keeps numbers monotonic even when generation rows go (unregister --force).
  (db) => {
    db.exec(`
      CREATE TABLE transaction_volumes (
        volume               TEXT PRIMARY KEY,
        lock                 TEXT NOT NULL CHECK (lock IN ('unmount', 'freeze')),
        flush_only           INTEGER NOT NULL CHECK (flush_only IN (0, 1)),
        generations          INTEGER NOT NULL CHECK (generations >= 1),
        default_type         TEXT NOT NULL CHECK (default_type IN ('opc', 'quickopc', 'snapopcplus')),
        registered_at        TEXT NOT NULL,
        needs_resource_match TEXT NOT NULL DEFAULT '',
        last_generation      INTEGER NOT NULL DEFAULT 0
      ) STRICT;
      CREATE TABLE backup_volumes (
        volume               TEXT PRIMARY KEY,
        size_bytes           INTEGER NOT NULL,
        block_size           INTEGER NOT NULL,
        registered_at        TEXT NOT NULL,
        needs_resource_match TEXT NOT NULL DEFAULT ''
      ) STRICT;
      CREATE TABLE generations (
        transaction_volume TEXT NOT NULL,
        number             INTEGER NOT NULL,
        backup_volume      TEXT NOT NULL,
        type               TEXT NOT NULL CHECK (type IN ('opc', 'quickopc', 'snapopcplus', 'ec')),
        session_id         TEXT NOT NULL DEFAULT '',
        at                 TEXT NOT NULL,
        status             TEXT NOT NULL CHECK (status IN ('held', 'released', 'tape-only', 'failed')),
        prep               TEXT NOT NULL,
        tape               TEXT,
        error              TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (transaction_volume, number)
      ) STRICT;
      CREATE INDEX generations_by_backup_volume ON generations (backup_volume, status);
      CREATE TABLE sync_pairs (
        transaction_volume TEXT PRIMARY KEY,
        backup_volume      TEXT NOT NULL UNIQUE,
        session_id         TEXT NOT NULL,
        started_at         TEXT NOT NULL
      ) STRICT;
      CREATE TABLE operations (
        volume     TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        pid        INTEGER NOT NULL,
        op         TEXT NOT NULL,
        started_at TEXT NOT NULL
      ) STRICT;
      CREATE TABLE locks (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        volume    TEXT NOT NULL,
        owner     TEXT NOT NULL,
        pid       INTEGER NOT NULL,
        record    TEXT NOT NULL
      ) STRICT;
    `);
  },
  // 2: --lock none, --resync-after-backup, generations in error or lost (SQLite cannot alter a
  // CHECK: the two tables are rebuilt with their rows).
  (db) => {
    db.exec(`
      CREATE TABLE transaction_volumes_new (
        volume               TEXT PRIMARY KEY,
        lock                 TEXT NOT NULL CHECK (lock IN ('unmount', 'freeze', 'none')),
        flush_only           INTEGER NOT NULL CHECK (flush_only IN (0, 1)),
        generations          INTEGER NOT NULL CHECK (generations >= 1),
        default_type         TEXT NOT NULL CHECK (default_type IN ('opc', 'quickopc', 'snapopcplus')),
        registered_at        TEXT NOT NULL,
        needs_resource_match TEXT NOT NULL DEFAULT '',
        last_generation      INTEGER NOT NULL DEFAULT 0,
        resync_after_backup  INTEGER NOT NULL DEFAULT 0 CHECK (resync_after_backup IN (0, 1))
      ) STRICT;
      INSERT INTO transaction_volumes_new (volume, lock, flush_only, generations, default_type, registered_at, needs_resource_match, last_generation)
        SELECT volume, lock, flush_only, generations, default_type, registered_at, needs_resource_match, last_generation FROM transaction_volumes;
      DROP TABLE transaction_volumes;
      ALTER TABLE transaction_volumes_new RENAME TO transaction_volumes;

      CREATE TABLE generations_new (
        transaction_volume TEXT NOT NULL,
        number             INTEGER NOT NULL,
        backup_volume      TEXT NOT NULL,
        type               TEXT NOT NULL CHECK (type IN ('opc', 'quickopc', 'snapopcplus', 'ec')),
        session_id         TEXT NOT NULL DEFAULT '',
        at                 TEXT NOT NULL,
        status             TEXT NOT NULL CHECK (status IN ('held', 'released', 'tape-only', 'failed', 'error', 'lost')),
        prep               TEXT NOT NULL,
        tape               TEXT,
        error              TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (transaction_volume, number)
      ) STRICT;
      INSERT INTO generations_new SELECT * FROM generations;
      DROP TABLE generations;
      ALTER TABLE generations_new RENAME TO generations;
      CREATE INDEX generations_by_backup_volume ON generations (backup_volume, status);
    `);
  },
  // 3: hardening. pins: the UUID and WWN a volume had at its registration (a device or an array
  // answer of another identity is refused). locks.guest: the guest whose host side took a lock
  // ('' = this host), so that a guest's record is never replayed on the host.
  (db) => {
    db.exec(`
      CREATE TABLE pins (
        volume    TEXT PRIMARY KEY,
        uuid      TEXT NOT NULL,
        wwn       TEXT NOT NULL,
        pinned_at TEXT NOT NULL
      ) STRICT;
      ALTER TABLE locks ADD COLUMN guest TEXT NOT NULL DEFAULT '';
    `);
  },
];

export const AGENT_SCHEMA_VERSION = MIGRATIONS.length;

/** A volume's identity when it was registered. */
export interface VolumePin {
  volume: string;
  uuid: string;
  wwn: string;
  pinnedAt: string;
}

/** A backup volume as stored: the record plus its block size (a copy needs equal block sizes). */
export interface StoredBackupVolume extends BackupVolumeRecord {
  blockSize: number;
}

export interface SyncPairRecord {
  transactionVolume: string;
  backupVolume: string;
  sessionId: string;
  startedAt: string;
}

export interface OperationRecord {
  volume: string;
  /** The BackupManager instance that holds it (several may share a process). */
  owner: string;
  pid: number;
  /** backup | restore | start-sync | cancel-sync | unregister */
  op: string;
  startedAt: string;
}

export interface StoredLock {
  id: number;
  /** The volume whose operation took the lock. */
  volume: string;
  owner: string;
  pid: number;
  record: LockRecord;
  /** The guest whose host side took it (its agent socket), or '' for this host. */
  guest: string;
}

/** What claimOperation found: rows of dead processes it took over. */
export interface ClaimResult {
  tookOver: OperationRecord[];
}

export class BusyError extends Error {
  constructor(readonly holder: OperationRecord) {
    super(`${holder.volume} is in a ${holder.op} started by pid ${holder.pid} at ${holder.startedAt}`);
    this.name = 'BusyError';
  }
}

interface TvRow {
  volume: string;
  lock: string;
  resync_after_backup: number;
  flush_only: number;
  generations: number;
  default_type: string;
  registered_at: string;
  needs_resource_match: string;
}

interface BvRow {
  volume: string;
  size_bytes: number;
  block_size: number;
  registered_at: string;
  needs_resource_match: string;
  in_use_by: string | null;
}

interface GenRow {
  transaction_volume: string;
  number: number;
  backup_volume: string;
  type: string;
  session_id: string;
  at: string;
  status: string;
  prep: string;
  tape: string | null;
  error: string;
}

function tvFromRow(r: TvRow): TransactionVolumeRecord {
  return {
    volume: r.volume,
    lock: r.lock as LockMode,
    resyncAfterBackup: r.resync_after_backup !== 0,
    flushOnly: r.flush_only !== 0,
    generations: r.generations,
    defaultType: r.default_type as TransactionVolumeRecord['defaultType'],
    registeredAt: r.registered_at,
    needsResourceMatch: r.needs_resource_match,
  };
}

function bvFromRow(r: BvRow): StoredBackupVolume {
  return {
    volume: r.volume,
    sizeBytes: r.size_bytes,
    blockSize: r.block_size,
    registeredAt: r.registered_at,
    inUseBy: r.in_use_by ?? '',
    needsResourceMatch: r.needs_resource_match,
  };
}

function genFromRow(r: GenRow): GenerationRecord {
  return {
    number: r.number,
    transactionVolume: r.transaction_volume,
    backupVolume: r.backup_volume,
    type: r.type as BackupType,
    sessionId: r.session_id,
    at: r.at,
    status: r.status as GenerationStatus,
    prep: r.prep as PrepDone,
    tape: r.tape === null ? null : (JSON.parse(r.tape) as TapeCopyRecord),
    error: r.error,
  };
}

// A backup volume is in use while a held generation or a sync pair names it, or a generation
// whose session is still on the array (an error-suspended SnapOPC+ generation that older ones
// read through cannot be cancelled yet).
const BV_SELECT = `
  SELECT b.*, coalesce(
    (SELECT g.transaction_volume FROM generations g WHERE g.backup_volume = b.volume AND (g.status = 'held' OR g.session_id != '') LIMIT 1),
    (SELECT s.transaction_volume FROM sync_pairs s WHERE s.backup_volume = b.volume)
  ) AS in_use_by
  FROM backup_volumes b`;

export class AgentStore {
  private readonly db: Database.Database;

  /** @param file a path, or ':memory:'. */
  constructor(readonly file: string) {
    if (file !== ':memory:') privateFile(file);
    this.db = new Database(file, { timeout: 5000 });
    try {
      if (file !== ':memory:') this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.migrate();
      if (file !== ':memory:') for (const f of [`${file}-wal`, `${file}-shm`]) if (existsSync(f)) privateFile(f);
    } catch (err) {
      this.db.close();
      throw err;
    }
  }

  get schemaVersion(): number {
    return (this.db.prepare('SELECT version FROM schema_version').get() as { version: number }).version;
  }

  get isOpen(): boolean {
    return this.db.open;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  // ---- transaction volumes ----

  getTransaction(volume: string): TransactionVolumeRecord | undefined {
    const r = this.db.prepare('SELECT * FROM transaction_volumes WHERE volume = ?').get(volume) as TvRow | undefined;
    return r && tvFromRow(r);
  }

  listTransactions(): TransactionVolumeRecord[] {
    return (this.db.prepare('SELECT * FROM transaction_volumes ORDER BY volume').all() as TvRow[]).map(tvFromRow);
  }

  /** Inserts or updates the policy (keeps the generation counter and the resource-match flag). */
  putTransaction(rec: TransactionVolumeRecord): void {
    this.db
      .prepare(
        `INSERT INTO transaction_volumes (volume, lock, flush_only, generations, default_type, registered_at, needs_resource_match, resync_after_backup)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (volume) DO UPDATE SET lock = excluded.lock, flush_only = excluded.flush_only,
           generations = excluded.generations, default_type = excluded.default_type, resync_after_backup = excluded.resync_after_backup`,
      )
      .run(
        rec.volume,
        rec.lock,
        rec.flushOnly ? 1 : 0,
        rec.generations,
        rec.defaultType,
        rec.registeredAt,
        rec.needsResourceMatch,
        rec.resyncAfterBackup ? 1 : 0,
      );
  }

  /** Forgets a transaction volume with its generations and sync pair. */
  deleteTransaction(volume: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM generations WHERE transaction_volume = ?').run(volume);
      this.db.prepare('DELETE FROM sync_pairs WHERE transaction_volume = ?').run(volume);
      this.db.prepare('DELETE FROM transaction_volumes WHERE volume = ?').run(volume);
      this.deletePin(volume);
    })();
  }

  /** The next absolute generation number (the counter only moves forward). */
  nextGenerationNumber(volume: string): number {
    return this.db
      .transaction(() => {
        this.db.prepare('UPDATE transaction_volumes SET last_generation = last_generation + 1 WHERE volume = ?').run(volume);
        const r = this.db.prepare('SELECT last_generation FROM transaction_volumes WHERE volume = ?').get(volume) as { last_generation: number } | undefined;
        if (r === undefined) throw new Error(`transaction volume ${volume} is not registered`);
        return r.last_generation;
      })
      .immediate();
  }

  /** The number the next backup will get (for hook scripts; not reserved). */
  peekGenerationNumber(volume: string): number {
    const r = this.db.prepare('SELECT last_generation FROM transaction_volumes WHERE volume = ?').get(volume) as { last_generation: number } | undefined;
    return (r?.last_generation ?? 0) + 1;
  }

  // ---- backup volumes ----

  getBackupVolume(volume: string): StoredBackupVolume | undefined {
    const r = this.db.prepare(`${BV_SELECT} WHERE b.volume = ?`).get(volume) as BvRow | undefined;
    return r && bvFromRow(r);
  }

  listBackupVolumes(): StoredBackupVolume[] {
    return (this.db.prepare(`${BV_SELECT} ORDER BY b.volume`).all() as BvRow[]).map(bvFromRow);
  }

  putBackupVolume(rec: StoredBackupVolume): void {
    this.db
      .prepare(
        `INSERT INTO backup_volumes (volume, size_bytes, block_size, registered_at, needs_resource_match) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (volume) DO UPDATE SET size_bytes = excluded.size_bytes, block_size = excluded.block_size`,
      )
      .run(rec.volume, rec.sizeBytes, rec.blockSize, rec.registeredAt, rec.needsResourceMatch);
  }

  deleteBackupVolume(volume: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM backup_volumes WHERE volume = ?').run(volume);
      this.deletePin(volume);
    })();
  }

  /** Sets (or with '' clears) the resource-match flag of a transaction or backup volume. */
  setNeedsResourceMatch(volume: string, reason: string): void {
    this.db.transaction(() => {
      this.db.prepare('UPDATE transaction_volumes SET needs_resource_match = ? WHERE volume = ?').run(reason, volume);
      this.db.prepare('UPDATE backup_volumes SET needs_resource_match = ? WHERE volume = ?').run(reason, volume);
    })();
  }

  // ---- generations ----

  insertGeneration(g: GenerationRecord): void {
    this.db
      .prepare(
        `INSERT INTO generations (transaction_volume, number, backup_volume, type, session_id, at, status, prep, tape, error)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        g.transactionVolume,
        g.number,
        g.backupVolume,
        g.type,
        g.sessionId,
        g.at,
        g.status,
        g.prep,
        g.tape === null ? null : JSON.stringify(g.tape),
        g.error,
      );
  }

  updateGeneration(volume: string, number: number, patch: Partial<Pick<GenerationRecord, 'sessionId' | 'status' | 'tape' | 'error'>>): void {
    const sets: string[] = [];
    const args: unknown[] = [];
    const set = (column: string, value: unknown) => {
      sets.push(`${column} = ?`);
      args.push(value);
    };
    if (patch.sessionId !== undefined) set('session_id', patch.sessionId);
    if (patch.status !== undefined) set('status', patch.status);
    if (patch.tape !== undefined) set('tape', patch.tape === null ? null : JSON.stringify(patch.tape));
    if (patch.error !== undefined) set('error', patch.error);
    if (sets.length === 0) return;
    this.db.prepare(`UPDATE generations SET ${sets.join(', ')} WHERE transaction_volume = ? AND number = ?`).run(...args, volume, number);
  }

  getGeneration(volume: string, number: number): GenerationRecord | undefined {
    const r = this.db.prepare('SELECT * FROM generations WHERE transaction_volume = ? AND number = ?').get(volume, number) as GenRow | undefined;
    return r && genFromRow(r);
  }

  /** Newest first; every transaction volume when volume is undefined. */
  listGenerations(volume?: string): GenerationRecord[] {
    const rows =
      volume === undefined
        ? (this.db.prepare('SELECT * FROM generations ORDER BY at DESC, transaction_volume, number DESC').all() as GenRow[])
        : (this.db.prepare('SELECT * FROM generations WHERE transaction_volume = ? ORDER BY number DESC').all(volume) as GenRow[]);
    return rows.map(genFromRow);
  }

  /** Held generations of a transaction volume, oldest first. */
  heldGenerations(volume: string): GenerationRecord[] {
    return (this.db.prepare("SELECT * FROM generations WHERE transaction_volume = ? AND status = 'held' ORDER BY number").all(volume) as GenRow[]).map(
      genFromRow,
    );
  }

  /** Generations (any status) stored on a backup volume. */
  generationsOn(backupVolume: string): GenerationRecord[] {
    return (this.db.prepare('SELECT * FROM generations WHERE backup_volume = ? ORDER BY transaction_volume, number').all(backupVolume) as GenRow[]).map(
      genFromRow,
    );
  }

  // ---- sync pairs ----

  getSync(volume: string): SyncPairRecord | undefined {
    const r = this.db.prepare('SELECT * FROM sync_pairs WHERE transaction_volume = ?').get(volume) as
      | { transaction_volume: string; backup_volume: string; session_id: string; started_at: string }
      | undefined;
    return r && { transactionVolume: r.transaction_volume, backupVolume: r.backup_volume, sessionId: r.session_id, startedAt: r.started_at };
  }

  listSync(): SyncPairRecord[] {
    const rows = this.db.prepare('SELECT * FROM sync_pairs ORDER BY transaction_volume').all() as Array<{
      transaction_volume: string;
      backup_volume: string;
      session_id: string;
      started_at: string;
    }>;
    return rows.map((r) => ({ transactionVolume: r.transaction_volume, backupVolume: r.backup_volume, sessionId: r.session_id, startedAt: r.started_at }));
  }

  putSync(p: SyncPairRecord): void {
    this.db
      .prepare('INSERT INTO sync_pairs (transaction_volume, backup_volume, session_id, started_at) VALUES (?, ?, ?, ?)')
      .run(p.transactionVolume, p.backupVolume, p.sessionId, p.startedAt);
  }

  deleteSync(volume: string): void {
    this.db.prepare('DELETE FROM sync_pairs WHERE transaction_volume = ?').run(volume);
  }

  /** The EC cut of a synchronized backup: the pair goes and its generation is recorded at once. */
  syncToGeneration(g: GenerationRecord): void {
    this.db.transaction(() => {
      this.deleteSync(g.transactionVolume);
      this.insertGeneration(g);
    })();
  }

  // ---- operations (one per volume at a time) ----

  /**
   * Claims every volume for one operation, all or none. A row of a live process (isAlive) is
   * a BusyError; a row of a dead one is taken over and returned.
   */
  claimOperation(volumes: string[], owner: string, pid: number, op: string, at: string, isAlive: (pid: number) => boolean): ClaimResult {
    return this.db
      .transaction(() => {
        const tookOver: OperationRecord[] = [];
        for (const volume of volumes) {
          const held = this.getOperation(volume);
          if (held !== undefined) {
            if (isAlive(held.pid)) throw new BusyError(held);
            tookOver.push(held);
          }
          this.db.prepare('INSERT OR REPLACE INTO operations (volume, owner, pid, op, started_at) VALUES (?, ?, ?, ?, ?)').run(volume, owner, pid, op, at);
        }
        return { tookOver };
      })
      .immediate();
  }

  /** Releases the volumes this owner holds (not rows another owner took over since). */
  releaseOperation(volumes: string[], owner: string): void {
    this.db.transaction(() => {
      for (const v of volumes) this.db.prepare('DELETE FROM operations WHERE volume = ? AND owner = ?').run(v, owner);
    })();
  }

  getOperation(volume: string): OperationRecord | undefined {
    const r = this.db.prepare('SELECT * FROM operations WHERE volume = ?').get(volume) as
      | { volume: string; owner: string; pid: number; op: string; started_at: string }
      | undefined;
    return r && { volume: r.volume, owner: r.owner, pid: r.pid, op: r.op, startedAt: r.started_at };
  }

  listOperations(): OperationRecord[] {
    const rows = this.db.prepare('SELECT * FROM operations ORDER BY volume').all() as Array<{
      volume: string;
      owner: string;
      pid: number;
      op: string;
      started_at: string;
    }>;
    return rows.map((r) => ({ volume: r.volume, owner: r.owner, pid: r.pid, op: r.op, startedAt: r.started_at }));
  }

  /** For resource-match: drops a stale row only if it is still the one that was judged stale. */
  deleteOperation(op: OperationRecord): void {
    this.db.prepare('DELETE FROM operations WHERE volume = ? AND owner = ? AND pid = ?').run(op.volume, op.owner, op.pid);
  }

  // ---- pins ----

  /** Pins a volume to its identity (registration, or a re-registration after it was replaced). */
  putPin(p: VolumePin): void {
    this.db
      .prepare(
        'INSERT INTO pins (volume, uuid, wwn, pinned_at) VALUES (?, ?, ?, ?) ON CONFLICT (volume) DO UPDATE SET uuid = excluded.uuid, wwn = excluded.wwn, pinned_at = excluded.pinned_at',
      )
      .run(p.volume, p.uuid, p.wwn, p.pinnedAt);
  }

  getPin(volume: string): VolumePin | undefined {
    const r = this.db.prepare('SELECT * FROM pins WHERE volume = ?').get(volume) as
      | { volume: string; uuid: string; wwn: string; pinned_at: string }
      | undefined;
    return r && { volume: r.volume, uuid: r.uuid, wwn: r.wwn, pinnedAt: r.pinned_at };
  }

  deletePin(volume: string): void {
    this.db.prepare('DELETE FROM pins WHERE volume = ?').run(volume);
  }

  // ---- locks not yet undone ----

  /** guest: the guest whose host side took the lock (its agent socket); '' for this host. */
  addLock(volume: string, owner: string, pid: number, record: LockRecord, guest = ''): number {
    return Number(
      this.db.prepare('INSERT INTO locks (volume, owner, pid, record, guest) VALUES (?, ?, ?, ?, ?)').run(volume, owner, pid, JSON.stringify(record), guest)
        .lastInsertRowid,
    );
  }

  removeLock(id: number): void {
    this.db.prepare('DELETE FROM locks WHERE id = ?').run(id);
  }

  /** In the order they were taken. */
  listLocks(): StoredLock[] {
    const rows = this.db.prepare('SELECT * FROM locks ORDER BY id').all() as Array<{
      id: number;
      volume: string;
      owner: string;
      pid: number;
      record: string;
      guest: string;
    }>;
    return rows.map((r) => ({ id: r.id, volume: r.volume, owner: r.owner, pid: r.pid, record: JSON.parse(r.record) as LockRecord, guest: r.guest }));
  }

  private migrate(): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
    const row = this.db.prepare('SELECT version FROM schema_version').get() as { version: number } | undefined;
    if (row === undefined) this.db.prepare('INSERT INTO schema_version (version) VALUES (0)').run();
    const current = row?.version ?? 0;
    if (current > MIGRATIONS.length) {
      throw new Error(
        `the agent database ${this.file} is at schema version ${current}, newer than this arraylab-agent understands (${MIGRATIONS.length}); run a newer arraylab-agent or use another --state-dir`,
      );
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.db
        .transaction(() => {
          MIGRATIONS[v]!(this.db);
          this.db.prepare('UPDATE schema_version SET version = ?').run(v + 1);
        })
        .immediate();
    }
  }
}

/**
 * Makes a data file 0600, creating it empty when missing (SQLite then keeps that mode, and gives
 * it to its -wal and -shm): one the agent's user does not own is left as it is.
 */
function privateFile(path: string): void {
  if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600));
  const st = statSync(path);
  if ((st.mode & 0o077) !== 0 && st.uid === (process.getuid?.() ?? -1)) chmodSync(path, 0o600);
}
