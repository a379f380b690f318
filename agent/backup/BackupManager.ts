/**
 * Backup management (ACM's storage-server role): registrations, generations, snapshot and
 * synchronized backups, restore, history, status and resource match, over the agent's store
 * (AgentStore), the array (ArrayPort) and the host (HostSide). See README.md here.
 *
 * Truthfulness: a backup is reported, and history records it, only as it really happened:
 * PREP is what pre-processing did, a volume that is to be locked but has no device here fails,
 * and generations are shown with the array's verdict on them (generations.ts).
 */
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdirSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ArrayClient } from '../../proto/ArrayClient.js';
import type { AgentEventReport, CopySessionView, StartCopyParams } from '../../proto/views.js';
import type { VolumeInfo } from '../../proto/views.js';
import { formatSize } from '../../proto/util/units.js';
import { AGENT_DATABASE_FILE, AgentStore, BusyError, type SyncPairRecord } from '../store/AgentStore.js';
import { assess, ENDED_UNFINISHED, endedUnfinished, ERROR_SUSPENDED, errorSeen, key, relativeNumbers, toHistory, type ArrayState } from './generations.js';
import { cancelSync, leftoverPairs, startSync, syncView, waitEquivalent } from './sync.js';
import {
  AgentError,
  type AgentCore,
  type AgentStatus,
  type BackupOptions,
  type BackupReport,
  type BackupType,
  type BackupVolumeRecord,
  type DeviceMapping,
  type GenerationRecord,
  type HistoryEntry,
  type HookContext,
  type HookPhase,
  type HookResult,
  type LockRecord,
  type PrepDone,
  type ProgressEvent,
  type RegisteredTransaction,
  type RegisterTransactionOptions,
  type StartSyncOptions,
  type RestoreOptions,
  type RestoreReport,
  type ResourceMatchReport,
  type SyncView,
  type TapeCopyRecord,
  type TapePort,
  type TransactionPrep,
  type TransactionVolumeRecord,
  type HostSide,
  type VolumeOutcome,
} from '../types.js';
import { isNotFound, type ArrayPort, type RemoteArrayPort } from './ArrayPort.js';
import { LockLedger } from './LockLedger.js';
import { codeOf, deviceOf, hookOk, isAlive, noDeviceMessage, type ManagerContext } from './context.js';
import { pin, pinnedDevice } from './pins.js';
import { resourceMatch } from './resourceMatch.js';
import { isRemoteVolume, isSyncPairType, pairName, remoteOf } from './remote.js';
import { restore } from './restore.js';

export interface BackupManagerOptions {
  store: AgentStore;
  array: ArrayPort;
  tape: TapePort;
  host: HostSide;
  log: Logger;
  /** Passed to every hook run. */
  hookTimeoutMs?: number;
  /** Passed to lockTransaction for --lock freeze. */
  freezeDeadlineMs?: number;
  now?: () => Date;
  /** How often a restore polls its copy session; default 100 ms. */
  pollMs?: number;
  /**
   * A client of a remote array's API (HOST:PORT from the array's remote list), to read a
   * remote backup volume's size at registration; default an ArrayClient with a short deadline.
   */
  remoteArray?: (api: string) => RemoteArrayPort;
}

/** How long the agent waits for the array to take a backup report (reportToArray) before it goes on. */
const REPORT_TIMEOUT_MS = 5000;

/** Deadline of the one call the agent makes to a remote array (registering REMOTE:VOL). */
const REMOTE_DEADLINE_MS = 5000;

/** SnapOPC+ keeps at most this many generations per source (the array drops or refuses the 9th). */
export const MAX_SNAP_GENERATIONS = 8;
const SNAPSHOT_TYPES = ['opc', 'quickopc', 'snapopcplus'] as const;

const RM_FIX = 'run arraylab-agent resource-match';

/** One volume of one backup command, from claim to report. */
interface Job {
  volume: string;
  tv: TransactionVolumeRecord;
  outcome: VolumeOutcome;
  failed: boolean;
  kind: 'snapshot' | 'sync';
  type: BackupType;
  /** What pre-processing is to do to the transaction volume ('none': --lock none). */
  prep: TransactionPrep | 'none';
  /** What it did (history's PREP). */
  prepDone: PrepDone;
  /** Synchronized: resume the pair after the backup. */
  resync: boolean;
  bv: string;
  bvDevice: string;
  tvDevice: string;
  mountPoint: string;
  /** Held generations released before the copy (snapshot), oldest first. */
  release: GenerationRecord[];
  /** Those actually released, and whether the array still holds their image (nothing was cancelled). */
  released: Array<{ g: GenerationRecord; intact: boolean }>;
  /** The start call failed without the array saying no: it may have started the copy all the same. */
  startUncertain: boolean;
  /** A QuickOPC tracking session of this very pair that the backup restarts (differential). */
  restartSession: string;
  sync: SyncPairRecord | undefined;
  ledger: LockLedger;
  claimed: string[];
  sessionId: string;
  /** Reached the array step: post-processing is due. */
  locked: boolean;
  copied: boolean;
  at: string;
  /** The array's own instant of the image (its session's imageAt; '' when not known). */
  imageAt: string;
  generation: number;
}

export class BackupManager implements AgentCore {
  readonly store: AgentStore;
  private readonly array: ArrayPort;
  private readonly tape: TapePort;
  private readonly host: HostSide;
  private readonly log: Logger;
  private readonly hookTimeoutMs: number | undefined;
  private readonly freezeDeadlineMs: number | undefined;
  private readonly now: () => Date;
  private readonly pollMs: number;
  private readonly remoteArray: (api: string) => RemoteArrayPort;
  /** Tells this manager's operation rows from another's in the same process. */
  readonly owner = randomUUID();

  constructor(opts: BackupManagerOptions) {
    this.store = opts.store;
    this.array = opts.array;
    this.tape = opts.tape;
    this.host = opts.host;
    this.log = opts.log;
    this.hookTimeoutMs = opts.hookTimeoutMs;
    this.freezeDeadlineMs = opts.freezeDeadlineMs;
    this.now = opts.now ?? (() => new Date());
    this.pollMs = opts.pollMs ?? 100;
    this.remoteArray = opts.remoteArray ?? ((api) => new ArrayClient(api, { deadlineMs: REMOTE_DEADLINE_MS }));
  }

  /** Opens (creating) the store at <stateDir>/agent.db. */
  static async open(stateDir: string, opts: Omit<BackupManagerOptions, 'store'>): Promise<BackupManager> {
    try {
      mkdirSync(stateDir, { recursive: true, mode: 0o700 });
      // An existing one (made by hand, or by an older agent) is made private too.
      const st = statSync(stateDir);
      if ((st.mode & 0o077) !== 0 && st.uid === (process.getuid?.() ?? -1)) chmodSync(stateDir, 0o700);
    } catch (err) {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `cannot create the agent state directory ${stateDir}: ${(err as Error).message}; choose another with --state-dir`,
      );
    }
    const store = new AgentStore(join(stateDir, AGENT_DATABASE_FILE));
    return new BackupManager({ ...opts, store });
  }

  /** Waits for background tape copies (--complete-after disk), then closes the store. */
  async close(): Promise<void> {
    await this.settled();
    this.store.close();
  }

  // ---- registration ----

  async registerTransaction(volume: string, opts: RegisterTransactionOptions = {}): Promise<RegisteredTransaction> {
    if (this.store.getBackupVolume(volume)) {
      throw new AgentError(
        'ALREADY_EXISTS',
        `${volume} is registered as a backup volume; a volume has one role: unregister it first (arraylab-agent unregister ${volume})`,
      );
    }
    const info = await this.arrayVolume(volume);
    const existing = this.store.getTransaction(volume);
    const lock = opts.lock ?? existing?.lock ?? 'unmount';
    if (lock !== 'unmount' && lock !== 'freeze' && lock !== 'none')
      throw new AgentError('INVALID_ARGUMENT', `--lock ${String(lock)} is not a lock mode; use unmount, freeze or none`);
    const flushOnly = opts.flushOnly ?? existing?.flushOnly ?? false;
    if (lock === 'none' && flushOnly)
      throw new AgentError(
        'INVALID_ARGUMENT',
        `--lock none and --flush-only contradict each other for ${volume}: none does nothing on the host, flush-only flushes; choose one`,
      );
    const defaultType = opts.defaultType ?? existing?.defaultType ?? 'opc';
    if (!(SNAPSHOT_TYPES as readonly string[]).includes(defaultType))
      throw new AgentError('INVALID_ARGUMENT', `--type ${String(defaultType)} is not a snapshot type; use opc, quickopc or snapopcplus`);
    const generations = opts.generations ?? existing?.generations ?? 1;
    if (!Number.isInteger(generations) || generations < 1)
      throw new AgentError('INVALID_ARGUMENT', `--generations ${generations} for ${volume}: give a whole number from 1`);
    if (defaultType === 'snapopcplus' && generations > MAX_SNAP_GENERATIONS) {
      throw new AgentError(
        'INVALID_ARGUMENT',
        `--generations ${generations} for ${volume}: SnapOPC+ keeps at most ${MAX_SNAP_GENERATIONS} generations per volume; use --generations ${MAX_SNAP_GENERATIONS} or less`,
      );
    }
    const rec: TransactionVolumeRecord = {
      volume,
      lock,
      resyncAfterBackup: opts.resyncAfterBackup ?? existing?.resyncAfterBackup ?? false,
      flushOnly,
      generations,
      defaultType,
      registeredAt: existing?.registeredAt ?? this.iso(),
      needsResourceMatch: existing?.needsResourceMatch ?? '',
    };
    this.store.putTransaction(rec);
    pin(this.store, volume, info, this.iso());
    this.log.info({ volume, lock, generations, defaultType, wwn: info.wwn, uuid: info.uuid }, 'transaction volume registered (pinned to its WWN and UUID)');
    const warnings: string[] = [];
    if (lock !== 'none' || flushOnly) {
      // Said now rather than at the first backup, which will fail for it.
      try {
        if (deviceOf(await this.host.devices([info]), volume) === '')
          warnings.push(`${volume} cannot be ${flushOnly ? 'flushed' : lock === 'freeze' ? 'frozen' : 'locked'} yet: ${noDeviceMessage(volume, info)}`);
      } catch (err) {
        warnings.push(`cannot check for a block device of ${volume} on this host: ${(err as Error).message}`);
      }
    }
    const notes = existing && generations < existing.generations ? this.releaseNotes(volume, generations) : [];
    return { ...this.store.getTransaction(volume)!, warnings, notes };
  }

  /** What a lower --generations releases, and when (the next backup's rule). */
  private releaseNotes(volume: string, n: number): string[] {
    const held = this.store.heldGenerations(volume);
    const sync = this.store.getSync(volume) !== undefined;
    // Snapshot: the oldest go before the copy, so that with the new one N are held.
    // Synchronized: after the copy, down to N. Either way, these are the same ones.
    const go = held.length + 1 - n;
    if (go <= 0) return [];
    const victims = held.slice(0, go);
    const rel = relativeNumbers(this.store.listGenerations(volume));
    const list = victims.map((g) => `generation ${rel.get(key(g)) ?? '-'} (#${g.number} of ${g.at}, on ${g.backupVolume})`).join(', ');
    const when = sync ? 'after the copy of the next synchronized backup' : 'at the next backup, before its copy';
    return [
      `${volume} now keeps ${n} generation${n === 1 ? '' : 's'} and holds ${held.length}: ${list} will be released ${when}${victims.some((g) => g.tape?.status === 'ok') ? ' (tape copies stay restorable)' : ''}`,
    ];
  }

  async registerBackup(volume: string): Promise<BackupVolumeRecord> {
    if (this.store.getTransaction(volume)) {
      throw new AgentError(
        'ALREADY_EXISTS',
        `${volume} is registered as a transaction volume; a volume has one role: unregister it first (arraylab-agent unregister ${volume})`,
      );
    }
    const info = isRemoteVolume(volume) ? await this.remoteVolume(volume) : await this.arrayVolume(volume);
    const existing = this.store.getBackupVolume(volume);
    this.store.putBackupVolume({
      volume,
      sizeBytes: info.sizeBytes,
      blockSize: info.blockSize,
      registeredAt: existing?.registeredAt ?? this.iso(),
      inUseBy: '',
      needsResourceMatch: existing?.needsResourceMatch ?? '',
    });
    pin(this.store, volume, info, this.iso());
    this.log.info({ volume, sizeBytes: info.sizeBytes, wwn: info.wwn, uuid: info.uuid }, 'backup volume registered (pinned to its WWN and UUID)');
    return publicBv(this.store.getBackupVolume(volume)!);
  }

  async unregister(volume: string, opts: { force?: boolean } = {}): Promise<void> {
    const tv = this.store.getTransaction(volume);
    const bv = this.store.getBackupVolume(volume);
    if (!tv && !bv) throw new AgentError('NOT_FOUND', `${volume} is not registered; arraylab-agent status lists the registered volumes`);
    const claimed = this.claim([volume], 'unregister');
    try {
      if (tv) {
        const held = this.store.heldGenerations(volume);
        const sync = this.store.getSync(volume);
        if ((held.length > 0 || sync) && !opts.force) {
          throw new AgentError(
            'FAILED_PRECONDITION',
            `cannot unregister ${volume}: it holds ${held.length} generation${held.length === 1 ? '' : 's'}${sync ? ` and a sync pair with ${sync.backupVolume}` : ''}; cancel-sync / let them go first, or pass --force (their records go)`,
          );
        }
        for (const g of held) await this.cancelQuietly(g.sessionId);
        if (sync) await this.cancelQuietly(sync.sessionId);
        // Suspended pairs of released generations (kept for Suspend/Resume) go too.
        const bvs = new Set(this.store.listBackupVolumes().map((b) => b.volume));
        for (const c of await this.copiesQuietly()) if (isSyncPairType(c.type) && c.source === volume && bvs.has(c.destination)) await this.cancelQuietly(c.id);
        this.store.deleteTransaction(volume);
      } else {
        const inUse = this.store.getBackupVolume(volume)!.inUseBy;
        if (inUse && !opts.force) {
          throw new AgentError(
            'FAILED_PRECONDITION',
            `cannot unregister backup volume ${volume}: it is in use by ${inUse} (a held generation or sync pair); let the generation go, cancel-sync, or pass --force`,
          );
        }
        for (const g of this.store.generationsOn(volume).filter((x) => x.status === 'held')) {
          await this.cancelQuietly(g.sessionId);
          this.store.updateGeneration(g.transactionVolume, g.number, { status: 'released', sessionId: '', error: `backup volume ${volume} was unregistered` });
        }
        for (const s of this.store.listSync().filter((x) => x.backupVolume === volume)) {
          await this.cancelQuietly(s.sessionId);
          this.store.deleteSync(s.transactionVolume);
        }
        for (const c of leftoverPairs(this.ctx(), await this.copiesQuietly(), volume)) await this.cancelQuietly(c.id);
        this.store.deleteBackupVolume(volume);
      }
      this.log.info({ volume }, 'unregistered');
    } finally {
      this.store.releaseOperation(claimed, this.owner);
    }
  }

  // ---- backup ----

  async backup(volumes: string[], opts: BackupOptions = {}): Promise<BackupReport> {
    if (volumes.length === 0) throw new AgentError('INVALID_ARGUMENT', 'backup: name at least one transaction volume');
    const dup = volumes.find((v, i) => volumes.indexOf(v) !== i);
    if (dup !== undefined) throw new AgentError('INVALID_ARGUMENT', `backup: ${dup} is named twice; name each volume once`);
    if (opts.type !== undefined && !(['opc', 'quickopc', 'snapopcplus', 'ec'] as string[]).includes(opts.type)) {
      throw new AgentError('INVALID_ARGUMENT', `--type ${String(opts.type)} is not a backup type; use opc, quickopc or snapopcplus`);
    }
    const to = opts.to ?? 'disk';
    if (!['disk', 'tape', 'both'].includes(to)) throw new AgentError('INVALID_ARGUMENT', `--to ${String(to)}: use disk, tape or both`);
    const completeAfter = opts.completeAfter ?? 'tape';
    if (completeAfter !== 'disk' && completeAfter !== 'tape')
      throw new AgentError('INVALID_ARGUMENT', `--complete-after ${String(completeAfter)}: use disk or tape`);
    if (opts.completeAfter === 'disk' && to !== 'both') {
      throw new AgentError(
        'INVALID_ARGUMENT',
        `--complete-after disk applies to --to both (the tape copy then goes on in the background); drop it, or back up with --to both`,
      );
    }
    const waitSeconds = opts.waitEquivalentSeconds ?? 0;
    if (!(Number.isFinite(waitSeconds) && waitSeconds >= 0))
      throw new AgentError('INVALID_ARGUMENT', `--wait-equivalent ${waitSeconds}: give seconds, 0 or more`);

    let arrayVolumes: Map<string, VolumeInfo>;
    let devices: DeviceMapping[];
    try {
      const list = await this.array.listVolumes();
      arrayVolumes = new Map(list.map((v) => [v.name, v]));
      devices = await this.host.devices(list);
    } catch (err) {
      throw new AgentError('UNAVAILABLE', `cannot back up ${volumes.join(', ')}: ${(err as Error).message}`);
    }
    const jobs: Job[] = [];
    const background: Job[] = [];
    try {
      // 1-3: claim, choose the backup volume, pre-process; a volume that fails is left out.
      for (const volume of volumes) {
        const job = this.newJob(volume);
        jobs.push(job);
        try {
          this.planJob(job, opts, arrayVolumes, devices);
          // Refused before anything is locked; the array refuses the cut too if it changed since.
          if (job.sync) await waitEquivalent(this.ctx(), volume, job.sync, waitSeconds, opts.onProgress);
          await this.preProcess(job, opts);
        } catch (err) {
          this.failJob(job, err);
        }
      }
      // 4: the array, at one instant for the volumes still in. A freeze its guard has ended at
      // the deadline no longer holds the image still: such a volume is not copied, and a copy
      // whose call returned after the deadline may have been cut after the thaw, so it fails.
      const live = jobs.filter((j) => !j.failed && j.locked);
      for (const j of live) this.checkFreezeHeld(j);
      await this.copyStep(live.filter((j) => !j.failed));
      for (const j of live.filter((x) => x.copied && !x.failed)) {
        if (this.checkFreezeHeld(j)) this.store.updateGeneration(j.volume, j.generation, { status: 'failed', error: j.outcome.error ?? '' });
      }
      for (const j of live) this.settleReleased(j);
      // 5: post-processing, always, for every volume that was locked.
      for (const job of jobs.filter((j) => j.locked)) await this.postProcess(job, opts);
      // 6: tape copies from the backup volumes; with --complete-after disk in the background,
      // holding the backup volume (not the transaction volume) until written.
      if (to !== 'disk') {
        for (const job of jobs.filter((j) => j.copied && !j.failed)) {
          if (completeAfter === 'disk') {
            this.store.updateGeneration(job.volume, job.generation, {
              tape: {
                cartridge: opts.cartridge ?? '',
                record: 0,
                sha256: '',
                at: this.iso(),
                pointInTime: job.imageAt || job.at,
                status: 'pending',
                error: '',
                pid: process.pid,
              },
            });
            background.push(job);
          } else {
            await this.tapeCopy(job, opts);
          }
        }
      }
      // Synchronized backups release the oldest generation after the copy (N+1 volumes); after
      // the tape step, so that a --to tape generation that only staged its copy counts as such.
      for (const job of jobs.filter((j) => j.copied && j.kind === 'sync')) await this.releaseBeyond(job.volume, job.tv.generations);
    } finally {
      for (const job of jobs) {
        if (background.includes(job))
          this.store.releaseOperation(
            job.claimed.filter((v) => v !== job.bv),
            this.owner,
          );
        else this.store.releaseOperation(job.claimed, this.owner);
      }
    }
    for (const job of jobs) {
      if (job.copied) job.outcome.generation = this.historyEntry(job.volume, job.generation);
      job.outcome.ok = !job.failed;
    }
    // Automatic re-mirroring (HSMS: mirroring recommences after the backup unless
    // DISCARD-COPY=*NO): once the copy is safe, i.e. after its tape copy where there is one.
    const resyncs = jobs.filter((j) => j.kind === 'sync' && j.copied && !j.failed && j.resync);
    for (const job of resyncs.filter((j) => !background.includes(j))) await this.resync(job, opts);
    for (const job of background) this.runInBackground(job, opts);
    await this.reportToArray(jobs);
    return { ok: jobs.every((j) => !j.failed), volumes: jobs.map((j) => j.outcome) };
  }

  /**
   * Tells the array how each volume's backup ended (an event on its stream, `arraylab events`),
   * best-effort: an array with its events off, an older array or a lost connection costs a
   * warning, never the backup. Each report waits REPORT_TIMEOUT_MS at most.
   */
  private async reportToArray(jobs: Job[]): Promise<void> {
    if (this.array.reportAgentEvent === undefined) return;
    const host = hostname();
    await Promise.all(
      jobs.map(async (j) => {
        const planned = j.bv !== '';
        const report: AgentEventReport = {
          kind: j.failed ? 'agent.backup.failed' : 'agent.backup.completed',
          volume: j.volume,
          host,
          ...(planned ? { backupVolume: j.bv, type: j.type } : {}),
          ...(j.copied ? { generation: j.generation } : {}),
          ...(j.sessionId ? { sessionId: j.sessionId } : {}),
          ...(j.failed ? { error: j.outcome.error ?? '' } : {}),
        };
        let timer: NodeJS.Timeout | undefined;
        try {
          await Promise.race([
            this.array.reportAgentEvent!(report),
            new Promise((_, reject) => {
              timer = setTimeout(() => reject(new Error(`no answer within ${REPORT_TIMEOUT_MS / 1000} s`)), REPORT_TIMEOUT_MS);
            }),
          ]);
        } catch (err) {
          this.log.warn(
            { volume: j.volume, event: report.kind, err: (err as Error).message },
            'could not report the backup to the array (arraylab events will not show it); the backup itself is not affected',
          );
        } finally {
          clearTimeout(timer);
        }
      }),
    );
  }

  /** Background work (tape copies of --complete-after disk) still running; close() waits for it. */
  private readonly pending = new Set<Promise<void>>();

  /** Resolves when every background tape copy (and its resync) has ended. */
  async settled(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }

  private runInBackground(job: Job, opts: BackupOptions): void {
    const bgOpts: BackupOptions = { ...opts, completeAfter: 'tape' };
    delete bgOpts.onProgress; // the caller has its answer; progress goes to the log
    const p = (async () => {
      try {
        await this.tapeCopy(job, bgOpts);
        if (job.kind === 'sync' && job.resync && !job.failed) await this.resync(job, bgOpts);
      } catch (err) {
        this.log.error({ volume: job.volume, generation: job.generation, err: (err as Error).message }, 'background tape copy failed');
      } finally {
        this.store.releaseOperation([job.bv], this.owner);
      }
    })();
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
  }

  private async resync(job: Job, opts: BackupOptions): Promise<void> {
    try {
      job.outcome.resync = await startSync(this.ctx(), job.volume, { ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) });
    } catch (err) {
      job.outcome.resyncError = `${job.volume} was backed up, but resuming its mirroring failed: ${(err as Error).message}; start it with: arraylab-agent start-sync ${job.volume}`;
      this.log.warn({ volume: job.volume, err: (err as Error).message }, 'resync after backup failed');
    }
  }

  private newJob(volume: string): Job {
    const tv = this.store.getTransaction(volume);
    const job: Job = {
      volume,
      tv: tv!,
      outcome: { volume, ok: false, hooks: [] },
      failed: false,
      kind: 'snapshot',
      type: 'opc',
      prep: 'unmount',
      prepDone: 'none',
      resync: false,
      bv: '',
      bvDevice: '',
      tvDevice: '',
      mountPoint: '',
      release: [],
      released: [],
      startUncertain: false,
      restartSession: '',
      sync: undefined,
      ledger: new LockLedger(this.store, this.host, this.log, volume, this.owner),
      claimed: [],
      sessionId: '',
      locked: false,
      copied: false,
      at: '',
      imageAt: '',
      generation: 0,
    };
    return job;
  }

  /** Fails the job (and returns true) when a freeze of it has passed its thaw deadline. */
  private checkFreezeHeld(job: Job): boolean {
    const now = Date.now();
    for (const rec of job.ledger.records) {
      if (rec.action !== 'frozen' || !rec.thawDeadline || now < Date.parse(rec.thawDeadline)) continue;
      const seconds = this.freezeDeadlineMs !== undefined ? `${this.freezeDeadlineMs / 1000} s` : 'the default';
      this.failJob(
        job,
        new AgentError(
          'ABORTED',
          `the freeze of ${rec.mounts[0]?.mountPoint ?? rec.device} reached its deadline at ${rec.thawDeadline} and was thawed before the copy of ${job.volume} was cut, so a copy would not be the frozen image; raise --freeze-deadline (now ${seconds}) or find what slowed the array`,
        ),
      );
      return true;
    }
    return false;
  }

  private failJob(job: Job, err: unknown, prefix = ''): void {
    job.failed = true;
    const msg = (err as Error).message;
    job.outcome.error = job.outcome.error ? `${job.outcome.error}; ${prefix}${msg}` : `${prefix}${msg}`;
    if (err instanceof AgentError && job.outcome.code === undefined) job.outcome.code = err.code;
    this.log.warn({ volume: job.volume, err: msg }, 'backup of volume failed');
  }

  /** Claims the volume, picks the type and the backup volume (no side effect on the array). */
  private planJob(job: Job, opts: BackupOptions, arrayVolumes: Map<string, VolumeInfo>, devices: DeviceMapping[]): void {
    const { volume } = job;
    if (!job.tv) {
      throw new AgentError(
        this.store.getBackupVolume(volume) ? 'FAILED_PRECONDITION' : 'NOT_FOUND',
        this.store.getBackupVolume(volume)
          ? `${volume} is a backup volume; back up its transaction volume instead`
          : `${volume} is not a registered transaction volume; register it with: arraylab-agent register transaction ${volume}`,
      );
    }
    job.claimed.push(...this.claim([volume], 'backup'));
    const tvInfo = arrayVolumes.get(volume);
    if (!tvInfo) throw new AgentError('NOT_FOUND', `transaction volume ${volume} does not exist on the array; recreate it, or ${RM_FIX} to flag its records`);
    job.prep = opts.flushOnly || job.tv.flushOnly ? 'flush' : job.tv.lock;
    job.tvDevice = this.pinnedDevice(devices, volume, tvInfo, 'transaction');
    // Never a backup "with a lock" that locked nothing: only --lock none goes without a device.
    if (job.prep !== 'none' && job.tvDevice === '') {
      const what = job.prep === 'flush' ? 'flush it' : job.prep === 'freeze' ? 'freeze it (--lock freeze)' : 'lock it (--lock unmount)';
      throw new AgentError('FAILED_PRECONDITION', `cannot back up ${volume}: the agent must ${what}, but ${noDeviceMessage(volume, tvInfo)}`);
    }
    job.sync = this.store.getSync(volume);
    job.resync = opts.resync ?? job.tv.resyncAfterBackup;
    if (job.sync) {
      if (opts.type !== undefined && opts.type !== 'ec') {
        throw new AgentError(
          'FAILED_PRECONDITION',
          `${volume} has a sync pair with ${job.sync.backupVolume}: back it up without --type (the ${pairName(job.sync.backupVolume)} is the backup), or cancel-sync first for a ${opts.type} backup`,
        );
      }
      if (isRemoteVolume(job.sync.backupVolume) && opts.to !== undefined && opts.to !== 'disk') {
        // The tape library is the agent's array's; the generation's image is on the remote one.
        throw new AgentError(
          'FAILED_PRECONDITION',
          `${volume} is mirrored to the remote backup volume ${job.sync.backupVolume}, which this array's tape library cannot read; back it up with --to disk (or without --to), or use a local backup volume for tape copies`,
        );
      }
      job.kind = 'sync';
      job.type = 'ec';
      job.bv = job.sync.backupVolume;
      job.bvDevice = this.pinnedDevice(devices, job.bv, arrayVolumes.get(job.bv), 'backup');
      return;
    }
    if (opts.resync === true)
      throw new AgentError(
        'FAILED_PRECONDITION',
        `--resync is for synchronized backups, and ${volume} has no sync pair; start one with: arraylab-agent start-sync ${volume}, or drop --resync`,
      );
    if (opts.type === 'ec') throw new AgentError('FAILED_PRECONDITION', `${volume} has no sync pair; start one with: arraylab-agent start-sync ${volume}`);
    job.type = opts.type ?? job.tv.defaultType;
    const n = job.tv.generations;
    if (job.type === 'snapopcplus' && n > MAX_SNAP_GENERATIONS) {
      throw new AgentError(
        'INVALID_ARGUMENT',
        `${volume} keeps ${n} generations but SnapOPC+ keeps at most ${MAX_SNAP_GENERATIONS}; register it with --generations ${MAX_SNAP_GENERATIONS} or less`,
      );
    }
    const held = this.store.heldGenerations(volume);
    let picked = '';
    if (held.length < n) {
      picked = this.pickUnused(volume, tvInfo, held.length, arrayVolumes, 'backup');
    } else if (opts.to === 'tape') {
      // A tape-only backup only stages its copy: an unused volume if there is one, so that no
      // held disk generation is given up for it.
      try {
        picked = this.pickUnused(volume, tvInfo, held.length, arrayVolumes, 'backup');
      } catch (err) {
        if (!(err instanceof AgentError && err.code === 'RESOURCE_EXHAUSTED')) throw err;
      }
    }
    if (picked) {
      job.bv = picked;
      job.claimed.push(picked);
    } else {
      // N held: the oldest goes first and its volume is reused, so N volumes serve N generations.
      job.release = held.slice(0, held.length - n + 1);
      const oldest = job.release[0]!;
      job.bv = oldest.backupVolume;
      job.claimed.push(...this.claim([job.bv], 'backup'));
      if (oldest.type === 'quickopc' && job.type === 'quickopc' && oldest.sessionId) job.restartSession = oldest.sessionId;
      const bvInfo = arrayVolumes.get(job.bv);
      if (!bvInfo)
        throw new AgentError('NOT_FOUND', `backup volume ${job.bv} of ${volume}'s oldest generation ${oldest.number} does not exist on the array; ${RM_FIX}`);
    }
    job.bvDevice = this.pinnedDevice(devices, job.bv, arrayVolumes.get(job.bv), 'backup');
  }

  /**
   * An unused registered backup volume of the transaction volume's size and block size, claimed
   * (the caller records the claim). prefer: such volumes are taken first (start-sync: the ones
   * with a pair to resume).
   */
  private pickUnused(
    volume: string,
    tvInfo: VolumeInfo,
    heldCount: number,
    arrayVolumes: Map<string, VolumeInfo>,
    purpose: string,
    prefer?: (bv: string) => boolean,
  ): string {
    const sameSize = this.store.listBackupVolumes().filter((b) => {
      // A remote backup volume serves synchronized backups only (REC), with the size and block
      // size it was registered with: its array is not the one listed here. If it has changed
      // since, the array refuses the REC start and says why.
      if (isRemoteVolume(b.volume)) return purpose === 'start-sync' && b.sizeBytes === tvInfo.sizeBytes && b.blockSize === tvInfo.blockSize;
      const a = arrayVolumes.get(b.volume);
      return a !== undefined && a.sizeBytes === tvInfo.sizeBytes && a.blockSize === tvInfo.blockSize;
    });
    const order = prefer ? [...sameSize.filter((b) => prefer(b.volume)), ...sameSize.filter((b) => !prefer(b.volume))] : sameSize;
    for (const b of order) {
      if (b.inUseBy !== '' || b.needsResourceMatch !== '') continue;
      try {
        this.claim([b.volume], purpose);
        return b.volume;
      } catch (err) {
        if (err instanceof AgentError && err.code === 'ABORTED') continue; // another operation took it
        throw err;
      }
    }
    throw new AgentError(
      'RESOURCE_EXHAUSTED',
      `no unused backup volume of ${formatSize(tvInfo.sizeBytes)} for ${volume} (${heldCount} generation${heldCount === 1 ? '' : 's'} held, ${sameSize.length} registered backup volume${sameSize.length === 1 ? '' : 's'} of that size); register one with: arraylab-agent register backup VOL`,
    );
  }

  /** Hook backup-pre, lock the backup volume (snapshot), lock or flush the transaction volume. */
  private async preProcess(job: Job, opts: BackupOptions): Promise<void> {
    const progress = this.progressOf(opts.onProgress, job.volume);
    job.mountPoint = await this.mountPointOf(job.tvDevice);
    const hook = await this.runHook('backup-pre', job.volume, job.tvDevice, job.mountPoint, job.bv, this.store.peekGenerationNumber(job.volume));
    job.outcome.hooks.push(hook);
    if (!hookOk(hook)) {
      const reason = `backup-pre hook failed: ${hook.message}`;
      this.flag(job.volume, reason);
      job.outcome.needsResourceMatch = reason;
      throw new AgentError('ABORTED', `backup of ${job.volume} aborted: ${hook.message}; ${job.volume} needs a resource match: ${RM_FIX}`);
    }
    progress('lock', job.prep === 'none' ? `${job.volume}: --lock none, nothing done on the host` : `locking ${job.volume} (${job.prep})`);
    try {
      if (job.kind === 'snapshot' && job.bvDevice) await job.ledger.take(() => this.host.lockBackup(job.bv, job.bvDevice));
      const prep = job.prep;
      if (prep === 'none') job.prepDone = 'none';
      else
        job.prepDone = prepDone(
          await job.ledger.take(() =>
            this.host.lockTransaction(
              job.volume,
              job.tvDevice,
              prep,
              this.freezeDeadlineMs !== undefined ? { freezeDeadlineMs: this.freezeDeadlineMs } : undefined,
            ),
          ),
        );
    } catch (err) {
      const undo = await job.ledger.undoAll();
      if (undo.length > 0) {
        const reason = `pre-processing failed and could not be undone: ${undo.join('; ')}`;
        this.flag(job.volume, reason);
        job.outcome.needsResourceMatch = reason;
      }
      throw new AgentError(
        'FAILED_PRECONDITION',
        `pre-processing of ${job.volume} failed: ${(err as Error).message}${undo.length ? `; ${job.volume} needs a resource match: ${RM_FIX}` : ''}`,
      );
    }
    job.locked = true;
  }

  /** Releases the oldest generations, starts the copies (one group), cuts the EC pairs. */
  private async copyStep(jobs: Job[]): Promise<void> {
    const snap = jobs.filter((j) => j.kind === 'snapshot');
    let copies: CopySessionView[] = [];
    if (snap.length > 0) {
      try {
        copies = await this.array.listCopies();
      } catch (err) {
        for (const job of snap) this.failJob(job, err, `cannot list the array's copy sessions: `);
      }
    }
    for (const job of snap.filter((j) => !j.failed)) {
      try {
        await this.releaseForReuse(job, copies);
      } catch (err) {
        this.failJob(job, err, `cannot release the oldest generation of ${job.volume}: `);
      }
    }
    const starting = snap.filter((j) => !j.failed);
    const at = this.iso();
    for (const j of jobs) j.at = at;
    // A QuickOPC restart is refused inside a group by the array; start those on their own
    // (each transaction volume is locked, so the set is still consistent).
    const fresh = starting.filter((j) => !j.restartSession);
    if (fresh.length > 1) {
      const label = `agent-${Date.now()}`;
      try {
        const sessions = await this.array.startCopyGroup(
          label,
          fresh.map((j) => this.pair(j)),
        );
        fresh.forEach((j, i) => this.copyDone(j, sessions[i]!));
      } catch (err) {
        for (const j of fresh) j.startUncertain = !refused(err); // a group that may have started after all
        this.log.warn({ group: label, err: (err as Error).message }, 'group start refused; starting each volume on its own');
        for (const j of fresh) await this.startOne(j);
      }
    } else {
      for (const j of fresh) await this.startOne(j);
    }
    for (const j of starting.filter((x) => x.restartSession)) await this.startOne(j);

    // Synchronized: the cut suspends each pair, which stays suspended while its generation is
    // held (Suspend/Resume: the backup volume keeps the image, the array tracks the changes).
    const ec = jobs.filter((j) => j.kind === 'sync');
    const views = new Map<string, CopySessionView>();
    let cut = false;
    if (ec.length > 1) {
      try {
        for (const v of await this.array.cutCopyGroup('suspend', { ids: ec.map((j) => j.sync!.sessionId) })) views.set(v.id, v);
        cut = true;
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'group suspend refused; suspending each pair on its own');
      }
    }
    for (const j of ec) {
      let s: CopySessionView | undefined;
      try {
        s = cut ? views.get(j.sync!.sessionId) : await this.array.suspendCopy(j.sync!.sessionId);
      } catch (err) {
        this.failJob(j, err, `cannot suspend the ${pairName(j.bv)} ${j.volume} -> ${j.bv}: `);
        continue;
      }
      j.imageAt = s?.imageAt ?? '';
      const notCut = s ? this.notCut(j, s) : undefined;
      if (notCut) {
        this.failJob(j, notCut);
        continue;
      }
      j.sessionId = j.sync!.sessionId;
      j.generation = this.store.nextGenerationNumber(j.volume);
      this.store.syncToGeneration(this.genRecord(j, j.sessionId));
      j.copied = true;
      this.log.info({ volume: j.volume, backupVolume: j.bv, generation: j.generation, sessionId: j.sessionId }, 'synchronized backup: pair suspended');
    }
  }

  /**
   * Why the suspend did not cut the pair at this backup's instant. The array suspends a
   * halted REC pair too (its remote keeps the image of the halt, and it says so by giving no
   * imageAt): the pair may halt between the equivalency check and the cut, and the agent never
   * reports a backup that did not happen. The pair is left suspended: the error says what next.
   */
  private notCut(j: Job, s: CopySessionView): AgentError | undefined {
    if (s.type !== 'rec') return undefined;
    if (!s.remote?.haltReason && s.imageAt) return undefined;
    const why = s.remote?.haltReason ? `${s.remote.haltReason}${s.remote.haltDetail ? `: ${s.remote.haltDetail}` : ''}` : 'the array gave no image instant';
    return new AgentError(
      'FAILED_PRECONDITION',
      `the REC pair ${j.volume} -> ${j.bv} (session ${s.id}) halted before the cut (${why}), so ${j.bv} holds the image of the halt, not of this backup; no generation was made; the pair is now suspended: once the link is back, resume it (arraylab copy resume ${s.id}) and back up again when it is equivalent, or cancel-sync and start-sync again`,
    );
  }

  private pair(j: Job): StartCopyParams {
    // force: the agent has just locked the backup volume on this host.
    return { type: j.type, source: j.volume, destination: j.bv, force: true };
  }

  private async startOne(j: Job): Promise<void> {
    try {
      this.copyDone(j, await this.array.startCopy(this.pair(j)));
    } catch (err) {
      j.startUncertain ||= !refused(err);
      this.failJob(j, err, `cannot start ${j.type} ${j.volume} -> ${j.bv}: `);
    }
  }

  private copyDone(j: Job, s: CopySessionView): void {
    const sessionId = s.id;
    j.sessionId = sessionId;
    j.imageAt = s.imageAt ?? '';
    j.generation = this.store.nextGenerationNumber(j.volume);
    this.store.insertGeneration(this.genRecord(j, sessionId));
    j.copied = true;
    this.log.info({ volume: j.volume, backupVolume: j.bv, type: j.type, generation: j.generation, sessionId }, 'backup copied');
  }

  private genRecord(j: Job, sessionId: string): GenerationRecord {
    return {
      number: j.generation,
      transactionVolume: j.volume,
      backupVolume: j.bv,
      type: j.type,
      sessionId,
      at: j.at,
      status: 'held',
      prep: j.prepDone,
      tape: null,
      error: '',
    };
  }

  /**
   * The oldest generations go before the copy; a QuickOPC one of the same pair keeps its
   * session. A suspended EC pair left on the chosen volume by a released synchronized
   * generation makes way too.
   */
  private async releaseForReuse(job: Job, copies: CopySessionView[]): Promise<void> {
    for (const g of job.release) {
      // An OPC whose copy finished has no session left: releasing it changes only the record.
      const live = g.sessionId !== '' && g.sessionId !== job.restartSession && copies.some((c) => c.id === g.sessionId);
      if (g.sessionId && g.sessionId !== job.restartSession) await this.cancelSession(g.sessionId);
      this.store.updateGeneration(g.transactionVolume, g.number, { status: releasedStatus(g), sessionId: '' });
      job.released.push({ g, intact: !live });
      this.log.info({ volume: g.transactionVolume, generation: g.number, backupVolume: g.backupVolume }, 'oldest generation released for reuse');
    }
    const released = new Set(job.release.map((g) => g.sessionId));
    for (const s of leftoverPairs(this.ctx(), copies, job.bv)) {
      if (released.has(s.id)) continue;
      await this.cancelSession(s.id);
      this.log.info({ volume: job.volume, backupVolume: job.bv, sessionId: s.id }, 'suspended EC pair of a released generation cancelled for reuse');
    }
  }

  /**
   * A backup that failed after releasing the oldest generations for reuse: those the array
   * still holds whole (the new copy never started on their volume and nothing was cancelled)
   * are held again; the others are gone, and the failure says so, so that a failed backup
   * never hides that it cost the previous one.
   */
  private settleReleased(job: Job): void {
    if (!job.failed) return;
    const gone: string[] = [];
    for (const { g, intact } of job.released) {
      if (job.startUncertain) {
        gone.push(
          `generation #${g.number} (${g.type} on ${g.backupVolume}, of ${g.at}) was released before the copy to reuse its volume; the array did not answer whether it started the copy there, so take it as gone${g.tape?.status === 'ok' ? ' (its tape copy stays restorable)' : ''}`,
        );
        continue;
      }
      if (intact && !job.copied) {
        this.store.updateGeneration(g.transactionVolume, g.number, { status: 'held', sessionId: g.sessionId });
        this.log.info({ volume: g.transactionVolume, generation: g.number }, 'the backup failed before its copy: the generation it released is held again');
        continue;
      }
      gone.push(
        `generation #${g.number} (${g.type} on ${g.backupVolume}, of ${g.at}) was released before the copy to reuse its volume, and is gone with it${g.tape?.status === 'ok' ? ' (its tape copy stays restorable)' : ''}`,
      );
    }
    job.released = [];
    if (gone.length > 0) job.outcome.error = `${job.outcome.error ?? 'the backup failed'}; ${gone.join('; ')}`;
  }

  /**
   * After a synchronized backup: release the oldest while more than n are held. A released
   * synchronized generation keeps its pair suspended on the array, for the next start-sync to
   * resume; other types' sessions end.
   */
  private async releaseBeyond(volume: string, n: number): Promise<void> {
    const held = this.store.heldGenerations(volume);
    for (const g of held.slice(0, Math.max(0, held.length - n))) {
      try {
        if (g.sessionId && g.type !== 'ec') await this.cancelSession(g.sessionId);
        this.store.updateGeneration(volume, g.number, { status: releasedStatus(g), sessionId: '' });
      } catch (err) {
        this.flag(volume, `cannot release generation ${g.number}: ${(err as Error).message}`);
      }
    }
  }

  /** Unlock the transaction volume, drop the backup volume's cache, unlock it, hook backup-post. */
  private async postProcess(job: Job, opts: BackupOptions): Promise<void> {
    const progress = this.progressOf(opts.onProgress, job.volume);
    progress('unlock', `unlocking ${job.volume}`);
    const errors: string[] = [];
    try {
      await job.ledger.undo(job.volume);
    } catch (err) {
      errors.push(`cannot unlock ${job.volume}: ${(err as Error).message}`);
    }
    if (job.bvDevice) {
      try {
        await this.host.invalidate(job.bvDevice);
      } catch (err) {
        errors.push(`cannot drop the cached blocks of ${job.bv} (${job.bvDevice}): ${(err as Error).message}`);
      }
    }
    errors.push(...(await job.ledger.undoAll()));
    const hook = await this.runHook(
      'backup-post',
      job.volume,
      job.tvDevice,
      job.mountPoint,
      job.bv,
      job.copied ? job.generation : this.store.peekGenerationNumber(job.volume),
    );
    job.outcome.hooks.push(hook);
    if (!hookOk(hook)) errors.push(`backup-post hook failed: ${hook.message}`);
    if (errors.length > 0) {
      const reason = `post-processing failed: ${errors.join('; ')}`;
      this.flag(job.volume, reason);
      job.outcome.needsResourceMatch = reason;
      const done = job.copied ? `generation ${job.generation} was made, but ` : '';
      this.failJob(job, new AgentError('INTERNAL', `${done}${reason}; ${job.volume} needs a resource match: ${RM_FIX}`));
    }
  }

  private async tapeCopy(job: Job, opts: BackupOptions): Promise<void> {
    const progress = this.progressOf(opts.onProgress, job.volume);
    const g = job.generation;
    progress('tape', `writing ${job.bv} (${job.volume} generation #${g}) to tape`);
    let tape: TapeCopyRecord;
    try {
      // The array's own instant of the image: the agent's clock may differ from the array's.
      const rec = await this.tape.writeTape(
        {
          volume: job.bv,
          ...(opts.cartridge ? { cartridge: opts.cartridge } : {}),
          tag: `${job.volume} gen ${g}`,
          ...(job.imageAt ? { pointInTime: job.imageAt } : {}),
        },
        (p) => progress('tape', `tape ${job.volume} generation #${g}`, p.doneBytes, p.totalBytes),
      );
      tape = {
        cartridge: rec.cartridge,
        record: rec.record,
        sha256: rec.sha256,
        at: rec.createdAt,
        pointInTime: rec.imageAt || job.imageAt || job.at,
        status: 'ok',
        error: '',
      };
    } catch (err) {
      const msg = (err as Error).message;
      this.store.updateGeneration(job.volume, g, {
        tape: { cartridge: opts.cartridge ?? '', record: 0, sha256: '', at: this.iso(), pointInTime: job.imageAt || job.at, status: 'failed', error: msg },
      });
      this.failJob(
        job,
        new AgentError(
          'INTERNAL',
          `the tape copy of ${job.volume} generation #${g} failed: ${msg}; the disk generation is kept; back up again with --to tape to retry`,
        ),
      );
      job.outcome.generation = this.historyEntry(job.volume, g);
      job.outcome.ok = false;
      return;
    }
    this.store.updateGeneration(job.volume, g, { tape });
    job.outcome.generation = this.historyEntry(job.volume, g);
    if (opts.to !== 'tape') return;
    // --to tape: the disk generation only staged the copy; free its backup volume (a
    // synchronized one keeps its suspended pair for the next start-sync to resume).
    try {
      if (job.sessionId && job.kind !== 'sync') await this.cancelSession(job.sessionId);
      this.store.updateGeneration(job.volume, g, { status: 'tape-only', sessionId: '' });
    } catch (err) {
      // e.g. a SnapOPC+ generation with older ones behind it cannot be cancelled alone.
      this.store.updateGeneration(job.volume, g, { error: `kept on disk after the tape copy: ${(err as Error).message}` });
      this.log.warn({ volume: job.volume, generation: g, err: (err as Error).message }, 'tape-staged generation kept on disk');
    }
    job.outcome.generation = this.historyEntry(job.volume, g);
  }

  // ---- synchronized backup ----

  async startSync(volume: string, opts: StartSyncOptions = {}): Promise<SyncView> {
    return startSync(this.ctx(), volume, opts);
  }

  async cancelSync(volume: string): Promise<void> {
    return cancelSync(this.ctx(), volume);
  }

  // ---- restore ----

  async restore(volume: string, opts: RestoreOptions = {}): Promise<RestoreReport> {
    return restore(this.ctx(), volume, opts);
  }

  // ---- history and status ----

  async history(volume?: string): Promise<HistoryEntry[]> {
    if (volume !== undefined && !this.store.getTransaction(volume) && this.store.listGenerations(volume).length === 0) {
      throw new AgentError('NOT_FOUND', `${volume} is not a registered transaction volume; arraylab-agent status lists them`);
    }
    const a = await this.arrayState(); // first: it records what it learns in the generations
    return toHistory(this.store.listGenerations(volume), a);
  }

  /** One generation as history shows it (absolute number in, relative number out). */
  historyEntry(volume: string, number: number): HistoryEntry {
    return toHistory(this.store.listGenerations(volume), undefined).find((x) => x.number === number)!;
  }

  /** Why the last arrayState() had none (the API's error, which says whether the array answered). */
  private arrayStateError = '';

  /** The array's volumes and sessions, or undefined (logged; arrayStateError says why) when they cannot be read. */
  async arrayState(): Promise<ArrayState | undefined> {
    let a: ArrayState;
    try {
      const [list, copies] = [await this.array.listVolumes(), await this.array.listCopies()];
      a = { volumes: new Map(list.map((v) => [v.name, v])), copies: new Map(copies.map((c) => [c.id, c])) };
    } catch (err) {
      this.arrayStateError = (err as Error).message;
      this.log.warn({ err: this.arrayStateError }, "the array's volumes and sessions could not be read: generations not checked");
      return undefined;
    }
    this.arrayStateError = '';
    this.rememberErrorSuspended(a);
    await this.rememberOpcEndings(a);
    return a;
  }

  /**
   * Held OPC generations whose session is gone: the array says whether the copy finished or
   * the session was cancelled first (the backup volume holds part of the image: recorded,
   * generations.ts ENDED_UNFINISHED). Unknown (the array restarted since, or does not say)
   * stays as it is: a finished copy, as before. (resource-match clears finished ones' ids.)
   */
  private async rememberOpcEndings(a: ArrayState): Promise<void> {
    const gone = this.store
      .listGenerations()
      .filter((g) => g.status === 'held' && g.type === 'opc' && g.sessionId !== '' && !a.copies.has(g.sessionId) && !errorSeen(g) && !endedUnfinished(g));
    if (gone.length === 0) return;
    let endings: Map<string, string>;
    try {
      endings = await this.array.copyEndings(gone.map((g) => g.sessionId));
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'the array did not say how ended OPC sessions ended');
      return;
    }
    for (const g of gone) {
      const how = endings.get(g.sessionId);
      if (how === 'cancelled' || how === 'dropped') {
        const reason = `${ENDED_UNFINISHED}${g.sessionId} was ${how} on the array before its copy finished: ${g.backupVolume} holds only part of ${g.transactionVolume} generation #${g.number}`;
        this.store.updateGeneration(g.transactionVolume, g.number, { error: reason });
        this.log.warn({ volume: g.transactionVolume, generation: g.number, sessionId: g.sessionId }, reason);
      }
    }
  }

  /**
   * Held generations whose session the array error-suspended keep that verdict in their record
   * (generations.ts, ERROR_SUSPENDED): the array forgets it when the session is cancelled, and
   * an OPC session that is gone would then read as one whose copy finished.
   */
  private rememberErrorSuspended(a: ArrayState): void {
    for (const g of this.store.listGenerations()) {
      if (g.status !== 'held' || !g.sessionId || errorSeen(g)) continue;
      const s = a.copies.get(g.sessionId);
      if (s?.state !== 'error-suspended') continue;
      const reason = `${ERROR_SUSPENDED}${s.id}: ${s.error || 'no reason given'}`;
      this.store.updateGeneration(g.transactionVolume, g.number, { error: reason });
      this.log.warn({ volume: g.transactionVolume, generation: g.number, sessionId: s.id }, reason);
    }
  }

  async status(): Promise<AgentStatus> {
    const a = await this.arrayState();
    const list = a ? [...a.volumes.values()] : undefined;
    const devices = list ? await this.host.devices(list) : [];
    const ops = this.store.listOperations();
    const transactionVolumes = [];
    for (const tv of this.store.listTransactions()) {
      const device = deviceOf(devices, tv.volume);
      const mountPoint = await this.mountPointOf(device);
      const sync = this.store.getSync(tv.volume);
      let view: SyncView | null = null;
      if (sync) {
        const s = a?.copies.get(sync.sessionId);
        view = s
          ? syncView(tv.volume, sync.backupVolume, s)
          : {
              transactionVolume: tv.volume,
              backupVolume: sync.backupVolume,
              sessionId: sync.sessionId,
              state: a ? 'gone' : 'unknown',
              copiedPercent: 0,
              start: '',
              unitsToCopy: 0,
              totalUnits: 0,
            };
      }
      const op = ops.find((o) => o.volume === tv.volume && isAlive(o.pid));
      const rel = relativeNumbers(this.store.listGenerations(tv.volume));
      const unhealthy: string[] = [];
      for (const g of a ? this.store.heldGenerations(tv.volume) : []) {
        const h = assess(g, a!);
        if (h) unhealthy.push(`generation ${rel.get(key(g)) ?? '-'} (#${g.number}): ${h.status}: ${h.reason}`);
      }
      transactionVolumes.push({
        ...tv,
        device,
        mountPoint,
        sync: view,
        heldGenerations: this.store.heldGenerations(tv.volume).length,
        unhealthy,
        busy: op ? `${op.op} by pid ${op.pid} since ${op.startedAt}` : '',
      });
    }
    return { transactionVolumes, backupVolumes: this.store.listBackupVolumes().map(publicBv), outstandingLocks: this.store.listLocks().map((l) => l.record) };
  }

  async devices(): Promise<DeviceMapping[]> {
    return this.host.devices(await this.array.listVolumes());
  }

  async resourceMatch(): Promise<ResourceMatchReport> {
    return resourceMatch(this.ctx());
  }

  // ---- shared helpers (also for restore.ts and resourceMatch.ts) ----

  /** What the other files of backup/ need from the manager. */
  ctx(): ManagerContext {
    return {
      store: this.store,
      array: this.array,
      tape: this.tape,
      host: this.host,
      log: this.log,
      owner: this.owner,
      pollMs: this.pollMs,
      iso: () => this.iso(),
      claim: (v, op) => this.claim(v, op),
      flag: (v, r) => this.flag(v, r),
      runHook: (phase, volume, device, mountPoint, bv, gen) => this.runHook(phase, volume, device, mountPoint, bv, gen),
      mountPointOf: (d) => this.mountPointOf(d),
      cancelSession: (id) => this.cancelSession(id),
      historyEntry: (v, n) => this.historyEntry(v, n),
      requireTransaction: (v) => this.requireTransaction(v),
      progressOf: (cb, v) => this.progressOf(cb, v),
      pickUnused: (v, info, held, vols, purpose, prefer) => this.pickUnused(v, info, held, vols, purpose, prefer),
      arrayState: () => this.arrayState(),
      arrayStateError: () => this.arrayStateError,
      pinnedDevice: (devices, volume, info, role) => this.pinnedDevice(devices, volume, info, role),
    };
  }

  /** A registered volume's device here, refused if it is not the volume pinned at registration (pins.ts). */
  private pinnedDevice(devices: DeviceMapping[], volume: string, info: VolumeInfo | undefined, role: 'transaction' | 'backup'): string {
    return pinnedDevice(this.store, this.log, devices, volume, info, role, this.iso());
  }

  /** The array's copy sessions, or none (logged) when it cannot be reached. */
  private async copiesQuietly(): Promise<CopySessionView[]> {
    try {
      return await this.array.listCopies();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, "cannot list the array's copy sessions");
      return [];
    }
  }

  private iso(): string {
    return this.now().toISOString();
  }

  private requireTransaction(volume: string): TransactionVolumeRecord {
    const tv = this.store.getTransaction(volume);
    if (!tv)
      throw new AgentError('NOT_FOUND', `${volume} is not a registered transaction volume; register it with: arraylab-agent register transaction ${volume}`);
    return tv;
  }

  private async arrayVolume(volume: string): Promise<VolumeInfo> {
    try {
      return await this.array.getVolume(volume);
    } catch (err) {
      if (isNotFound(err))
        throw new AgentError('NOT_FOUND', `no volume named ${volume} on the array; create it (arraylab volume create ${volume} --size SIZE) or check the name`);
      throw new AgentError(codeOf(err), (err as Error).message);
    }
  }

  /**
   * The size and block size of backup volume REMOTE:VOL, from the remote array itself (the
   * agent's array's remote list gives its API address). Refused, naming the fix, when the
   * array knows no such remote, the remote has no such volume, or cannot be reached.
   */
  private async remoteVolume(name: string): Promise<VolumeInfo> {
    const r = remoteOf(name)!;
    if (r.remote === '' || r.volume === '' || r.volume.includes(':')) {
      throw new AgentError('INVALID_ARGUMENT', `${name} is not REMOTE:VOL; name a remote array the array knows and a volume on it, e.g. site-b:vol1`);
    }
    let remotes: Awaited<ReturnType<ArrayPort['listRemotes']>>;
    try {
      remotes = await this.array.listRemotes();
    } catch (err) {
      throw new AgentError(codeOf(err), `cannot register ${name}: the array's remote arrays could not be listed: ${(err as Error).message}`);
    }
    const remote = remotes.find((x) => x.name === r.remote);
    if (!remote) {
      const known = remotes.map((x) => x.name).join(', ');
      throw new AgentError(
        'FAILED_PRECONDITION',
        `cannot register ${name}: the array knows no remote array named ${r.remote} (its remote list: ${known || 'empty'}); add it on the array with: arraylab remote add ${r.remote} --api HOST:PORT, then register ${name} again`,
      );
    }
    const client = this.remoteArray(remote.api);
    try {
      return await client.getVolume(r.volume);
    } catch (err) {
      if (isNotFound(err)) {
        throw new AgentError(
          'NOT_FOUND',
          `cannot register ${name}: remote array ${r.remote} (${remote.api}) has no volume named ${r.volume}; create it there (arraylab --api ${remote.api} volume create ${r.volume} --size SIZE) or check the name`,
        );
      }
      throw new AgentError(
        'UNAVAILABLE',
        `cannot register ${name}: the size of ${r.volume} could not be read from remote array ${r.remote} at ${remote.api}: ${(err as Error).message}; the agent asks the remote array's API for it, so this host must reach ${remote.api}: check that the remote array runs and the address in arraylab remote list`,
      );
    } finally {
      client.close();
    }
  }

  /** Claims volumes for an operation; a live holder is ABORTED, a dead one's row is taken over and flagged. */
  private claim(volumes: string[], op: string): string[] {
    try {
      const { tookOver } = this.store.claimOperation(volumes, this.owner, process.pid, op, this.iso(), isAlive);
      for (const t of tookOver) {
        this.flag(t.volume, `a ${t.op} started by pid ${t.pid} at ${t.startedAt} did not finish (the process is gone)`);
        this.log.warn({ volume: t.volume, pid: t.pid, op: t.op }, 'took over the operation row of a process that is gone');
      }
      return volumes;
    } catch (err) {
      if (err instanceof BusyError) {
        const h = err.holder;
        throw new AgentError(
          'ABORTED',
          `${h.volume} is in a ${h.op} started by pid ${h.pid} at ${h.startedAt}; wait for it or, if that process is gone, ${RM_FIX}`,
        );
      }
      throw err;
    }
  }

  private flag(volume: string, reason: string): void {
    this.store.setNeedsResourceMatch(volume, reason);
    this.log.warn({ volume, reason }, 'volume needs a resource match');
  }

  private async runHook(phase: HookPhase, volume: string, device: string, mountPoint: string, backupVolume?: string, generation?: number): Promise<HookResult> {
    const ctx: HookContext = {
      phase,
      volume,
      device,
      mountPoint,
      ...(backupVolume ? { backupVolume } : {}),
      ...(generation !== undefined ? { generation } : {}),
    };
    return this.host.runHook(ctx, this.hookTimeoutMs !== undefined ? { timeoutMs: this.hookTimeoutMs } : undefined);
  }

  private async mountPointOf(device: string): Promise<string> {
    if (!device) return '';
    return (await this.host.mountsOf(device))[0]?.mountPoint ?? '';
  }

  /** Cancels a copy session; one that is already gone is fine. */
  private async cancelSession(id: string): Promise<void> {
    try {
      await this.array.cancelCopy(id);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  private async cancelQuietly(id: string): Promise<void> {
    if (!id) return;
    try {
      await this.cancelSession(id);
    } catch (err) {
      this.log.warn({ sessionId: id, err: (err as Error).message }, 'cannot cancel copy session');
    }
  }

  private progressOf(
    cb: ((p: ProgressEvent) => void) | undefined,
    volume: string,
  ): (step: string, message: string, doneBytes?: number, totalBytes?: number) => void {
    return (step, message, doneBytes, totalBytes) => {
      this.log.debug({ volume, step }, message);
      cb?.({ volume, step, message, ...(doneBytes !== undefined ? { doneBytes } : {}), ...(totalBytes !== undefined ? { totalBytes } : {}) });
    };
  }
}

/** What pre-processing did, from its lock record (history's PREP). */
function prepDone(rec: LockRecord): PrepDone {
  switch (rec.action) {
    case 'unmounted':
      return 'unmount';
    case 'frozen':
      return 'freeze';
    case 'flushed':
      return 'flush';
    default:
      return rec.device ? 'not-mounted' : 'none';
  }
}

/**
 * The array answered no (the call did nothing): not a call that failed on the way, timed out or
 * ended without an answer, after which the operation may still have happened on the array.
 */
function refused(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && !['UNAVAILABLE', 'DEADLINE_EXCEEDED', 'UNKNOWN', 'CANCELLED', 'INTERNAL'].includes(code);
}

/** A generation whose disk copy goes: restorable from tape still, or released. */
function releasedStatus(g: GenerationRecord): GenerationRecord['status'] {
  return g.tape?.status === 'ok' ? 'tape-only' : 'released';
}

function publicBv(b: BackupVolumeRecord & { blockSize?: number }): BackupVolumeRecord {
  return { volume: b.volume, sizeBytes: b.sizeBytes, registeredAt: b.registeredAt, inUseBy: b.inUseBy, needsResourceMatch: b.needsResourceMatch };
}
