/**
 * Resource match (ACM's swstsrsemtch): reconcile the agent's records with the host and
 * the array after a failure or a crash.
 *
 *   1. undo lock records nobody is working on (host.unlock is idempotent);
 *   2. drop operation rows of processes that are gone;
 *   3. compare held generations and sync pairs with the array's sessions and volumes: a
 *      generation the array reports broken or gone is recorded as error or lost (generations.ts);
 *   4. clear the needs-resource-match flag of every volume with nothing left to fix.
 */
import { existsSync } from 'node:fs';
import type { CopySessionView } from '../../proto/views.js';
import type { VolumeInfo } from '../../proto/views.js';
import { AgentError, type ResourceMatchReport } from '../types.js';
import { isAlive, type ManagerContext } from './context.js';
import { assess, endedUnfinished, errorSeen } from './generations.js';
import { isRemoteVolume, isSyncPairType, pairName } from './remote.js';

export async function resourceMatch(m: ManagerContext): Promise<ResourceMatchReport> {
  const repaired: string[] = [];
  const remaining: string[] = [];
  /** Volumes with a problem left: their flag stays (or is set). */
  const unresolved = new Map<string, string>();
  const busy = new Set<string>();

  // 2 first: which operations are still running decides which locks may be undone.
  for (const op of m.store.listOperations()) {
    if (isAlive(op.pid)) {
      busy.add(op.volume);
      continue;
    }
    m.store.deleteOperation(op);
    repaired.push(`cleared the ${op.op} of ${op.volume} started by pid ${op.pid} at ${op.startedAt} (the process is gone)`);
  }

  // 1: outstanding locks, newest first (the reverse of how they were taken). A lock is undone
  // only through the host side that took it: a guest's record names the guest's devices and
  // mount points, and replayed on this host it would mount or unmount this host's.
  const here = m.host.guestId ?? '';
  for (const lock of m.store.listLocks().reverse()) {
    const r = lock.record;
    if (lock.guest !== here) {
      if (lock.guest !== '' && here === '' && !existsSync(lock.guest)) {
        m.store.removeLock(lock.id);
        repaired.push(
          `dropped the ${r.action} record of ${r.volume} taken in the guest on ${lock.guest}, whose socket is gone (the guest stopped: its freezes and holds ended with it; a filesystem it had unmounted is mounted again by the guest's boot, or by hand)`,
        );
        continue;
      }
      const msg = `${r.volume}: its ${r.action} lock was taken ${lock.guest ? `in the guest on ${lock.guest}` : 'on this host'}, and is undone only there: run ${lock.guest ? `arraylab-agent --guest ${lock.guest} resource-match` : 'arraylab-agent resource-match without --guest'}`;
      remaining.push(msg);
      unresolved.set(lock.volume, msg);
      continue;
    }
    if (isAlive(lock.pid) && busy.has(lock.volume)) {
      remaining.push(
        `${r.volume}: its ${r.action} lock belongs to a ${lock.volume} operation of pid ${lock.pid} that is still running; run resource-match again once it has ended`,
      );
      continue;
    }
    try {
      await m.host.unlock(r);
      m.store.removeLock(lock.id);
      repaired.push(`undid the ${r.action} of ${r.volume}${r.device ? ` (${r.device})` : ''} left by ${lock.volume}'s operation`);
    } catch (err) {
      const msg = `${r.volume}: cannot undo its ${r.action} lock: ${(err as Error).message}; fix that on the host and run resource-match again`;
      remaining.push(msg);
      unresolved.set(lock.volume, msg);
    }
  }

  // 3: the array (through arrayState, which records its verdicts on held generations first:
  // an OPC session it says was cancelled before its copy finished is no finished copy).
  const a = await m.arrayState();
  if (a === undefined) {
    throw new AgentError('UNAVAILABLE', `resource-match cannot reach the array: ${m.arrayStateError()}; ${repaired.length} host-side repair(s) were done`);
  }
  const vols: Map<string, VolumeInfo> = a.volumes;
  const copies: Map<string, CopySessionView> = a.copies;

  for (const tv of m.store.listTransactions()) {
    if (busy.has(tv.volume)) {
      if (tv.needsResourceMatch) remaining.push(`${tv.volume}: an operation is running on it; run resource-match again once it has ended`);
      unresolved.set(tv.volume, tv.needsResourceMatch);
      continue;
    }
    if (!vols.has(tv.volume)) {
      const msg = `transaction volume ${tv.volume} no longer exists on the array; recreate it, or forget it with: arraylab-agent unregister ${tv.volume} --force`;
      remaining.push(msg);
      unresolved.set(tv.volume, msg);
    }
    for (const g of m.store.heldGenerations(tv.volume)) {
      const s = g.sessionId ? copies.get(g.sessionId) : undefined;
      // (Unless the array error-suspended it before: then the copy never finished; assess says so.)
      if (g.sessionId && s === undefined && g.type === 'opc' && vols.has(g.backupVolume) && !errorSeen(g) && !endedUnfinished(g)) {
        // An OPC session ends by design after its copy: the image stays.
        m.store.updateGeneration(tv.volume, g.number, { sessionId: '' });
        repaired.push(`${tv.volume} generation #${g.number}: its OPC session ${g.sessionId} has ended; the image on ${g.backupVolume} is kept`);
        continue;
      }
      const h = assess(g, { volumes: vols, copies });
      if (h === undefined) continue;
      if (h.status === 'error' && s !== undefined && s.state !== 'error-suspended') {
        // Not the array's fault but a change made out of band (a split, a reverse, other
        // ends): the agent cannot tell what the image is now; leave the session to the user.
        remaining.push(`${tv.volume} generation #${g.number}: ${h.reason}; undo that on the array, or release the generation by backing up again`);
        unresolved.set(tv.volume, h.reason);
        continue;
      }
      // Recorded as the array sees it: the generation is no longer held, and its session (if
      // any is left) is ended, so that its backup volume can serve again.
      let sessionId = '';
      if (s !== undefined) {
        try {
          await m.cancelSession(s.id);
        } catch (err) {
          // A SnapOPC+ generation that older ones read through cannot go alone: it stays on
          // the array (and keeps its volume) until they are released.
          sessionId = s.id;
          m.log.info({ volume: tv.volume, generation: g.number, err: (err as Error).message }, 'session of a broken generation kept for now');
        }
      }
      m.store.updateGeneration(tv.volume, g.number, { status: h.status, sessionId, error: h.reason });
      repaired.push(
        `${tv.volume} generation #${g.number} marked ${h.status}: ${h.reason}${sessionId ? ` (its session ${sessionId} stays until the older generations are released)` : ''}; back it up again`,
      );
    }
    // Tape copies left pending by a process that is gone (--complete-after disk) never finish.
    for (const g of m.store.listGenerations(tv.volume)) {
      if (g.tape?.status !== 'pending' || (g.tape.pid !== undefined && isAlive(g.tape.pid))) continue;
      const why = `the tape copy was interrupted: the agent process ${g.tape.pid ?? '?'} writing it is gone`;
      m.store.updateGeneration(tv.volume, g.number, { tape: { ...g.tape, status: 'failed', error: why } });
      repaired.push(`${tv.volume} generation #${g.number}: ${why}; back it up again with --to tape`);
    }
    const sync = m.store.getSync(tv.volume);
    if (sync) {
      const s = copies.get(sync.sessionId);
      if (s === undefined || !isSyncPairType(s.type)) {
        m.store.deleteSync(tv.volume);
        repaired.push(
          `removed the sync pair ${tv.volume} -> ${sync.backupVolume}: its ${pairName(sync.backupVolume)} ${sync.sessionId} is gone from the array; start it again with: arraylab-agent start-sync ${tv.volume}`,
        );
      }
    }
  }

  for (const bv of m.store.listBackupVolumes()) {
    if (busy.has(bv.volume)) {
      unresolved.set(bv.volume, bv.needsResourceMatch);
      continue;
    }
    // A remote backup volume is on another array: its REC sessions speak for it (a missing or
    // resized one makes start-sync fail with the array's reason).
    if (isRemoteVolume(bv.volume)) continue;
    if (!vols.has(bv.volume)) {
      const msg = `backup volume ${bv.volume} no longer exists on the array; recreate it (${formatBytes(bv.sizeBytes)}), or forget it with: arraylab-agent unregister ${bv.volume}`;
      remaining.push(msg);
      unresolved.set(bv.volume, msg);
    } else if (vols.get(bv.volume)!.sizeBytes !== bv.sizeBytes) {
      const msg = `backup volume ${bv.volume} is now ${vols.get(bv.volume)!.sizeBytes} bytes on the array, registered as ${bv.sizeBytes}; register it again (arraylab-agent register backup ${bv.volume})`;
      remaining.push(msg);
      unresolved.set(bv.volume, msg);
    }
  }

  // 4: flags.
  for (const rec of [...m.store.listTransactions(), ...m.store.listBackupVolumes()]) {
    const left = unresolved.get(rec.volume);
    if (left !== undefined) {
      if (left && left !== rec.needsResourceMatch) m.store.setNeedsResourceMatch(rec.volume, left);
      continue;
    }
    if (rec.needsResourceMatch) {
      m.store.setNeedsResourceMatch(rec.volume, '');
      repaired.push(`${rec.volume} is consistent again (was: ${rec.needsResourceMatch})`);
    }
  }
  m.log.info({ repaired: repaired.length, remaining: remaining.length }, 'resource match done');
  return { repaired, remaining };
}

function formatBytes(n: number): string {
  return `${n} bytes`;
}
