/**
 * The array's configuration database: volumes, copy sessions, hosts and their LUN maps, SCSI
 * persistent reservations; events later.
 *
 * SQLite through better-sqlite3, in WAL mode with synchronous=FULL: a change is on stable
 * storage when its statement returns, which the create/delete ordering in StorageArray
 * relies on. Calls are synchronous; they sit on the control path only, never on block I/O.
 *
 * Schema changes are numbered migrations applied in order inside one transaction each;
 * schema_version holds the number of the last one applied. Add a migration, never edit one.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import Database from 'better-sqlite3';
import { CopyError } from '../copy/CopySession.js';
import type { LogicalBlockSize, Provisioning, VolumeInfo } from './types.js';
import type { Fault, FaultSpec } from '../fault/spec.js';

export const DATABASE_FILE = 'arraylab.db';

/**
 * A volume row as stored: everything the API shows but the live allocation count. The
 * allocation limit is optional here (absent or null: none).
 */
export type VolumeRecord = Omit<VolumeInfo, 'allocatedBytes' | 'allocLimitBytes' | 'writeCacheDirtyBytes'> & { allocLimitBytes?: number | null };

interface VolumeRow {
  name: string;
  uuid: string;
  wwn: string;
  serial: string;
  size_bytes: number;
  block_size: number;
  provisioning: string;
  read_only: number;
  description: string;
  created_at: string;
  alloc_limit_bytes: number | null;
  write_cache: string;
}

type Migration = (db: Database.Database) => void;

const MIGRATIONS: Migration[] = [
  // 1: volumes
  (db) => {
    db.exec(`
      CREATE TABLE volumes (
        uuid         TEXT PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,
        wwn          TEXT NOT NULL UNIQUE,
        serial       TEXT NOT NULL UNIQUE,
        size_bytes   INTEGER NOT NULL CHECK (size_bytes > 0 AND size_bytes % block_size = 0),
        block_size   INTEGER NOT NULL CHECK (block_size IN (512, 4096)),
        provisioning TEXT NOT NULL CHECK (provisioning IN ('thin', 'thick')),
        read_only    INTEGER NOT NULL DEFAULT 0 CHECK (read_only IN (0, 1)),
        description  TEXT NOT NULL DEFAULT '',
        created_at   TEXT NOT NULL
      ) STRICT;
    `);
  },
  // 2: copy sessions (SqliteSessionJournal): the record as JSON (rate encoded with encodeRate),
  // and each bitmap as AllocationMap chunks (LSB-first, CHUNK_BYTES each); a missing chunk is
  // all clear. seq keeps creation order across updates.
  (db) => {
    db.exec(`
      CREATE TABLE copy_sessions (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        id     TEXT NOT NULL UNIQUE,
        record TEXT NOT NULL
      ) STRICT;
      CREATE TABLE copy_bitmaps (
        session_id  TEXT NOT NULL REFERENCES copy_sessions (id) ON DELETE CASCADE,
        bitmap      TEXT NOT NULL,
        chunk_index INTEGER NOT NULL CHECK (chunk_index >= 0),
        bits        BLOB NOT NULL,
        PRIMARY KEY (session_id, bitmap, chunk_index)
      ) STRICT, WITHOUT ROWID;
    `);
  },
  // 3: allocation limit of thin volumes (NULL: none)
  (db) => {
    db.exec(`
      ALTER TABLE volumes ADD COLUMN alloc_limit_bytes INTEGER DEFAULT NULL CHECK (
        alloc_limit_bytes IS NULL OR (
          provisioning = 'thin' AND alloc_limit_bytes > 0 AND alloc_limit_bytes % block_size = 0 AND alloc_limit_bytes <= size_bytes
        )
      );
    `);
  },
  // 4: host affinity (HostRecords), the array's id, and SCSI persistent reservations.
  // Maps name volumes by UUID, so a rename follows and deleting the volume row removes its
  // mappings in the same statement (ON DELETE CASCADE). An initiator belongs to at most one
  // host (its PRIMARY KEY). default_luns: each volume's LUN while no host is defined (the lab
  // default), kept for the volume's life so a delete never renumbers the others.
  // Reservations are keyed by WWN; the triggers drop them with the LU they belong to (a volume
  // deleted, or given a new identity: hosts then see a different LU).
  (db) => {
    db.exec(`
      CREATE TABLE array_properties (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
      ) STRICT;
      CREATE TABLE hosts (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
      ) STRICT;
      CREATE TABLE host_initiators (
        initiator TEXT PRIMARY KEY,
        host_id   INTEGER NOT NULL REFERENCES hosts (id) ON DELETE CASCADE
      ) STRICT;
      CREATE INDEX host_initiators_by_host ON host_initiators (host_id);
      CREATE TABLE host_luns (
        host_id     INTEGER NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
        lun         INTEGER NOT NULL CHECK (lun BETWEEN 0 AND 16383),
        volume_uuid TEXT NOT NULL REFERENCES volumes (uuid) ON DELETE CASCADE,
        PRIMARY KEY (host_id, lun),
        UNIQUE (host_id, volume_uuid)
      ) STRICT;
      CREATE INDEX host_luns_by_volume ON host_luns (volume_uuid);
      CREATE TABLE default_luns (
        volume_uuid TEXT PRIMARY KEY REFERENCES volumes (uuid) ON DELETE CASCADE,
        lun         INTEGER NOT NULL UNIQUE CHECK (lun BETWEEN 0 AND 16383)
      ) STRICT;
      CREATE TABLE scsi_reservations (
        wwn   TEXT PRIMARY KEY,
        state BLOB NOT NULL
      ) STRICT;
      CREATE TRIGGER scsi_reservations_volume_deleted AFTER DELETE ON volumes BEGIN
        DELETE FROM scsi_reservations WHERE wwn IN (OLD.wwn, 'naa.' || OLD.wwn);
      END;
      CREATE TRIGGER scsi_reservations_identity_renewed AFTER UPDATE OF wwn ON volumes WHEN OLD.wwn <> NEW.wwn BEGIN
        DELETE FROM scsi_reservations WHERE wwn IN (OLD.wwn, 'naa.' || OLD.wwn);
      END;
    `);
    db.prepare("INSERT INTO array_properties (key, value) VALUES ('array_id', ?)").run(randomBytes(6).toString('hex'));
  },
  // 5: injected faults (emulator/fault), kept across restarts unless transient
  (db) => {
    db.exec(`
      CREATE TABLE faults (
        id         TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,
        created_at TEXT NOT NULL
      ) STRICT;
    `);
  },
  // 6: a volume's write cache (emulator/fault/WriteCache.ts): write-through (as before) or volatile
  (db) => {
    db.exec(`
      ALTER TABLE volumes ADD COLUMN write_cache TEXT NOT NULL DEFAULT 'write-through' CHECK (write_cache IN ('write-through', 'volatile'));
    `);
  },
  // 7: remote arrays (emulator/remote): REC pairs reach them by name
  (db) => {
    db.exec(`
      CREATE TABLE remotes (
        name     TEXT PRIMARY KEY,
        api      TEXT NOT NULL,
        array_id TEXT NOT NULL DEFAULT '',
        nbd      TEXT NOT NULL DEFAULT '',
        added_at TEXT NOT NULL,
        buffer   TEXT NOT NULL DEFAULT '{}'
      ) STRICT;
    `);
  },
  // 8: access control (emulator/auth): users (tokens kept as SHA-256 hashes), tenants and their
  // quotas, which tenant owns which object (volumes by UUID, so a rename follows; the triggers
  // forget an owner with its object), the audit log, and the token a remote array is called with.
  (db) => {
    db.exec(`
      CREATE TABLE users (
        name             TEXT PRIMARY KEY,
        role             TEXT NOT NULL,
        tenant           TEXT NOT NULL DEFAULT '',
        token_hash       TEXT UNIQUE,
        cert_subject     TEXT NOT NULL DEFAULT '',
        cert_fingerprint TEXT NOT NULL DEFAULT '',
        created_at       TEXT NOT NULL,
        expires_at       TEXT NOT NULL DEFAULT '',
        rotated_at       TEXT NOT NULL DEFAULT ''
      ) STRICT;
      CREATE TABLE tenants (
        name               TEXT PRIMARY KEY,
        max_capacity_bytes INTEGER NOT NULL DEFAULT 0,
        max_volumes        INTEGER NOT NULL DEFAULT 0,
        max_sessions       INTEGER NOT NULL DEFAULT 0,
        created_at         TEXT NOT NULL
      ) STRICT;
      CREATE TABLE owners (
        kind   TEXT NOT NULL CHECK (kind IN ('volume', 'host', 'cartridge')),
        key    TEXT NOT NULL,
        tenant TEXT NOT NULL,
        PRIMARY KEY (kind, key)
      ) STRICT;
      CREATE TRIGGER owners_volume_gone AFTER DELETE ON volumes BEGIN
        DELETE FROM owners WHERE kind = 'volume' AND key = OLD.uuid;
      END;
      CREATE TRIGGER owners_host_gone AFTER DELETE ON hosts BEGIN
        DELETE FROM owners WHERE kind = 'host' AND key = OLD.name;
      END;
      CREATE TABLE audit (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        at     TEXT NOT NULL,
        user   TEXT NOT NULL,
        tenant TEXT NOT NULL,
        peer   TEXT NOT NULL,
        rpc    TEXT NOT NULL,
        target TEXT NOT NULL,
        result TEXT NOT NULL
      ) STRICT;
      CREATE INDEX audit_at ON audit (at);
      ALTER TABLE remotes ADD COLUMN token TEXT NOT NULL DEFAULT '';
    `);
  },
  // 9: host credentials (HostRecords): how a host proves who it is. NBD: a TLS-PSK identity
  // with its 256-bit key, a client certificate's SHA-256 fingerprint (64 lower-case hex digits)
  // and a certificate subject CN, each naming at most one host; iSCSI: the host's CHAP user and
  // secret, and the target's for mutual CHAP. Keys and secrets are kept as they are (an
  // initiator's CHAP needs the secret itself): the database file must stay private (0600).
  (db) => {
    db.exec(`
      CREATE TABLE host_credentials (
        host_id            INTEGER PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
        nbd_psk_identity   TEXT UNIQUE,
        nbd_psk_key        BLOB CHECK (nbd_psk_key IS NULL OR length(nbd_psk_key) = 32),
        nbd_cert_sha256    TEXT UNIQUE CHECK (nbd_cert_sha256 IS NULL OR (length(nbd_cert_sha256) = 64 AND nbd_cert_sha256 NOT GLOB '*[^0-9a-f]*')),
        nbd_cert_subject   TEXT UNIQUE,
        chap_user          TEXT,
        chap_secret        TEXT,
        chap_mutual_user   TEXT,
        chap_mutual_secret TEXT,
        CHECK ((nbd_psk_identity IS NULL) = (nbd_psk_key IS NULL)),
        CHECK ((chap_user IS NULL) = (chap_secret IS NULL)),
        CHECK ((chap_mutual_user IS NULL) = (chap_mutual_secret IS NULL)),
        CHECK (chap_mutual_user IS NULL OR chap_user IS NOT NULL)
      ) STRICT;
    `);
  },
];

/** A remote array as the metadata store keeps it. */
export interface RemoteRow {
  name: string;
  api: string;
  arrayId: string;
  nbd: string;
  addedAt: string;
  /** REC buffer settings set for it (JSON of RecBufferSettings, the ones set only). */
  buffer: string;
  /** The token this array calls it with ('': found as any client finds one). */
  token?: string;
}

/** One commit of the copy-session journal (SqliteSessionJournal.sync). */
export interface CopyJournalBatch {
  /** Session ids to delete (with their bitmaps), applied first. */
  deletes: string[];
  /** id -> record JSON, inserted or replaced. */
  puts: Map<string, string>;
  /** Chunks to write; bits === undefined deletes the chunk (all clear). */
  chunks: Array<{ sessionId: string; bitmap: string; index: number; bits: Buffer | undefined }>;
}

export interface CopySessionRow {
  id: string;
  record: string;
  chunks: Array<{ bitmap: string; index: number; bits: Buffer }>;
}

export const SCHEMA_VERSION = MIGRATIONS.length;

function toRecord(r: VolumeRow): VolumeRecord {
  return {
    name: r.name,
    uuid: r.uuid,
    wwn: r.wwn,
    serial: r.serial,
    sizeBytes: r.size_bytes,
    blockSize: r.block_size as LogicalBlockSize,
    provisioning: r.provisioning as Provisioning,
    readOnly: r.read_only !== 0,
    description: r.description,
    createdAt: r.created_at,
    allocLimitBytes: r.alloc_limit_bytes,
    writeCache: r.write_cache === 'volatile' ? 'volatile' : 'write-through',
  };
}

export class MetadataStore {
  private readonly db: Database.Database;
  private readonly stmts: {
    list: Database.Statement<[], VolumeRow>;
    insert: Database.Statement<[VolumeRow]>;
    remove: Database.Statement<[string]>;
    resize: Database.Statement<[number, string]>;
    setAllocLimit: Database.Statement<[number | null, string]>;
    setWriteCache: Database.Statement<[string, string]>;
    copyPut: Database.Statement<[string, string]>;
    copyDelete: Database.Statement<[string]>;
    chunkPut: Database.Statement<[string, string, number, Buffer]>;
    chunkDelete: Database.Statement<[string, string, number]>;
  };
  private readonly commitCopy: (batches: CopyJournalBatch[]) => void;
  private readonly renameTx: (uuid: string, oldName: string, newName: string, identity: { wwn: string; serial: string } | undefined) => void;

  /**
   * @param file a path, or ':memory:' for the memory backend.
   * @param opts.exclusive hold the database locked until close(), so that a second process
   *   opening the same file fails (SQLITE_BUSY) instead of sharing the array's files.
   */
  constructor(
    private readonly file: string,
    opts: { exclusive?: boolean } = {},
  ) {
    this.db = new Database(file, { timeout: 2000 });
    try {
      if (opts.exclusive) this.db.pragma('locking_mode = EXCLUSIVE'); // before WAL: no shared-memory index
      if (file !== ':memory:') this.db.pragma('journal_mode = WAL');
      // Take the write lock now rather than at the first change.
      if (opts.exclusive) this.db.exec('BEGIN EXCLUSIVE; COMMIT');
      this.db.pragma('synchronous = FULL');
      this.db.pragma('foreign_keys = ON');
      this.migrate();
    } catch (err) {
      this.db.close();
      throw err;
    }
    this.stmts = {
      list: this.db.prepare<[], VolumeRow>('SELECT * FROM volumes ORDER BY name'),
      insert: this.db.prepare<[VolumeRow]>(
        `INSERT INTO volumes (uuid, name, wwn, serial, size_bytes, block_size, provisioning, read_only, description, created_at, alloc_limit_bytes, write_cache)
         VALUES (@uuid, @name, @wwn, @serial, @size_bytes, @block_size, @provisioning, @read_only, @description, @created_at, @alloc_limit_bytes, @write_cache)`,
      ),
      remove: this.db.prepare<[string]>('DELETE FROM volumes WHERE uuid = ?'),
      resize: this.db.prepare<[number, string]>('UPDATE volumes SET size_bytes = ? WHERE uuid = ?'),
      setAllocLimit: this.db.prepare<[number | null, string]>('UPDATE volumes SET alloc_limit_bytes = ? WHERE uuid = ?'),
      setWriteCache: this.db.prepare<[string, string]>('UPDATE volumes SET write_cache = ? WHERE uuid = ?'),
      copyPut: this.db.prepare<[string, string]>(
        'INSERT INTO copy_sessions (id, record) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET record = excluded.record',
      ),
      copyDelete: this.db.prepare<[string]>('DELETE FROM copy_sessions WHERE id = ?'),
      chunkPut: this.db.prepare<[string, string, number, Buffer]>(
        'INSERT INTO copy_bitmaps (session_id, bitmap, chunk_index, bits) VALUES (?, ?, ?, ?) ON CONFLICT (session_id, bitmap, chunk_index) DO UPDATE SET bits = excluded.bits',
      ),
      chunkDelete: this.db.prepare<[string, string, number]>('DELETE FROM copy_bitmaps WHERE session_id = ? AND bitmap = ? AND chunk_index = ?'),
    };
    this.commitCopy = this.db.transaction((batches: CopyJournalBatch[]) => {
      for (const batch of batches) {
        for (const id of batch.deletes) this.stmts.copyDelete.run(id);
        for (const [id, json] of batch.puts) this.stmts.copyPut.run(id, json);
        for (const c of batch.chunks) {
          if (c.bits === undefined) this.stmts.chunkDelete.run(c.sessionId, c.bitmap, c.index);
          else this.stmts.chunkPut.run(c.sessionId, c.bitmap, c.index, c.bits);
        }
      }
    });
    const renameRow = this.db.prepare<[string, string | null, string | null, string, string]>(
      'UPDATE volumes SET name = ?, wwn = coalesce(?, wwn), serial = coalesce(?, serial) WHERE uuid = ? AND name = ?',
    );
    const allSessions = this.db.prepare<[], { id: string; record: string }>('SELECT id, record FROM copy_sessions');
    const setRecord = this.db.prepare<[string, string]>('UPDATE copy_sessions SET record = ? WHERE id = ?');
    this.renameTx = this.db.transaction((uuid: string, oldName: string, newName: string, identity: { wwn: string; serial: string } | undefined) => {
      const changed = renameRow.run(newName, identity?.wwn ?? null, identity?.serial ?? null, uuid, oldName).changes;
      if (changed !== 1) throw new Error(`no volume ${oldName} with uuid ${uuid} in the database`);
      for (const row of allSessions.all()) {
        const r = JSON.parse(row.record) as { source?: unknown; destination?: unknown };
        if (r.source !== oldName && r.destination !== oldName) continue;
        const renamed = { ...r, ...(r.source === oldName ? { source: newName } : {}), ...(r.destination === oldName ? { destination: newName } : {}) };
        setRecord.run(JSON.stringify(renamed), row.id);
      }
    });
  }

  listRemotes(): RemoteRow[] {
    return this.db
      .prepare<[], { name: string; api: string; array_id: string; nbd: string; added_at: string; buffer: string; token: string }>(
        'SELECT * FROM remotes ORDER BY name',
      )
      .all()
      .map((r) => ({ name: r.name, api: r.api, arrayId: r.array_id, nbd: r.nbd, addedAt: r.added_at, buffer: r.buffer, token: r.token }));
  }

  /** Inserts or replaces a remote (what add and a learnt address write). */
  putRemote(r: RemoteRow): void {
    this.db
      .prepare<[string, string, string, string, string, string, string]>(
        'INSERT INTO remotes (name, api, array_id, nbd, added_at, buffer, token) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET api = excluded.api, array_id = excluded.array_id, nbd = excluded.nbd, buffer = excluded.buffer, token = excluded.token',
      )
      .run(r.name, r.api, r.arrayId, r.nbd, r.addedAt, r.buffer, r.token ?? '');
  }

  deleteRemote(name: string): void {
    this.db.prepare<[string]>('DELETE FROM remotes WHERE name = ?').run(name);
  }

  /** Writes journal batches, in order, in one transaction (durable on return: synchronous=FULL). */
  commitCopyJournal(...batches: CopyJournalBatch[]): void {
    this.commitCopy(batches);
  }

  /**
   * A failed write as users should see it: a full disk (SQLITE_FULL) becomes a CopyError
   * RESOURCE_EXHAUSTED naming the data directory and the fix (nothing was written: the
   * transaction rolled back); anything else is returned as it is.
   */
  explainWriteError(err: unknown): unknown {
    const failure = this.writeFailure(err);
    return failure?.code === 'RESOURCE_EXHAUSTED' ? new CopyError(failure.code, failure.reason) : err;
  }

  /**
   * Why a write of this database failed, in users' words: a full disk (SQLITE_FULL) is
   * RESOURCE_EXHAUSTED naming the data directory and the fix, another SQLite error INTERNAL;
   * undefined for an error that is not SQLite's. A failed statement or transaction wrote nothing.
   */
  writeFailure(err: unknown): { code: 'RESOURCE_EXHAUSTED' | 'INTERNAL'; reason: string } | undefined {
    if ((err as { code?: unknown } | undefined)?.code === 'SQLITE_FULL') {
      const where =
        this.file === ':memory:' ? "the array's in-memory database is full" : `the array's data directory ${path.dirname(path.resolve(this.file))} is full`;
      return { code: 'RESOURCE_EXHAUSTED', reason: `${where} (SQLITE_FULL); free space there and retry` };
    }
    if (err instanceof Database.SqliteError)
      return { code: 'INTERNAL', reason: `the array database could not be written (${err.code}: ${err.message}); nothing changed` };
    return undefined;
  }

  /** Every copy session with its bitmap chunks, in creation order. */
  listCopySessions(): CopySessionRow[] {
    const sessions = this.db.prepare('SELECT id, record FROM copy_sessions ORDER BY seq').all() as Array<{ id: string; record: string }>;
    const chunks = this.db.prepare('SELECT session_id, bitmap, chunk_index, bits FROM copy_bitmaps ORDER BY session_id, bitmap, chunk_index').all() as Array<{
      session_id: string;
      bitmap: string;
      chunk_index: number;
      bits: Buffer;
    }>;
    const byId = new Map<string, CopySessionRow>(sessions.map((s) => [s.id, { id: s.id, record: s.record, chunks: [] }]));
    for (const c of chunks) byId.get(c.session_id)?.chunks.push({ bitmap: c.bitmap, index: c.chunk_index, bits: c.bits });
    return [...byId.values()];
  }

  /**
   * The connection, for the array's other record stores (HostRecords, SqliteReservationStore),
   * which own their statements; the schema stays here, in the migrations.
   */
  get sqlite(): Database.Database {
    return this.db;
  }

  /** A random id made once per database (12 hex digits): the default target name's suffix. */
  get arrayId(): string {
    return (this.db.prepare("SELECT value FROM array_properties WHERE key = 'array_id'").get() as { value: string }).value;
  }

  get isOpen(): boolean {
    return this.db.open;
  }

  get schemaVersion(): number {
    return (this.db.prepare('SELECT version FROM schema_version').get() as { version: number }).version;
  }

  listVolumes(): VolumeRecord[] {
    return this.stmts.list.all().map(toRecord);
  }

  insertVolume(v: VolumeRecord): void {
    this.stmts.insert.run({
      uuid: v.uuid,
      name: v.name,
      wwn: v.wwn,
      serial: v.serial,
      size_bytes: v.sizeBytes,
      block_size: v.blockSize,
      provisioning: v.provisioning,
      read_only: v.readOnly ? 1 : 0,
      description: v.description,
      created_at: v.createdAt,
      alloc_limit_bytes: v.allocLimitBytes ?? null,
      write_cache: v.writeCache ?? 'write-through',
    });
  }

  deleteVolume(uuid: string): void {
    this.stmts.remove.run(uuid);
  }

  setVolumeSize(uuid: string, sizeBytes: number): void {
    this.stmts.resize.run(sizeBytes, uuid);
  }

  setVolumeWriteCache(uuid: string, mode: 'write-through' | 'volatile'): void {
    this.stmts.setWriteCache.run(mode, uuid);
  }

  /** null removes the limit. */
  setVolumeAllocLimit(uuid: string, limitBytes: number | null): void {
    this.stmts.setAllocLimit.run(limitBytes, uuid);
  }

  /**
   * Renames a volume, optionally with a new WWN and serial, and rewrites the source and
   * destination of every copy-session record that names it, in ONE transaction: after a crash
   * the database holds either the old name everywhere or the new one everywhere (the copy
   * journal's records live in this database, so they cannot disagree with the volume row).
   * Bitmaps are keyed by session id and need no change. Throws (and changes nothing) if the
   * row is not (uuid, oldName) or a record does not parse.
   */
  renameVolume(uuid: string, oldName: string, newName: string, identity?: { wwn: string; serial: string }): void {
    this.renameTx(uuid, oldName, newName, identity);
  }

  /** Faults kept across restarts, in the order they were added. */
  loadFaults(): Fault[] {
    const rows = this.db.prepare<[], { id: string; spec: string; created_at: string }>('SELECT id, spec, created_at FROM faults ORDER BY rowid').all();
    return rows.map((r) => ({ ...(JSON.parse(r.spec) as FaultSpec), id: r.id, createdAt: r.created_at }));
  }

  saveFault(f: Fault): void {
    const { id, createdAt, ...spec } = f;
    this.db
      .prepare<[string, string, string]>('INSERT INTO faults (id, spec, created_at) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET spec = excluded.spec')
      .run(id, JSON.stringify(spec), createdAt);
  }

  /** The next fault number (ids are never reused, transient or not); counts up durably. */
  takeFaultNumber(): number {
    const row = this.db
      .prepare<[], { value: string }>(
        "INSERT INTO array_properties (key, value) VALUES ('next_fault', '2') ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 RETURNING value",
      )
      .get()!;
    return Number(row.value) - 1;
  }

  removeFault(id: string): void {
    this.db.prepare<[string]>('DELETE FROM faults WHERE id = ?').run(id);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  private migrate(): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
    const row = this.db.prepare('SELECT version FROM schema_version').get() as { version: number } | undefined;
    if (row === undefined) this.db.prepare('INSERT INTO schema_version (version) VALUES (0)').run();
    const current = row?.version ?? 0;
    if (current > MIGRATIONS.length) {
      throw new Error(
        `the database is at schema version ${current}, newer than this arraylab understands (${MIGRATIONS.length}); run a newer arraylab or use another data directory`,
      );
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        MIGRATIONS[v]!(this.db);
        this.db.prepare('UPDATE schema_version SET version = ?').run(v + 1);
      })();
    }
  }
}
