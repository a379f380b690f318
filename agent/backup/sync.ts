/**
 * Synchronized backup's pairs (ACM Operator's Guide for Tape Server Option, 5.1.2 and 5.1.3):
 * start-sync, cancel-sync, and the wait for equivalency.
 *
 * Suspend/Resume: a synchronized backup suspends its EC pair and keeps it suspended while the
 * generation is held, so the backup volume keeps the image and the array records what changes
 * on the transaction volume. When the generation is released its backup volume is unused again
 * but keeps its suspended pair; start-sync prefers such a volume and resumes the pair, which
 * copies only what changed since that backup. A volume without one (or --full) gets a new pair
 * and a full initial copy. N generations still need N+1 backup volumes.
 *
 * A backup volume on a remote array (REMOTE:VOL, remote.ts) gets a REC pair in sync mode
 * (split auto, recovery auto) instead of EC, and the same cycle. A halted REC pair is not
 * equivalent: its remote holds the image of the halt, so a backup is refused with the array's
 * reason (the session's remote.haltReason and haltDetail).
 */
import type { CopySessionView } from '../../proto/views.js';
import { AgentError, type ProgressEvent, type StartSyncOptions, type SyncView } from '../types.js';
import type { SyncPairRecord } from '../store/AgentStore.js';
import { isNotFound } from './ArrayPort.js';
import { codeOf, hookOk, percent, sleep, type ManagerContext } from './context.js';
import { LockLedger } from './LockLedger.js';
import { haltOf, isRemoteVolume, isSyncPairType, pairName } from './remote.js';

const RM_FIX = 'run arraylab-agent resource-match';

/** A suspended (or split) EC or REC pair from tv to bv that a resume can bring back to equivalency. */
export function resumablePair(copies: CopySessionView[], tv: string, bv: string): CopySessionView | undefined {
  return copies.find(
    (s) => isSyncPairType(s.type) && s.source === tv && s.destination === bv && !s.reversed && (s.state === 'suspended' || s.state === 'split'),
  );
}

/**
 * EC pairs left suspended on a backup volume the records call unused (the pair of a released
 * generation): they must go before the volume is used for anything but their resume.
 */
export function leftoverPairs(m: ManagerContext, copies: CopySessionView[], bv: string): CopySessionView[] {
  const ours = new Set(m.store.listTransactions().map((t) => t.volume));
  return copies.filter((s) => isSyncPairType(s.type) && s.destination === bv && ours.has(s.source) && (s.state === 'suspended' || s.state === 'split'));
}

export async function startSync(m: ManagerContext, volume: string, opts: StartSyncOptions = {}): Promise<SyncView> {
  const tv = m.requireTransaction(volume);
  const existing = m.store.getSync(volume);
  if (existing) {
    throw new AgentError(
      'ALREADY_EXISTS',
      `${volume} already has a sync pair with ${existing.backupVolume} (session ${existing.sessionId}); back it up, or cancel it with: arraylab-agent cancel-sync ${volume}`,
    );
  }
  if (opts.rateMiBs !== undefined && !(Number.isFinite(opts.rateMiBs) && opts.rateMiBs >= 0)) {
    throw new AgentError('INVALID_ARGUMENT', `--rate ${opts.rateMiBs}: give MiB/s, 0 or more (0 = no background copy)`);
  }
  const progress = m.progressOf(opts.onProgress, volume);
  const claimed = m.claim([volume], 'start-sync');
  const ledger = new LockLedger(m.store, m.host, m.log, volume, m.owner);
  let view: SyncView;
  try {
    const list = await m.array.listVolumes();
    const copies = await m.array.listCopies();
    const vols = new Map(list.map((v) => [v.name, v]));
    const tvInfo = vols.get(volume);
    if (!tvInfo) throw new AgentError('NOT_FOUND', `transaction volume ${volume} does not exist on the array; recreate it, or ${RM_FIX}`);
    const held = m.store.heldGenerations(volume).length;
    let bv: string;
    try {
      // Suspend/Resume: an unused volume whose pair can be resumed first, unless --full.
      bv = m.pickUnused(volume, tvInfo, held, vols, 'start-sync', opts.full ? undefined : (b) => resumablePair(copies, volume, b) !== undefined);
    } catch (err) {
      if (err instanceof AgentError && err.code === 'RESOURCE_EXHAUSTED' && held >= tv.generations) {
        throw new AgentError(
          'RESOURCE_EXHAUSTED',
          `${err.message.replace(/; register one.*$/, '')}; a synchronized backup needs N+1 backup volumes for N generations: register one with: arraylab-agent register backup VOL`,
        );
      }
      throw err;
    }
    claimed.push(bv);
    const resume = opts.full ? undefined : resumablePair(copies, volume, bv);
    const pair = pairName(bv);
    const devices = await m.host.devices(list);
    const tvDevice = m.pinnedDevice(devices, volume, tvInfo, 'transaction');
    const bvDevice = m.pinnedDevice(devices, bv, vols.get(bv), 'backup');
    const mountPoint = await m.mountPointOf(tvDevice);
    const pre = await m.runHook('sync-start-pre', volume, tvDevice, mountPoint, bv);
    if (!hookOk(pre)) {
      m.flag(volume, `sync-start-pre hook failed: ${pre.message}`);
      throw new AgentError('ABORTED', `start-sync of ${volume} aborted: ${pre.message}; ${volume} needs a resource match: ${RM_FIX}`);
    }
    progress('lock', `locking backup volume ${bv}`);
    if (bvDevice) await ledger.take(() => m.host.lockBackup(bv, bvDevice));
    let session: CopySessionView | undefined;
    let startErr: unknown;
    try {
      if (resume) {
        progress('copy', `resuming the suspended ${pair} ${volume} -> ${bv} (session ${resume.id}): only the changes since its backup are copied`);
        // The rate first (an unthrottled resume may be done before a later change); without
        // --rate, unthrottled, whatever an earlier start-sync of the pair set.
        await m.array.setCopyRate(resume.id, opts.rateMiBs);
        // force: the agent has just locked the backup volume on this host (as for a new pair).
        session = await m.array.resumeCopy(resume.id, { force: true });
      } else {
        // Pairs left on this volume (by a released generation, or --full) make way for a new one.
        for (const s of leftoverPairs(m, copies, bv)) {
          await m.cancelSession(s.id);
          m.log.info({ volume, backupVolume: bv, sessionId: s.id }, `suspended ${pair} of a released generation cancelled for a new pair`);
        }
        session = await m.array.startCopy({
          // A remote backup volume: REC, synchronous so that equivalent means the remote has
          // every acknowledged write, as an EC pair's destination does.
          ...(isRemoteVolume(bv) ? { type: 'rec' as const, mode: 'sync', split: 'auto', recovery: 'auto' } : { type: 'ec' as const }),
          source: volume,
          destination: bv,
          force: true,
          ...(opts.rateMiBs !== undefined ? { rateMiBs: opts.rateMiBs } : {}),
        });
      }
      m.store.putSync({ transactionVolume: volume, backupVolume: bv, sessionId: session.id, startedAt: m.iso() });
    } catch (err) {
      startErr = err;
    }
    // Post-processing for synchronous processing: dismount and unlock the backup volume.
    const errors = await ledger.undoAll();
    const post = await m.runHook('sync-start-post', volume, tvDevice, mountPoint, bv);
    if (!hookOk(post)) errors.push(`sync-start-post hook failed: ${post.message}`);
    if (errors.length > 0) m.flag(volume, `start-sync post-processing failed: ${errors.join('; ')}`);
    if (startErr !== undefined) {
      const what = resume ? `resume the ${pair} ${volume} -> ${bv} (session ${resume.id})` : `start the ${pair} ${volume} -> ${bv}`;
      throw new AgentError(
        codeOf(startErr),
        `cannot ${what}: ${(startErr as Error).message}${errors.length ? `; post-processing failed too (${errors.join('; ')}): ${RM_FIX}` : ''}`,
      );
    }
    if (errors.length > 0)
      throw new AgentError(
        'INTERNAL',
        `the ${pair} ${volume} -> ${bv} started, but post-processing failed: ${errors.join('; ')}; ${volume} needs a resource match: ${RM_FIX}`,
      );
    view = { ...syncView(volume, bv, session!), start: resume ? 'resume' : 'full', unitsToCopy: session!.totalBlocks - session!.copiedBlocks };
    progress(
      'copy',
      `${isRemoteVolume(bv) ? 'REC' : 'EC'} ${volume} -> ${bv} ${resume ? 'resumed' : 'started'}: ${view.unitsToCopy} of ${view.totalUnits} units to copy`,
    );
  } finally {
    m.store.releaseOperation(claimed, m.owner);
  }
  if (!opts.wait) return view;
  const s = await waitEquivalent(
    m,
    volume,
    { transactionVolume: volume, backupVolume: view.backupVolume, sessionId: view.sessionId, startedAt: '' },
    Infinity,
    opts.onProgress,
    `wait for ${volume} -> ${view.backupVolume} to be equivalent`,
  );
  return { ...view, state: s.state, copiedPercent: percent(s) };
}

export async function cancelSync(m: ManagerContext, volume: string): Promise<void> {
  m.requireTransaction(volume);
  const sync = m.store.getSync(volume);
  if (!sync) throw new AgentError('NOT_FOUND', `${volume} has no sync pair; arraylab-agent status shows the sync pairs`);
  const claimed = m.claim([volume], 'cancel-sync');
  try {
    await m.cancelSession(sync.sessionId);
    m.store.deleteSync(volume);
    m.log.info({ volume, backupVolume: sync.backupVolume }, 'sync pair cancelled');
  } finally {
    m.store.releaseOperation(claimed, m.owner);
  }
}

/**
 * The pair's session once it is equivalent. Waits up to waitSeconds (0: not at all), showing
 * progress; refuses (FAILED_PRECONDITION) when it is not equivalent by then, or is gone or in a
 * state that will never become equivalent by itself.
 */
export async function waitEquivalent(
  m: ManagerContext,
  volume: string,
  sync: SyncPairRecord,
  waitSeconds: number,
  onProgress?: (p: ProgressEvent) => void,
  purpose = `back up ${volume}`,
): Promise<CopySessionView> {
  const progress = m.progressOf(onProgress, volume);
  const deadline = Date.now() + waitSeconds * 1000;
  const pair = pairName(sync.backupVolume);
  for (;;) {
    let s: CopySessionView;
    try {
      s = await m.array.getCopy(sync.sessionId);
    } catch (err) {
      if (isNotFound(err)) {
        throw new AgentError(
          'FAILED_PRECONDITION',
          `cannot ${purpose}: its ${pair} ${sync.sessionId} to ${sync.backupVolume} is gone from the array; ${RM_FIX}, then start-sync again`,
        );
      }
      throw err;
    }
    if (s.state === 'equivalent') return s;
    if (s.state === 'error-suspended') {
      // The array's reason names the session, the failure and the fault; it never heals by waiting.
      throw new AgentError(
        'FAILED_PRECONDITION',
        `cannot ${purpose}: the array error-suspended its ${pair} to ${sync.backupVolume}: ${s.error || 'no reason given'}; resume it once the cause is fixed (arraylab copy resume ${s.id}) and wait for equivalency, or cancel-sync and start-sync again`,
      );
    }
    // A halted REC pair: its remote keeps the image of the halt. With recovery auto it resyncs
    // by itself once the link is back, so a finite wait may see it equivalent again.
    const halted = s.state === 'halt';
    const healsItself = halted && s.remote?.recovery === 'auto' && Number.isFinite(waitSeconds);
    if (halted && (!healsItself || Date.now() >= deadline)) {
      const waited = healsItself && waitSeconds > 0 ? ` after waiting ${waitSeconds} s` : '';
      const next =
        s.remote?.recovery === 'auto'
          ? `restore the link to the remote array; the pair resyncs by itself (recovery auto) and a backup is possible once it is equivalent (backup --wait-equivalent SECONDS waits for it)`
          : `restore the link to the remote array, then resume the pair (arraylab copy resume ${s.id}) and back up once it is equivalent`;
      throw new AgentError(
        'FAILED_PRECONDITION',
        `cannot ${purpose}: its ${pair} to ${sync.backupVolume} (session ${s.id}) is halted (${haltOf(s)})${waited}, so ${sync.backupVolume} holds the image of the halt, not of now; ${next}`,
      );
    }
    if (s.state !== 'copying' && !halted) {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `cannot ${purpose}: its ${pair} to ${sync.backupVolume} (session ${s.id}) is ${s.state}${s.error ? ` (${s.error})` : ''}, not equivalent; cancel-sync and start-sync again`,
      );
    }
    if (Date.now() >= deadline) {
      const waited = waitSeconds > 0 ? ` after waiting ${waitSeconds} s` : '';
      throw new AgentError(
        'FAILED_PRECONDITION',
        `cannot ${purpose}: its copy to ${sync.backupVolume} is not yet equivalent (${s.state}, ${percent(s)}%)${waited}; wait for equivalency (arraylab-agent status, or backup --wait-equivalent SECONDS) and retry`,
      );
    }
    progress(
      'sync',
      halted
        ? `${volume} -> ${sync.backupVolume} is halted (${haltOf(s)}); waiting for the link and the resync`
        : `waiting for ${volume} -> ${sync.backupVolume} to be equivalent`,
      s.copiedBlocks * s.unitSize,
      s.totalBlocks * s.unitSize,
    );
    await sleep(m.pollMs);
  }
}

export function syncView(tv: string, bv: string, s: CopySessionView): SyncView {
  return {
    transactionVolume: tv,
    backupVolume: bv,
    sessionId: s.id,
    state: s.state,
    copiedPercent: percent(s),
    start: '',
    unitsToCopy: 0,
    totalUnits: s.totalBlocks,
  };
}
