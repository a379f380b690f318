/**
 * The storage array: volumes, their stores, their identities, and who has them open.
 *
 * Layout of a 'file' array's data directory:
 *   arraylab.db                 volume records (MetadataStore)
 *   volumes/<uuid>.data         a volume's data (FileBlockStore)
 *   volumes/<uuid>.map          its allocation map
 *
 * Crash safety of volume life cycle (kill -9 at any point leaves no volume or a whole one):
 *   create  the store's files are created and synced first, the row inserted last (its
 *           commit is durable: synchronous=FULL). A crash before the commit leaves files
 *           that no row names: open() removes them as orphans; a failed commit (a full disk)
 *           removes them at once.
 *   delete  the row is deleted first, the files removed after. A crash in between leaves
 *           orphan files, removed on the next open. The refusals, the row and the array's
 *           memory change in one synchronous step, so a failed delete (a full disk) leaves
 *           the volume whole and in use, as if it had not been asked.
 *   resize  the store grows (durably) before the row records the new size. A crash in
 *           between leaves a store larger than its row: open() takes the store's size.
 *   rename  one SQLite transaction renames the row (and with a new identity sets its WWN and
 *           serial) and rewrites the copy-session records that name the volume; files are
 *           named by UUID and do not move. In memory the array's and the engine's maps change
 *           in the same synchronous step, under the engine's queue and a cut of the volume
 *           (CopyEngine.renameVolume explains the order). Refused while clients have it open.
 * A row is therefore never without its files, except after outside damage, which open()
 * reports rather than hides. A database write that fails (SQLITE_FULL on a full disk) changes
 * nothing and is RESOURCE_EXHAUSTED naming the data directory (dbWrite); only a resize leaves
 * its grown store behind (a store cannot shrink), which a retry or the next start records.
 *
 * Copy sessions. The array owns one CopyEngine (emulator/copy/). Every volume is adopted by
 * it (its layer pushed) before any client can reach the volume, and the sessions in the
 * journal (SqliteSessionJournal, in the same database) are recovered once at open. Copy
 * control operations that start sessions or change their volumes' roles run through the same
 * queue as create/resize/delete, so a volume cannot be deleted while a session on it is
 * being started. Delete is refused while a volume is in a session; resize is refused while it
 * is in an EC or SnapOPC+ session (a session covers the source's size at its start).
 *
 * Host affinity (HostAffinity.ts) decides which iSCSI initiator sees which volume at which LUN;
 * its records sit in the same database and follow volumes by UUID. The array tells it when
 * volumes come, go or are renamed; it tells its listeners (the iSCSI target).
 *
 * One process per data directory: the database is held with an exclusive lock for the
 * array's lifetime, so a second arraylab on the same directory fails at once instead of
 * writing the same files.
 *
 * Control operations (create, resize, delete, close) run one at a time; block I/O never
 * waits for them.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { BlockDeviceError, type ClientInfo, type ExportHandle, type ExportProvider, type ExportSummary } from '../block/BlockDevice.js';
import { FileBlockStore, type FileBlockStorePaths } from '../block/FileBlockStore.js';
import { MemoryBlockStore } from '../block/MemoryBlockStore.js';
import { CopyEngine, type OverwriteCheck, type StartOptions } from '../copy/CopyEngine.js';
import { COPY_TYPE_NAMES, CopyError, type CopyEvent, type CopyType, isRemoteVolume, REC_MODES, type RecMode, type SessionInfo } from '../copy/CopySession.js';
import type { RemoteEndState } from '../copy/SessionBase.js';
import type { SessionBitmap } from '../copy/sessionBitmap.js';
import type { VolumeIoStats } from '../metrics/VolumeIo.js';
import { RemoteArrays } from '../remote/RemoteArrays.js';
import { CycleStage } from '../remote/CycleStage.js';
import { type OpenRemoteEndParams, type RemoteEndStateParams, REPLICA_EXPORT_PREFIX, ReplicaDevice, recOptions, replicaHandle } from '../remote/replica.js';
import { formatSize } from '../../proto/util/units.js';
import { HostAffinity, type VolumeDirectory } from './HostAffinity.js';
import { HostRecords } from './HostRecords.js';
import { newVolumeIdentity, renewedIdentity } from './identity.js';
import { DATABASE_FILE, MetadataStore, type VolumeRecord } from './MetadataStore.js';
import { SqliteReservationStore } from './SqliteReservationStore.js';
import { AccessStore } from '../auth/AccessStore.js';
import { SqliteSessionJournal } from './SqliteSessionJournal.js';
import {
  ArrayError,
  VOLUME_NAME_PATTERN,
  type ConnectionInfo,
  type CreateVolumeRequest,
  type Provisioning,
  type RenameVolumeOptions,
  type VolumeInfo,
  type VolumeSpec,
} from './types.js';
import { Volume, type VolumeStore } from './Volume.js';
import { FaultEngine } from '../fault/FaultEngine.js';
import type { EventLog } from '../events/EventLog.js';
import { cutPower, parsePowerCut, type PowerCutResult } from '../fault/powerCut.js';
import { isWriteCacheMode, type WriteCacheMode } from '../fault/WriteCache.js';

export interface StorageArrayOptions {
  backend: 'file' | 'memory';
  /** Required for 'file'; created if missing. */
  dataDir?: string;
  logger: Logger;
  /** Copy engine clock (tests: 'manual' drives the copier with array.copy.step()). */
  copyClock?: 'timers' | 'manual';
  /** Host affinity even while no host is defined (iscsi.requireHostAffinity). */
  requireHostAffinity?: boolean;
}

export interface StartCopyRequest {
  type: CopyType;
  source: string;
  destination: string;
  /** Background copy rate in bytes/s: 0 = none; undefined or Infinity = unthrottled. */
  rate?: number;
  /** Consistency group label. */
  group?: string;
  /** Start even if the destination is exported read-write to a connected client. */
  force?: boolean;
  /** REC: sync | stack | through (default sync); split auto | manual; recovery auto | manual. */
  mode?: string | undefined;
  split?: string | undefined;
  recovery?: string | undefined;
  /** Copy granularity in bytes (default 64 KiB). */
  unitSize?: number;
  /** SnapOPC+: with 8 generations already, refuse instead of dropping the oldest. */
  refuseIfFull?: boolean;
}

export interface ExportDescription extends ExportSummary {
  size: number;
  blockSize: number;
  readOnly: boolean;
  thin: boolean;
}

const VOLUMES_DIR = 'volumes';
const MAX_DESCRIPTION = 1024;

export class StorageArray implements ExportProvider {
  private readonly volumes = new Map<string, Volume>();
  /** The same volumes by UUID, for host affinity's LUN maps (which name volumes by UUID). */
  private readonly byUuid = new Map<string, Volume>();
  /** Names being created right now: reserved so two creates cannot race to the same name. */
  private readonly creating = new Set<string>();
  private queue: Promise<unknown> = Promise.resolve();
  private closing: Promise<void> | undefined;
  private readonly journal: SqliteSessionJournal;
  /** The copy engine; control operations that start sessions go through startCopy() etc. */
  readonly copy: CopyEngine;
  /** Hosts, their initiators and LUN maps; the iSCSI target's LUN source. */
  readonly hosts: HostAffinity;
  /** The event stream, once attachEvents() was called (api.events: on); nothing is recorded without it. */
  private events: EventLog | undefined = undefined;
  /** Host I/O counters and latencies (the metrics, when on); each open's device counts into them. */
  io: VolumeIoStats | undefined = undefined;
  /** A copy session's volumes, kept while it lives so its last events still name them. */
  private readonly sessionVolumes = new Map<string, string[]>();
  /** Persistent reservations that survive restarts (APTPL), for the iSCSI target. */
  readonly reservations: SqliteReservationStore;
  /** Users, tenants, ownership and the audit log (emulator/auth), in the metadata database. */
  readonly accessStore: AccessStore;
  /** Injected faults (emulator/fault): host I/O, connections, copy sessions, tape, the API, remote links. */
  readonly faults: FaultEngine;
  /** The other arrays this one knows (REC). */
  readonly remotes: RemoteArrays;
  /** Remote ends in consistency mode: each pair's cycle stage, opened when it starts staging. */
  private readonly stages = new Map<string, CycleStage>();
  /** Until when (ms) a power cut keeps connections out. */
  private poweredOffUntil = 0;
  /** Set by whoever serves tape (ArrayServer), so faults can name cartridges. */
  tapeExists: (label: string) => boolean = () => false;

  private constructor(
    private readonly backend: 'file' | 'memory',
    private readonly volumesDir: string | undefined,
    private readonly db: MetadataStore,
    private readonly log: Logger,
    copyClock: 'timers' | 'manual' = 'timers',
    requireHostAffinity = false,
  ) {
    this.journal = new SqliteSessionJournal(db);
    this.hosts = new HostAffinity(new HostRecords(db), this.volumeDirectory(), log, { requireHostAffinity });
    this.reservations = new SqliteReservationStore(db);
    this.accessStore = new AccessStore(db.sqlite);
    this.remotes = new RemoteArrays({
      db,
      log,
      arrayId: db.arrayId,
      faults: () => this.faults,
      sessionsUsing: (remote) => this.copy.list().filter((s) => s.remote?.role === 'source' && s.remote.peer === remote).length,
      onBufferSettings: (remote, settings) => this.copy.recBufferOf(remote)?.configure(settings),
    });
    this.copy = new CopyEngine({
      journal: this.journal,
      clock: copyClock,
      faults: { copyFault: (...a) => this.faults.copyFault(...a) },
      remote: this.remotes,
    });
    this.faults = new FaultEngine({
      logger: log,
      store: db,
      targets: {
        volumeExists: (name) => this.volumes.has(name),
        sessionExists: (id) => this.copy.list().some((s) => s.id === id),
        tapeExists: (label) => this.tapeExists(label),
        setFaultPoint: (name, point) => {
          const v = this.volumes.get(name);
          if (v !== undefined) v.faults = point;
        },
        signalExport: (name, event) => {
          const v = this.volumes.get(name);
          if (v === undefined) return 0;
          const handles = [...v.handles];
          for (const h of handles) h.signal(event);
          return handles.length;
        },
      },
    });
    this.faults.remoteExists = (name) => this.remotes.list().some((r) => r.name === name);
    this.copy.onEvent((e) => {
      const fields = { sessionId: e.sessionId, kind: e.kind, state: e.state };
      if (e.kind === 'error') this.log.warn(fields, e.message);
      else this.log.info(fields, e.message);
      if (this.events !== undefined) this.copyEventToLog(this.events, e);
    });
  }

  /** Turns the event stream on: from now on the array, its hosts and its faults record their events in log. */
  attachEvents(log: EventLog): void {
    this.events = log;
    this.hosts.events = log;
    this.faults.eventLog = log;
  }

  private copyEventToLog(log: EventLog, e: CopyEvent): void {
    let volumes = this.sessionVolumes.get(e.sessionId);
    if (volumes === undefined) {
      const s = this.copy.list().find((x) => x.id === e.sessionId);
      volumes = s === undefined ? [] : [s.source, s.destination].filter((v) => v !== '' && !v.includes(':'));
      // Not cached while the session is not listed yet (its first event can come before it
      // is): its later events would lose their volumes, and with them the tenant's view.
      if (s !== undefined) this.sessionVolumes.set(e.sessionId, volumes);
    }
    if (e.kind === 'completed' || e.kind === 'cancelled' || e.kind === 'dropped') this.sessionVolumes.delete(e.sessionId);
    log.add({
      kind: `copy.${e.kind}`,
      subject: { kind: 'session', name: e.sessionId },
      message: e.message,
      fields: { state: e.state, source: volumes[0], destination: volumes[1] },
      volumes,
    });
  }

  static async open(opts: StorageArrayOptions): Promise<StorageArray> {
    const log = opts.logger;
    if (opts.backend === 'memory') {
      const array = new StorageArray('memory', undefined, new MetadataStore(':memory:'), log, opts.copyClock, opts.requireHostAffinity);
      array.hosts.load();
      array.faults.load();
      array.remotes.load();
      await array.copy.recover();
      await array.recoverRemoteEnds();
      return array;
    }
    if (opts.backend !== 'file') {
      throw new ArrayError('INVALID_ARGUMENT', `unknown backend "${String(opts.backend)}": use file or memory`);
    }
    if (!opts.dataDir) {
      throw new ArrayError('INVALID_ARGUMENT', 'the file backend needs a data directory: set dataDir (--data-dir)');
    }
    const dataDir = path.resolve(opts.dataDir);
    const volumesDir = path.join(dataDir, VOLUMES_DIR);
    await fsp.mkdir(volumesDir, { recursive: true, mode: 0o700 });
    // Only the array's user reads its data: volumes, the database (tokens' hashes, CHAP secrets, NBD PSKs), tape.
    await keepPrivate(dataDir);
    await keepPrivate(volumesDir);
    let db: MetadataStore;
    try {
      db = new MetadataStore(path.join(dataDir, DATABASE_FILE), { exclusive: true });
      for (const suffix of ['', '-wal', '-shm']) await fsp.chmod(path.join(dataDir, DATABASE_FILE + suffix), 0o600).catch(() => undefined);
    } catch (err) {
      if (isLockError(err)) {
        throw new ArrayError('FAILED_PRECONDITION', `data directory ${dataDir} is in use by another arraylab process; stop it or use another data directory`);
      }
      throw new ArrayError('INTERNAL', `cannot open the array database in ${dataDir}: ${(err as Error).message}`);
    }
    const array = new StorageArray('file', volumesDir, db, log, opts.copyClock, opts.requireHostAffinity);
    try {
      await array.loadVolumes();
      array.hosts.load();
      array.faults.load();
      array.remotes.load();
      const sessions = await array.copy.recover();
      await array.recoverRemoteEnds();
      if (sessions.length > 0) log.info({ sessions: sessions.map((s) => ({ id: s.id, type: s.type, state: s.state })) }, 'recovered copy sessions');
    } catch (err) {
      await array.closeAll();
      throw err;
    }
    return array;
  }

  /** A random id made with the database (12 hex digits); stable for a data directory. */
  get arrayId(): string {
    return this.db.arrayId;
  }

  // ---- volumes ----

  createVolume(req: CreateVolumeRequest): Promise<VolumeInfo> {
    return this.serially(() => this.doCreate(req));
  }

  listVolumes(): VolumeInfo[] {
    return [...this.volumes.values()]
      .filter((v) => !v.deleting)
      .map((v) => v.info())
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  getVolume(name: string): VolumeInfo {
    return this.volume(name).info();
  }

  resizeVolume(name: string, newSizeBytes: number): Promise<VolumeInfo> {
    return this.serially(() => this.doResize(name, newSizeBytes));
  }

  deleteVolume(name: string): Promise<void> {
    return this.serially(() => this.doDelete(name));
  }

  /**
   * Sets a thin volume's allocation limit in bytes (null: none): writes that would allocate
   * past it fail ENOSPC. A limit below what is allocated already is allowed: overwrites go on,
   * new allocations fail until trims bring the volume under it.
   */
  setVolumeAllocLimit(name: string, limitBytes: number | null): Promise<VolumeInfo> {
    return this.serially(async () => this.doSetAllocLimit(name, limitBytes));
  }

  /** Volatile write cache on or off (write-through); switching to write-through destages and flushes first. */
  setVolumeWriteCache(name: string, mode: WriteCacheMode): Promise<VolumeInfo> {
    return this.serially(async () => {
      const v = this.volume(name);
      if (!isWriteCacheMode(mode))
        throw new ArrayError('INVALID_ARGUMENT', `invalid write cache mode ${JSON.stringify(mode)} for volume ${name}: use volatile or write-through`);
      await this.dbWrite(`set the write cache of volume ${name}`, () => v.setWriteCacheMode(this.db, mode));
      this.log.info({ volume: name, writeCache: mode }, 'set volume write cache');
      return v.info();
    });
  }

  /**
   * A power cut (emulator/fault/powerCut.ts): every connection drops, volatile caches lose
   * their unflushed writes as the policy says, and connections are refused for downMs.
   */
  async powerCut(req: { policy?: string; seed?: number | undefined; downMs?: number }): Promise<PowerCutResult> {
    const opts = parsePowerCut(req);
    if (typeof opts === 'string') throw new ArrayError('INVALID_ARGUMENT', opts);
    this.poweredOffUntil = Number.POSITIVE_INFINITY;
    let result: PowerCutResult;
    try {
      result = await cutPower(
        [...this.volumes.values()].filter((v) => !v.deleting).map((v) => ({ name: v.name, cache: v.writeCache, connections: v.handles })),
        opts,
      );
    } finally {
      this.poweredOffUntil = Date.now() + opts.downMs;
    }
    const lost = result.volumes.reduce((n, v) => n + v.writesLost, 0);
    this.log.warn(
      { ...opts, connectionsDropped: result.connectionsDropped, volumes: result.volumes },
      `power cut (${opts.policy}): ${lost} unflushed writes lost`,
    );
    this.faults.note(
      'power-cut',
      'array',
      `power cut (${opts.policy}, seed ${opts.seed}): dropped ${result.connectionsDropped} connections, down ${opts.downMs} ms`,
    );
    for (const v of result.volumes) {
      this.faults.note(
        'power-cut',
        `volume:${v.name}`,
        `${v.writesLost} unflushed writes lost (${v.bytesLost} bytes), ${v.writesKept} kept, ${v.writesTorn} torn`,
      );
    }
    return result;
  }

  /**
   * Renames a volume (and its export); with newIdentity it also gets a fresh serial and WWN
   * (the UUID stays). Allowed while the volume is in a copy session, refused while a client
   * has it open. Crash-atomic: see "rename" at the top of this file.
   */
  renameVolume(oldName: string, newName: string, opts: RenameVolumeOptions = {}): Promise<VolumeInfo> {
    return this.serially(() => this.doRename(oldName, newName, opts.newIdentity ?? false));
  }

  listConnections(): ConnectionInfo[] {
    const out: Array<ConnectionInfo & { at: number }> = [];
    for (const v of this.volumes.values()) {
      for (const h of v.handles) out.push({ volume: v.name, client: h.client, openedAt: h.openedAt.toISOString(), at: h.openedAt.getTime() });
    }
    out.sort((a, b) => (a.volume < b.volume ? -1 : a.volume > b.volume ? 1 : a.at - b.at));
    return out.map(({ at: _at, ...c }) => c);
  }

  // ---- copy sessions ----

  startCopy(req: StartCopyRequest): Promise<SessionInfo> {
    return this.serially(() =>
      this.destaged(() =>
        copyCall(async () => {
          const { type, source, destination } = req;
          this.checkCopyStart(req);
          const opts: StartOptions = {
            ...(req.rate !== undefined ? { rate: req.rate } : {}),
            ...(req.unitSize !== undefined ? { unitSize: req.unitSize } : {}),
            ...(req.group ? { group: req.group } : {}),
          };
          switch (type) {
            case 'opc':
              return this.copy.startOpc(source, destination, opts);
            case 'quickopc':
              return this.copy.startQuickOpc(source, destination, opts);
            case 'ec':
              return this.copy.startEc(source, destination, opts);
            case 'snapopcplus':
              return this.copy.startSnapOpcPlus(source, destination, {
                ...(req.unitSize !== undefined ? { unitSize: req.unitSize } : {}),
                ...(req.group ? { group: req.group } : {}),
                ...(req.refuseIfFull ? { refuseIfFull: true } : {}),
              });
            case 'rec':
            case 'ropc':
              return this.copy.startRec(source, destination, {
                type,
                ...opts,
                ...recOptions(req),
                ...(req.force ? { force: true } : {}),
              });
          }
        }),
      ),
    );
  }

  /**
   * A consistency group start: every pair at one instant, under one label; refused as a whole
   * if any pair would be.
   */
  startCopyGroup(group: string, reqs: StartCopyRequest[]): Promise<SessionInfo[]> {
    return this.serially(() =>
      this.destaged(() =>
        copyCall(async () => {
          checkGroupName(group);
          if (reqs.length === 0) throw new ArrayError('INVALID_ARGUMENT', `consistency group ${group}: give at least one pair to start`);
          for (const r of reqs) this.checkCopyStart(r);
          if (reqs.some((r) => r.type === 'rec' || r.type === 'ropc')) {
            throw new ArrayError('INVALID_ARGUMENT', `consistency group ${group}: REC pairs cannot be started in a group yet; start them one by one`);
          }
          if (reqs.some((r) => r.refuseIfFull)) {
            // A group is all or none, and a refusal is decided in the middle of the cut.
            throw new ArrayError(
              'INVALID_ARGUMENT',
              `consistency group ${group}: --refuse-if-full applies to single starts; start the pairs one by one, or cancel the oldest generations first`,
            );
          }
          return this.copy.group(
            reqs.map((r) => ({
              op: r.type as Exclude<CopyType, 'rec' | 'ropc'>,
              source: r.source,
              destination: r.destination,
              group,
              ...(r.rate !== undefined ? { rate: r.rate } : {}),
              ...(r.unitSize !== undefined ? { unitSize: r.unitSize } : {}),
            })),
          );
        }),
      ),
    );
  }

  /**
   * EC suspends or splits of several pairs at one instant: the sessions named, or every EC
   * session started with the group label.
   */
  cutCopyGroup(op: 'suspend' | 'split', sel: { ids?: string[]; group?: string }): Promise<SessionInfo[]> {
    return this.serially(() =>
      this.destaged(() =>
        copyCall(async () => {
          const ids = [...(sel.ids ?? [])];
          if (sel.group) {
            const members = this.copy.list().filter((s) => s.group === sel.group);
            // EC pairs and the REC pairs this array sends (Concurrent Suspend across arrays' links).
            const ec = members.filter((s) => s.type === 'ec' || (s.type === 'rec' && s.remote?.role === 'source'));
            if (ec.length === 0) {
              throw new ArrayError(
                'NOT_FOUND',
                members.length === 0
                  ? `no copy sessions in consistency group ${sel.group}; start them with --group ${sel.group}`
                  : `consistency group ${sel.group} has no EC or REC sessions (${members.length} other); only EC and REC pairs ${op}`,
              );
            }
            ids.push(...ec.map((s) => s.id));
          }
          if (ids.length === 0) throw new ArrayError('INVALID_ARGUMENT', `${op}: give session ids or a group`);
          return this.copy.group([...new Set(ids)].map((id) => ({ op, id })));
        }),
      ),
    );
  }

  /** The refusals the array adds to the engine's for a new session. */
  private checkCopyStart(req: StartCopyRequest): void {
    const { type, source, destination } = req;
    if (req.group) checkGroupName(req.group);
    if (!(type in COPY_TYPE_NAMES))
      throw new ArrayError('INVALID_ARGUMENT', `unknown copy type ${JSON.stringify(type)}: use opc, quickopc, snapopcplus, ec or rec`);
    const what = `cannot start ${COPY_TYPE_NAMES[type]} ${source} -> ${destination}`;
    if (type === 'rec' || type === 'ropc' || isRemoteVolume(destination)) {
      if (type !== 'rec' && type !== 'ropc') {
        throw new ArrayError('INVALID_ARGUMENT', `${what}: a destination on another array (REMOTE:VOLUME) takes --type rec or ropc`);
      }
      if (!isRemoteVolume(destination)) {
        throw new ArrayError('INVALID_ARGUMENT', `${what}: a ${COPY_TYPE_NAMES[type]} destination is REMOTE:VOLUME, a volume of a registered remote array`);
      }
      const v = this.volumes.get(source);
      if (v === undefined || v.deleting) throw new ArrayError('NOT_FOUND', `${what}: no volume named "${source}"; list volumes with "arraylab volume list"`);
      return; // the remote array checks its volume (OpenRemoteEnd)
    }
    for (const name of [source, destination]) {
      const v = this.volumes.get(name);
      if (v === undefined || v.deleting) throw new ArrayError('NOT_FOUND', `${what}: no volume named "${name}"; list volumes with "arraylab volume list"`);
    }
    if (!req.force) this.refuseIfWritten(destination, what);
  }

  /**
   * Refuses to overwrite a volume that clients have open read-write (their next I/O would
   * fail): copy start onto a destination; resume, reverse and restore from clone (overwriteCheck).
   */
  private refuseIfWritten(name: string, what: string): void {
    const rw = [...this.volume(name).handles].filter((h) => !h.readOnly).length;
    if (rw > 0) {
      throw new ArrayError(
        'FAILED_PRECONDITION',
        `${what}: ${name} is exported read-write to ${rw} connected client${rw === 1 ? '' : 's'}; dismount it first or pass --force`,
      );
    }
  }

  listCopies(): SessionInfo[] {
    return this.copy.list();
  }

  /** How a session that is gone ended, if the engine still knows (ListCopies' ended). */
  copyEndedAs(id: string): 'completed' | 'cancelled' | 'dropped' | undefined {
    return this.copy.endedAs(id);
  }

  getCopy(id: string): SessionInfo {
    return copyCallSync(() => this.copy.get(id));
  }

  /** The session's bitmap as cells (emulator/copy/sessionBitmap.ts). */
  copyBitmap(id: string, maxCells?: number): SessionBitmap {
    return copyCallSync(() => this.copy.bitmap(id, maxCells));
  }

  suspendCopy(id: string): Promise<SessionInfo> {
    return this.serially(() => this.destaged(() => copyCall(() => this.copy.suspend(id))));
  }

  /**
   * Resumes a suspended EC pair, or rejoins a split one (differential resync). The destination
   * is overwritten and hosts lose it until the pair is equivalent, so it is refused while
   * clients have it open read-write, unless force (the check runs under the engine's cut).
   */
  resumeCopy(id: string, opts: { force?: boolean } = {}): Promise<SessionInfo> {
    return this.serially(() =>
      this.destaged(() =>
        copyCall(() => {
          const s = this.copy.get(id);
          if (s.type === 'rec' || s.type === 'ropc') return this.copy.resume(id, { force: opts.force ?? false });
          const check = this.overwriteCheck(opts.force, (dst, src) => `cannot resume ${COPY_TYPE_NAMES[s.type]} ${src} -> ${dst} (session ${id})`);
          return s.state === 'split' ? this.copy.rejoin(id, { check }) : this.copy.resume(id, { check });
        }),
      ),
    );
  }

  /**
   * EC (suspended or split): swap the direction; QuickOPC (tracking): restore, differential.
   * The source becomes the destination and is overwritten, so it is refused while clients have
   * it open read-write, unless force (the check runs under the engine's cut).
   */
  reverseCopy(id: string, opts: { force?: boolean } = {}): Promise<SessionInfo> {
    return this.serially(() =>
      this.destaged(() =>
        copyCall(() => {
          const type = COPY_TYPE_NAMES[this.copy.get(id).type];
          return this.copy.reverse(id, { check: this.overwriteCheck(opts.force, (src, dst) => `cannot reverse ${type} ${src} -> ${dst} (session ${id})`) });
        }),
      ),
    );
  }

  /**
   * EC (split or suspended): copies the clone back onto the original (reverse + resync). The
   * original is overwritten and hosts can no longer use it until the pair is equivalent (then
   * read-only), so it is refused while clients have the original open read-write, unless
   * force; the check runs under the engine's cut, so no client can slip in after it.
   */
  restoreFromClone(id: string, opts: { force?: boolean } = {}): Promise<SessionInfo> {
    return this.serially(() =>
      this.destaged(() =>
        copyCall(() =>
          this.copy.restoreFromClone(id, {
            check: this.overwriteCheck(opts.force, (original, clone) => `cannot restore ${original} from clone ${clone} (EC session ${id})`),
          }),
        ),
      ),
    );
  }

  /**
   * The engine's check (OverwriteCheck) for a control operation that overwrites a volume:
   * refused while clients have it open read-write (refuseIfWritten), none with force. `what`
   * names the operation from the overwritten volume and the pair's other one.
   */
  private overwriteCheck(force: boolean | undefined, what: (overwritten: string, other: string) => string): OverwriteCheck | undefined {
    return force ? undefined : (overwritten, other) => this.refuseIfWritten(overwritten, what(overwritten, other));
  }

  /**
   * EC split. newName: the clone also takes a new identity (name, serial, WWN), checked
   * before the split so that a refused rename leaves the pair as it was.
   */
  splitCopy(id: string, opts: { newName?: string } = {}): Promise<SessionInfo> {
    return this.serially(() =>
      this.destaged(() =>
        copyCall(async () => {
          if (opts.newName === undefined) return this.copy.split(id);
          const clone = this.copy.get(id).destination;
          this.checkRename(clone, opts.newName); // before the split: a refused rename changes nothing
          await this.copy.split(id);
          await this.doRename(clone, opts.newName, true);
          return this.copy.get(id);
        }),
      ),
    );
  }

  cancelCopy(id: string, opts: { force?: boolean } = {}): Promise<void> {
    return this.serially(() => copyCall(() => this.copy.cancel(id, opts)));
  }

  /** Bytes per second: 0 = no background copy, Infinity = unthrottled. */
  setCopyRate(id: string, rate: number): Promise<SessionInfo> {
    return copyCall(() => this.copy.setRate(id, rate));
  }

  /** REC: the transfer mode (sync, stack, through). */
  setCopyMode(id: string, mode: string): Promise<SessionInfo> {
    return copyCall(() => this.copy.setRecMode(id, mode as RecMode));
  }

  // ---- REC remote ends (RemoteCopyService: the source array calls these) ----

  openRemoteEnd(req: OpenRemoteEndParams): Promise<SessionInfo> {
    return copyCall(async () => {
      const what = `cannot make ${req.volume} the remote end of REC ${req.sourceVolume} (array ${req.sourceArrayId})`;
      const v = this.volumes.get(req.volume);
      if (v === undefined || v.deleting) throw new ArrayError('NOT_FOUND', `${what}: no volume named "${req.volume}" on this array; create it first`);
      if (!/^[0-9a-f]{32}$/.test(req.secret)) throw new ArrayError('INVALID_ARGUMENT', `${what}: the pair's secret is malformed`);
      if (!(REC_MODES as readonly string[]).includes(req.mode) && req.mode !== 'ropc')
        throw new ArrayError('INVALID_ARGUMENT', `${what}: mode ${req.mode} is not one of ${REC_MODES.join(', ')} (or ropc: a point-in-time copy)`);
      const peer = this.remotes.nameOf(req.sourceArrayId) ?? `array-${req.sourceArrayId}`;
      return this.copy.openRemoteEnd(
        {
          pairId: req.pairId,
          source: `${peer}:${req.sourceVolume}`,
          peer,
          peerArrayId: req.sourceArrayId,
          sourceVolume: req.sourceVolume,
          volume: req.volume,
          sizeBytes: req.sizeBytes,
          blockSize: req.blockSize,
          unitSize: req.unitSize,
          mode: req.mode as RecMode,
          secret: req.secret,
        },
        req.force ? undefined : (name) => this.refuseIfWritten(name, what),
      );
    });
  }

  setRemoteEndState(id: string, state: string, extra: RemoteEndStateParams): Promise<SessionInfo> {
    return copyCall(async () => {
      const states = ['equivalent', 'suspended', 'split', 'halt'];
      if (!states.includes(state)) throw new ArrayError('INVALID_ARGUMENT', `remote end state ${state} is not one of ${states.join(', ')}`);
      if (extra.mode !== undefined && !(REC_MODES as readonly string[]).includes(extra.mode)) {
        throw new ArrayError('INVALID_ARGUMENT', `REC mode ${extra.mode} is not one of ${REC_MODES.join(', ')}`);
      }
      // A stage must exist before the pair stages, and whatever a pair leaving it staged was
      // never committed (the source drains before it suspends), so it goes.
      if (state === 'equivalent' && extra.mode === 'consistency') await this.stageOf(id);
      const info = await this.copy.setRemoteEndState(id, state as RemoteEndState, {
        ...(extra.imageAt ? { imageAt: extra.imageAt } : {}),
        ...(extra.haltReason === 'remote-failed' || extra.haltReason === 'buffer-overload' ? { haltReason: extra.haltReason } : {}),
        ...(extra.mode ? { mode: extra.mode as RecMode } : {}),
        ...(extra.resynced ? { resynced: true } : {}),
      });
      if (!(state === 'equivalent' && info.remote?.mode === 'consistency')) await this.stages.get(id)?.reset();
      return info;
    });
  }

  resumeRemoteEnd(id: string, force: boolean): Promise<{ info: SessionInfo; runs: Array<[number, number]>; restarted: boolean }> {
    return copyCall(async () => {
      const out = await this.copy.resumeRemoteEnd(
        id,
        force,
        force ? undefined : (name) => this.refuseIfWritten(name, `cannot resume REC session ${id} into ${name}`),
      );
      await this.stages.get(id)?.reset(); // a cycle cut short by the loss: never committed
      return out;
    });
  }

  /**
   * REC reverse, asked by the pair's source array: this remote end becomes the source towards
   * it. This array must know the caller as a remote (by its array id), to reach it.
   */
  reverseRemoteEnd(req: {
    pairId: string;
    sourceArrayId: string;
    changed: Array<[number, number]>;
    mode: string;
    split: string;
    recovery: string;
  }): Promise<SessionInfo> {
    return this.serially(() =>
      copyCall(async () => {
        const peer = this.remotes.nameOf(req.sourceArrayId);
        if (peer === undefined) {
          throw new ArrayError(
            'FAILED_PRECONDITION',
            `cannot reverse REC session ${req.pairId}: this array (${this.arrayId}) has no remote for array ${req.sourceArrayId}, which it would send to; register it here first: arraylab --array THIS_ARRAY remote add NAME --api ITS_API`,
          );
        }
        const o = recOptions(req);
        const info = await this.copy.reverseRemoteEnd(req.pairId, peer, req.changed, {
          mode: o.mode ?? 'sync',
          split: o.split ?? 'auto',
          recovery: o.recovery ?? 'auto',
        });
        const stage = this.stages.get(req.pairId);
        this.stages.delete(req.pairId);
        await stage?.close(true);
        return info;
      }),
    );
  }

  /**
   * Consistency mode: applies the staged cycle of each pair as one. The commit is durable for
   * all of them before any is applied; a crash in between applies them at the next start.
   */
  commitRemoteCycle(cycle: number, ids: string[]): Promise<void> {
    return copyCall(async () => {
      if (ids.length === 0) return;
      for (const id of ids) if (!this.stages.has(id)) throw new ArrayError('FAILED_PRECONDITION', `REC pair ${id} has no cycle stage here; resume the pair`);
      await this.copy.commitRemoteCycle(ids, cycle, {
        apply: (e) => this.stages.get(e.id)!.apply(e.tap.below),
        reset: async (e) => this.stages.get(e.id)?.reset(),
      });
    });
  }

  /** The source ended the pair: the remote end goes (the volume keeps what it has). */
  closeRemoteEnd(id: string): Promise<void> {
    return copyCall(async () => {
      await this.copy.cancel(id, { force: true });
      const stage = this.stages.get(id);
      this.stages.delete(id);
      await stage?.close(true);
    });
  }

  private async stageOf(id: string): Promise<CycleStage> {
    let s = this.stages.get(id);
    if (s === undefined) {
      s = await CycleStage.open(id, this.volumesDir === undefined ? undefined : path.join(path.dirname(this.volumesDir), 'rec-stage'));
      const raced = this.stages.get(id);
      if (raced !== undefined) {
        await s.close();
        return raced;
      }
      this.stages.set(id, s);
    }
    return s;
  }

  /**
   * At open: a committed cycle not yet applied is applied (a crash came between), and an
   * uncommitted stage is dropped. (A remote end that was live halted in the engine's recovery.)
   */
  private async recoverRemoteEnds(): Promise<void> {
    for (const e of this.copy.remoteEnds()) {
      if (e.consistency) {
        const stage = await this.stageOf(e.id);
        if (e.unapplied !== undefined) {
          await stage.apply(e.tap.below);
          await this.copy.remoteCycleApplied([e.id], e.unapplied);
          this.log.info({ pair: e.id, volume: e.volume, cycle: e.unapplied }, 'REC: applied a committed cycle that a restart interrupted');
        }
        await stage.reset();
      }
    }
  }

  onCopyEvent(listener: (e: CopyEvent) => void): () => void {
    return this.copy.onEvent(listener);
  }

  /**
   * Runs a copy control operation with every volatile write cache destaged and held, so the
   * point-in-time images it cuts hold every acknowledged write, and a volume it overwrites has
   * no older cached write left to land on top.
   */
  private async destaged<T>(op: () => Promise<T>): Promise<T> {
    const held: Array<NonNullable<Volume['writeCache']>> = [];
    try {
      for (const v of this.volumes.values()) {
        const c = v.writeCache;
        if (c === undefined) continue;
        held.push(c);
        await c.hold();
      }
      return await op();
    } finally {
      for (const c of held) c.release();
    }
  }

  private destageFailed(name: string): (err: Error) => void {
    return (err) => this.log.error({ err, volume: name }, 'a cached write failed to destage and is lost; the next flush reports it');
  }

  /** Flushes every volume's store (a volatile write cache destages first, through the copy engine's layer). */
  async flushAll(): Promise<void> {
    await Promise.all([...this.volumes.values()].map((v) => (v.writeCache ?? v.store).flush()));
  }

  /** Flushes and closes every store, then the database. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.serially(() => this.closeAll(), true);
    return this.closing;
  }

  /** The in-array volume object, for the array's own subsystems (copy sessions, faults). */
  volumeObject(name: string): Volume {
    return this.volume(name);
  }

  // ---- ExportProvider ----

  listExports(): ExportSummary[] {
    return this.listVolumes().map((v) => ({ name: v.name, description: v.description }));
  }

  openExport(name: string, client: ClientInfo): ExportHandle | undefined {
    if (name.startsWith(REPLICA_EXPORT_PREFIX)) return this.openReplica(name, client);
    const v = this.volumes.get(name);
    if (v === undefined || v.deleting || this.closing !== undefined) return undefined;
    if (this.poweredOffUntil > Date.now()) {
      const left = this.poweredOffUntil - Date.now();
      throw new BlockDeviceError(
        'ESHUTDOWN',
        `export ${name} is down after a power cut (arraylab power-cut --down-ms); it is back in ${Number.isFinite(left) ? `${Math.ceil(left / 1000)} s` : 'a moment'}, retry then`,
      );
    }
    this.faults.checkConnect(name, client);
    try {
      this.copy.tapOf(name).checkAttach(); // e.g. an EC destination before equivalent: refused with the reason
    } catch (err) {
      // NBD refuses at GO with the reason. SCSI has no way to say why at login, and a LUN that
      // is left out would only appear after a rescan: the LUN stays visible, and every I/O gets
      // NOT READY (manual intervention) until the copy session allows it.
      if (client.protocol !== 'iscsi') throw err;
      this.log.warn(
        { volume: name, connectionId: client.connectionId, initiator: client.initiator, reason: (err as Error).message },
        'iSCSI session sees a volume hosts may not use yet: its I/O gets NOT READY',
      );
    }
    const io = this.io;
    const handle = v.open(client, io === undefined ? undefined : (device) => io.counted(name, client.protocol, device));
    this.log.info(
      { volume: name, protocol: client.protocol, connectionId: client.connectionId, remoteAddress: client.remoteAddress, readOnly: handle.readOnly },
      'client opened volume',
    );
    const events = this.events;
    if (events !== undefined) {
      const who = (c: ClientInfo) => `${c.protocol} client ${c.initiator ?? c.remoteAddress}`;
      const fields = (c: ClientInfo) => ({ protocol: c.protocol, connectionId: c.connectionId, remoteAddress: c.remoteAddress, initiator: c.initiator });
      events.add({ kind: 'client.connected', subject: { kind: 'volume', name }, message: `${who(client)} opened volume ${name}`, fields: fields(client) });
      v.handleClosed ??= (h) =>
        this.events?.add({
          kind: 'client.disconnected',
          subject: { kind: 'volume', name: v.name },
          message: `${who(h.client)} closed volume ${v.name}`,
          fields: fields(h.client),
        });
    }
    return handle;
  }

  /**
   * A REC source array's data connection: `.rec/PAIR/SECRET` writes the pair's remote end under
   * the engine's layer (as the engine writes an EC destination), so the guard hosts see stays.
   * Not a host: it is not counted among the volume's clients. Its loss halts the remote end.
   */
  private openReplica(name: string, client: ClientInfo): ExportHandle | undefined {
    const [, id = '', secret = ''] = name.slice(REPLICA_EXPORT_PREFIX.length - 1).split('/');
    const end = this.copy.remoteEndFor(id, secret);
    if (end === undefined || this.closing !== undefined) return undefined;
    const refused = end.accepting();
    if (refused !== undefined) throw new BlockDeviceError('EACCES', refused);
    this.log.info({ pair: id, volume: end.volume, remoteAddress: client.remoteAddress }, 'REC source array connected');
    const device = new ReplicaDevice(
      end.tap.below,
      () => {
        if (!end.staging()) return undefined;
        const stage = this.stages.get(id);
        // Staging without a stage would write half cycles onto the volume: refuse instead.
        if (stage === undefined) throw new BlockDeviceError('EIO', `REC pair ${id}: the cycle stage is not open; the source resumes the pair`);
        return stage;
      },
      end.accepting,
    );
    return replicaHandle(end.volume, device, () => {
      if (this.closing !== undefined) return;
      void this.copy.remoteEndLinkLost(id, `the data connection from the source array (${client.remoteAddress}) closed`).catch(() => undefined);
    });
  }

  describeExport(name: string): ExportDescription | undefined {
    const v = this.volumes.get(name);
    if (v === undefined || v.deleting) return undefined;
    return {
      name,
      description: v.record.description,
      size: v.top.size,
      blockSize: v.top.blockSize,
      readOnly: v.record.readOnly,
      thin: v.top.thin,
    };
  }

  // ---- internals ----

  /** Host affinity's view of the volumes: UUIDs and current names, deleting ones left out. */
  private volumeDirectory(): VolumeDirectory {
    return {
      uuidOf: (name) => this.volume(name).record.uuid,
      nameOf: (uuid) => {
        const v = this.byUuid.get(uuid);
        return v === undefined || v.deleting ? undefined : v.name;
      },
      inCreationOrder: () =>
        [...this.volumes.values()]
          .map((v) => v.record)
          .sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.name < b.name ? -1 : 1))
          .map((r) => ({ uuid: r.uuid, name: r.name })),
    };
  }

  private volume(name: string): Volume {
    const v = this.volumes.get(name);
    if (v === undefined || v.deleting) {
      throw new ArrayError('NOT_FOUND', `no volume named "${name}"; list volumes with "arraylab volume list"`);
    }
    return v;
  }

  /** Runs control operations one at a time, in call order; refused once close() began. */
  private serially<T>(op: () => Promise<T>, evenWhenClosing = false): Promise<T> {
    const run = this.queue.then(() => {
      if (this.closing !== undefined && !evenWhenClosing) {
        throw new ArrayError('FAILED_PRECONDITION', 'the array is shutting down; retry after it restarts');
      }
      return op();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async doCreate(req: CreateVolumeRequest): Promise<VolumeInfo> {
    const spec = validateCreate(req);
    if (this.volumes.has(spec.name) || this.creating.has(spec.name)) {
      const existing = this.volumes.get(spec.name);
      throw new ArrayError(
        'ALREADY_EXISTS',
        `volume ${spec.name} already exists${existing ? ` (uuid ${existing.record.uuid})` : ''}; choose another name, or delete it first`,
      );
    }
    this.creating.add(spec.name);
    try {
      const identity = newVolumeIdentity();
      const record: VolumeRecord = { ...spec, ...identity, createdAt: new Date().toISOString() };
      const store = await this.createStore(record);
      try {
        this.dbWrite(`create volume ${spec.name}`, () => this.db.insertVolume(record)); // the commit point: before it, only orphan files
      } catch (err) {
        await store.close().catch(() => undefined);
        if (this.volumesDir) await FileBlockStore.remove(this.storePaths(record.uuid));
        throw err;
      }
      const v = new Volume(record, store, this.destageFailed(record.name));
      this.copy.addVolume(v); // before any client can reach it
      this.volumes.set(record.name, v);
      this.byUuid.set(record.uuid, v);
      v.faults = this.faults.pointFor(record.name);
      this.log.info(
        { volume: record.name, uuid: record.uuid, wwn: record.wwn, sizeBytes: record.sizeBytes, provisioning: record.provisioning },
        'created volume',
      );
      this.events?.add({
        kind: 'volume.created',
        subject: { kind: 'volume', name: record.name },
        message: `volume ${record.name} created (${record.sizeBytes} bytes, ${record.provisioning})`,
        fields: { uuid: record.uuid, sizeBytes: record.sizeBytes, provisioning: record.provisioning },
      });
      try {
        this.hosts.volumeCreated(record.uuid);
      } catch (err) {
        // The volume is whole; the next start gives it its default LUN.
        this.log.error({ err, volume: record.name }, 'could not record the default LUN of the new volume');
      }
      return v.info();
    } finally {
      this.creating.delete(spec.name);
    }
  }

  private async createStore(record: VolumeRecord): Promise<VolumeStore> {
    const thin = record.provisioning === 'thin';
    if (this.backend === 'memory') {
      return new MemoryBlockStore({ size: record.sizeBytes, blockSize: record.blockSize, thin });
    }
    const paths = this.storePaths(record.uuid);
    try {
      return await FileBlockStore.create({ ...paths, size: record.sizeBytes, blockSize: record.blockSize, thin });
    } catch (err) {
      await FileBlockStore.remove(paths).catch(() => undefined);
      throw storeError(`cannot create volume ${record.name}`, err, this.dataDir, !thin);
    }
  }

  private async doResize(name: string, newSize: number): Promise<VolumeInfo> {
    const v = this.volume(name);
    const { sizeBytes: oldSize, blockSize } = v.record;
    checkSize(name, newSize, blockSize);
    if (newSize < oldSize) {
      throw new ArrayError(
        'FAILED_PRECONDITION',
        `cannot shrink volume ${name} from ${formatSize(oldSize)} to ${formatSize(newSize)}: shrinking loses data; create a new volume and copy`,
      );
    }
    if (newSize === oldSize) return v.info();
    for (const id of this.copy.sessionsOfVolume(name)) {
      const s = this.copy.get(id);
      if (s.type === 'ec' || s.type === 'snapopcplus') {
        throw new ArrayError(
          'FAILED_PRECONDITION',
          `cannot resize volume ${name}: it is in ${COPY_TYPE_NAMES[s.type]} session ${s.id} (${s.source} -> ${s.destination}, ${s.state}), which covers the source's size at its start; cancel the session first`,
        );
      }
    }
    try {
      await v.store.resize(newSize); // durable first: a crash after it leaves a larger store, which open() adopts
    } catch (err) {
      throw storeError(`cannot grow volume ${name} to ${newSize} bytes`, err, this.dataDir, v.record.provisioning === 'thick');
    }
    // A failure here leaves the store grown but the row and the volume's size as they were (a
    // store cannot shrink): a retry records it, and so does the next start (as after a crash).
    // Until then, hosts that connect see the grown size.
    this.dbWrite(`resize volume ${name}`, () => v.setSize(this.db, newSize));
    this.log.info({ volume: name, from: oldSize, to: newSize, clients: v.handles.size }, 'resized volume');
    this.events?.add({
      kind: 'volume.resized',
      subject: { kind: 'volume', name },
      message: `volume ${name} resized from ${oldSize} to ${newSize} bytes`,
      fields: { uuid: v.record.uuid, from: oldSize, to: newSize },
    });
    for (const h of v.handles) {
      h.notifyResize(newSize, (err) => this.log.error({ err, volume: name }, 'resize listener failed'));
    }
    return v.info();
  }

  private doSetAllocLimit(name: string, limitBytes: number | null): VolumeInfo {
    const v = this.volume(name);
    const r = v.record;
    const limit = checkAllocLimit(name, limitBytes, r.sizeBytes, r.blockSize, r.provisioning);
    this.dbWrite(`set the allocation limit of volume ${name}`, () => v.setAllocLimit(this.db, limit)); // puts the store's limit back if the write fails
    this.log.info({ volume: name, allocLimitBytes: limit, allocatedBytes: v.store.allocatedBytes }, 'set volume allocation limit');
    return v.info();
  }

  /**
   * The refusals of a rename, changing nothing; returns the volume. For callers that must
   * check before doing something else first (e.g. an EC split that renames the clone). Note:
   * renameVolume() queues on this array's control queue, so code already running in it
   * (inside serially) must call doRename() rather than renameVolume(), or it waits for itself.
   */
  private checkRename(oldName: string, newName: string): Volume {
    const v = this.volume(oldName);
    checkVolumeName(newName);
    if (newName !== oldName && (this.volumes.has(newName) || this.creating.has(newName))) {
      const existing = this.volumes.get(newName);
      throw new ArrayError(
        'ALREADY_EXISTS',
        `cannot rename volume ${oldName} to ${newName}: volume ${newName} already exists${existing ? ` (uuid ${existing.record.uuid})` : ''}; choose another name, or delete it first`,
      );
    }
    refuseIfOpen(v, `rename volume ${oldName}`);
    return v;
  }

  private async doRename(oldName: string, newName: string, newIdentity: boolean): Promise<VolumeInfo> {
    const v = this.checkRename(oldName, newName);
    if (newName === oldName && !newIdentity) return v.info();
    const old = v.record;
    const identity = newIdentity ? renewedIdentity(old.uuid) : undefined;
    const record: VolumeRecord = { ...old, name: newName, ...(identity ? { wwn: identity.wwn, serial: identity.serial } : {}) };
    let renamed = false;
    try {
      await copyCall(() =>
        this.copy.renameVolume(oldName, newName, () => {
          // Synchronous, under the engine's cut: a client may have connected while the rename
          // waited for the engine's queue, so look again; then the one transaction (a failure,
          // e.g. a full disk, changes nothing), then the array's own map, with nothing able to
          // run in between (openExport is synchronous).
          refuseIfOpen(v, `rename volume ${oldName}`);
          this.dbWrite(`rename volume ${oldName} to ${newName}`, () =>
            this.db.renameVolume(old.uuid, oldName, newName, identity && { wwn: identity.wwn, serial: identity.serial }),
          );
          this.volumes.delete(oldName);
          this.volumes.set(newName, v);
          v.renamed(record);
          this.io?.renamed(oldName, newName);
          v.faults = this.faults.pointFor(newName); // faults name volumes: they stay with the old name
          renamed = true;
        }),
      );
    } catch (err) {
      if (!renamed) throw err;
      // The rename is durable and done in memory; only the engine's journal sync after it
      // failed (it writes the same records again, and carries them to its next commit).
      this.log.warn(
        { err, volume: newName, from: oldName },
        'renamed volume, but the copy journal could not be synced after it; its next commit writes the records again',
      );
    }
    this.log.info(
      {
        volume: newName,
        from: oldName,
        uuid: old.uuid,
        ...(identity ? { wwn: identity.wwn, serial: identity.serial, oldWwn: old.wwn, oldSerial: old.serial } : {}),
        sessions: this.copy.sessionsOfVolume(newName),
      },
      identity ? 'renamed volume with a new identity' : 'renamed volume',
    );
    this.events?.add({
      kind: 'volume.renamed',
      subject: { kind: 'volume', name: newName },
      message: `volume ${oldName} renamed to ${newName}${identity ? ' with a new identity' : ''}`,
      fields: { uuid: old.uuid, from: oldName },
    });
    this.hosts.volumesChanged(); // LUN maps follow the UUID; the export name they resolve to changed
    return v.info();
  }

  private async doDelete(name: string): Promise<void> {
    const v = this.volume(name);
    refuseIfOpen(v, `delete volume ${name}`);
    const mappings = this.hosts.mappingsOf(v.record.uuid);
    // All or nothing: the refusals, the commit point (deleting the row also drops the volume's
    // LUN mappings), then memory, in one synchronous step. A refused or failed delete (a full
    // disk) changes nothing, and no client can connect in between (openExport is synchronous).
    try {
      this.copy.removeVolume(name, () => this.dbWrite(`delete volume ${name}`, () => this.db.deleteVolume(v.record.uuid)));
    } catch (err) {
      if (err instanceof CopyError) throw new ArrayError(err.code, `cannot delete volume ${name}: ${err.message}`);
      throw err;
    }
    v.deleting = true; // for holders of the Volume object: it is gone
    this.volumes.delete(name);
    this.byUuid.delete(v.record.uuid);
    this.io?.forget(name);
    if (mappings.length > 0) this.log.info({ volume: name, mappings }, 'unmapped the deleted volume from its hosts');
    this.hosts.volumesChanged();
    try {
      await v.store.close();
    } catch (err) {
      // The data is being thrown away; a failing final flush does not stop that.
      this.log.warn({ err, volume: name }, 'closing the store of a deleted volume failed');
    }
    if (this.volumesDir) {
      try {
        await FileBlockStore.remove(this.storePaths(v.record.uuid));
      } catch (err) {
        this.log.warn({ err, volume: name }, 'could not remove the files of a deleted volume; they are removed as orphans at the next start');
      }
    }
    this.log.info({ volume: name, uuid: v.record.uuid }, 'deleted volume');
    this.events?.add({ kind: 'volume.deleted', subject: { kind: 'volume', name }, message: `volume ${name} deleted`, fields: { uuid: v.record.uuid } });
  }

  /**
   * One write of the array database for `what` (a volume operation). A failed write changed
   * nothing there (one statement or transaction); it is thrown as an ArrayError: a full disk
   * is RESOURCE_EXHAUSTED naming the data directory and the fix, another SQLite error
   * INTERNAL. Errors that are not SQLite's pass through as they are.
   */
  private dbWrite<T>(what: string, write: () => T): T {
    try {
      return write();
    } catch (err) {
      const failure = this.db.writeFailure(err);
      if (failure === undefined) throw err;
      throw new ArrayError(failure.code, `cannot ${what}: ${failure.reason}`);
    }
  }

  /** The file backend's data directory. */
  private get dataDir(): string | undefined {
    return this.volumesDir === undefined ? undefined : path.dirname(this.volumesDir);
  }

  private storePaths(uuid: string): FileBlockStorePaths {
    const dir = this.volumesDir!;
    return { dataPath: path.join(dir, `${uuid}.data`), mapPath: path.join(dir, `${uuid}.map`) };
  }

  /** Opens every volume's store, adopting interrupted resizes and removing orphan files. */
  private async loadVolumes(): Promise<void> {
    const records = this.db.listVolumes();
    const known = new Set(records.map((r) => r.uuid));
    await this.removeOrphans(known);
    for (const record of records) {
      const paths = this.storePaths(record.uuid);
      let store: FileBlockStore;
      try {
        store = await FileBlockStore.open(paths);
      } catch (err) {
        throw new ArrayError(
          'INTERNAL',
          `cannot open volume ${record.name} (uuid ${record.uuid}): ${(err as Error).message}; restore ${paths.dataPath} and ${paths.mapPath} from a backup, or move the data directory aside`,
        );
      }
      const v = new Volume(record, store, this.destageFailed(record.name));
      this.copy.addVolume(v); // before any client can reach it
      this.volumes.set(record.name, v);
      this.byUuid.set(record.uuid, v);
      v.faults = this.faults.pointFor(record.name);
      if (store.blockSize !== record.blockSize || store.thin !== (record.provisioning === 'thin') || store.size < record.sizeBytes) {
        throw new ArrayError(
          'INTERNAL',
          `volume ${record.name} (uuid ${record.uuid}) does not match its files: recorded ${record.sizeBytes} bytes, ${record.blockSize}-byte blocks, ${record.provisioning}; files hold ${store.size} bytes, ${store.blockSize}-byte blocks, ${store.thin ? 'thin' : 'thick'}`,
        );
      }
      if (store.size > record.sizeBytes) {
        this.log.warn(
          { volume: record.name, recorded: record.sizeBytes, actual: store.size },
          'volume grew before a crash or a failed resize but its new size was not recorded; adopting the grown size',
        );
        try {
          v.setSize(this.db, store.size);
        } catch (err) {
          // A full disk must not keep the array from starting: adopt it in memory, record it next time.
          const failure = this.db.writeFailure(err);
          if (failure === undefined) throw err;
          v.record = { ...v.record, sizeBytes: store.size };
          this.log.warn({ volume: record.name, reason: failure.reason }, 'could not record the adopted size now; the next start records it');
        }
      }
    }
    this.log.info({ volumes: records.length, dataDir: this.dataDir }, 'opened array');
  }

  private async removeOrphans(known: Set<string>): Promise<void> {
    const dir = this.volumesDir!;
    for (const file of await fsp.readdir(dir)) {
      const m = /^([0-9a-f-]{36})\.(data|map)$/.exec(file);
      if (m === null) {
        this.log.warn({ file: path.join(dir, file) }, 'unexpected file in the volumes directory; leaving it alone');
        continue;
      }
      if (known.has(m[1]!)) continue;
      this.log.warn({ file: path.join(dir, file) }, 'removing orphan volume file (left by a create or delete that did not finish)');
      await fsp.rm(path.join(dir, file), { force: true });
    }
    // Make the removals durable before anything reuses the directory.
    const h = await fsp.open(dir, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  }

  private async closeAll(): Promise<void> {
    this.faults.close(); // paused and delayed operations go on, so the stores can drain
    // An orderly shutdown destages volatile caches (only a power cut or a crash loses them),
    // through the copy engine's layers while they still run.
    for (const v of this.volumes.values())
      await v.writeCache?.flush().catch((err: unknown) => this.log.error({ err, volume: v.name }, 'destaging the write cache at shutdown failed'));
    await this.copy.close(); // no more background copies; sessions stay in the journal
    this.remotes.close();
    for (const s of this.stages.values()) await s.close().catch(() => undefined);
    this.stages.clear();
    try {
      if (this.db.isOpen) this.journal.commit(); // lazy clears appended since the last sync
    } catch (err) {
      this.log.warn({ err }, 'writing the last copy journal records failed; recovery will copy more');
    }
    const results = await Promise.allSettled([...this.volumes.values()].map((v) => v.store.close()));
    this.volumes.clear();
    this.byUuid.clear();
    this.db.close();
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length > 0) {
      throw new ArrayError('INTERNAL', `closing the array: ${failed.length} volume(s) failed to flush: ${(failed[0]!.reason as Error).message}`);
    }
  }
}

/** Runs a copy engine operation, turning its refusals into ArrayErrors (same codes). */
async function copyCall<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof CopyError) throw new ArrayError(err.code, err.message);
    throw err;
  }
}

function copyCallSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof CopyError) throw new ArrayError(err.code, err.message);
    throw err;
  }
}

/** Group labels look like volume names: they appear in commands and tables. */
function checkGroupName(group: string): void {
  if (typeof group !== 'string' || !VOLUME_NAME_PATTERN.test(group)) {
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `invalid consistency group name ${JSON.stringify(group)}: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
}

/** Refuses an operation on a volume that clients have open, naming them. */
function refuseIfOpen(v: Volume, what: string): void {
  const n = v.handles.size;
  if (n === 0) return;
  const who = [...v.handles].map((h) => describeClient(h.client)).join(', ');
  throw new ArrayError(
    'FAILED_PRECONDITION',
    `cannot ${what}: it is open by ${n} connected client${n === 1 ? '' : 's'} (${who}); disconnect ${n === 1 ? 'it' : 'them'} first`,
  );
}

function checkVolumeName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || !VOLUME_NAME_PATTERN.test(name)) {
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `invalid volume name ${JSON.stringify(name)}: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
}

/** An allocation limit: thin only, a positive block multiple, at most the size; null = none. */
function checkAllocLimit(name: string, limit: number | null | undefined, sizeBytes: number, blockSize: number, provisioning: Provisioning): number | null {
  if (limit === null || limit === undefined) return null;
  if (provisioning !== 'thin') {
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `volume ${name} is thick: all its space is allocated at creation, so it cannot have an allocation limit; use a thin volume`,
    );
  }
  if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit <= 0) {
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `invalid allocation limit ${String(limit)} for volume ${name}: give a positive size, a multiple of the ${blockSize}-byte block size, or none`,
    );
  }
  if (limit % blockSize !== 0) {
    const below = Math.floor(limit / blockSize) * blockSize;
    const nearest = below > 0 ? `${below} or ${below + blockSize} bytes` : `${blockSize} bytes`;
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `invalid allocation limit ${limit} bytes for volume ${name}: not a multiple of the ${blockSize}-byte block size; the nearest valid limits are ${nearest}`,
    );
  }
  if (limit > sizeBytes) {
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `allocation limit ${formatSize(limit)} of volume ${name} is larger than its size (${formatSize(sizeBytes)}); give at most ${sizeBytes} bytes, or none for no limit`,
    );
  }
  return limit;
}

function validateCreate(req: CreateVolumeRequest): VolumeSpec {
  const name = req.name;
  checkVolumeName(name);
  const blockSize = req.blockSize ?? 512;
  if (blockSize !== 512 && blockSize !== 4096) {
    throw new ArrayError('INVALID_ARGUMENT', `invalid block size ${String(blockSize)} for volume ${name}: use 512 or 4096`);
  }
  const provisioning = req.provisioning ?? 'thin';
  if (provisioning !== 'thin' && provisioning !== 'thick') {
    throw new ArrayError('INVALID_ARGUMENT', `invalid provisioning ${JSON.stringify(provisioning)} for volume ${name}: use thin or thick`);
  }
  checkSize(name, req.sizeBytes, blockSize);
  const description = req.description ?? '';
  if (typeof description !== 'string' || description.length > MAX_DESCRIPTION) {
    throw new ArrayError('INVALID_ARGUMENT', `description of volume ${name} is too long: at most ${MAX_DESCRIPTION} characters`);
  }
  const allocLimitBytes = checkAllocLimit(name, req.allocLimitBytes, req.sizeBytes, blockSize, provisioning);
  const writeCache = req.writeCache ?? 'write-through';
  if (!isWriteCacheMode(writeCache))
    throw new ArrayError('INVALID_ARGUMENT', `invalid write cache mode ${JSON.stringify(writeCache)} for volume ${name}: use volatile or write-through`);
  return { name, sizeBytes: req.sizeBytes, blockSize, provisioning, readOnly: req.readOnly ?? false, description, allocLimitBytes, writeCache };
}

/** A size must be a positive whole number of blocks; the message offers the nearest valid ones. */
function checkSize(name: string, size: number, blockSize: number): void {
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0) {
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `invalid size ${String(size)} for volume ${name}: give a positive whole number of bytes, a multiple of the ${blockSize}-byte block size`,
    );
  }
  if (size % blockSize !== 0) {
    const below = Math.floor(size / blockSize) * blockSize;
    const above = below + blockSize;
    const nearest = below > 0 ? `${below} or ${above} bytes` : `${above} bytes`;
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `invalid size ${size} bytes for volume ${name}: not a multiple of the ${blockSize}-byte block size; the nearest valid sizes are ${nearest}`,
    );
  }
}

function describeClient(c: ClientInfo): string {
  return c.initiator ? `${c.protocol} ${c.initiator} at ${c.remoteAddress}` : `${c.protocol} ${c.remoteAddress}`;
}

/** A store that could not be made or grown; dataDir: where it lives (the file backend). */
function storeError(what: string, err: unknown, dataDir: string | undefined, thick: boolean): ArrayError {
  if (err instanceof BlockDeviceError && err.code === 'ENOSPC') {
    const where = dataDir === undefined ? "the array's data directory" : `the array's data directory ${dataDir}`;
    return new ArrayError('RESOURCE_EXHAUSTED', `${what}: ${where} is full (ENOSPC); free space there and retry${thick ? ', or use a thin volume' : ''}`);
  }
  if (/EFBIG|File too large/.test(String((err as Error).message))) {
    return new ArrayError('INVALID_ARGUMENT', `${what}: larger than the biggest file the data directory's filesystem allows; use a smaller size`);
  }
  return new ArrayError('INTERNAL', `${what}: ${(err as Error).message}`);
}

function isLockError(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED' || /database is locked/.test(String((err as Error).message));
}

/** Makes a directory of ours 0700 (one another user owns is left as it is: not ours to change). */
async function keepPrivate(dir: string): Promise<void> {
  const st = await fsp.stat(dir);
  if (process.getuid !== undefined && st.uid !== process.getuid()) return;
  if ((st.mode & 0o077) !== 0) await fsp.chmod(dir, st.mode & 0o7700);
}
