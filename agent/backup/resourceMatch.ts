/**
 * Resource match (the seed's swstsrsemtch): reconcile the agent's records with the host and
 * the array after a failure or a crash.
 *
 *   1. undo lock records nobody is working on (host.unlock is idempotent);
 *   2. drop operation rows of processes that are gone;
 *   3. compare held generations and sync pairs with the array's sessions and volumes;
 *   4. clear the needs-resource-match flag of every volume with nothing left to fix.
 */
import type { CopySessionView } from '../../emulator/api/model.js';
import type { VolumeInfo } from '../../emulator/array/types.js';
import { AgentError, type ResourceMatchReport } from '../types.js';
import { isAlive, type ManagerContext } from './context.js';

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

  // 1: outstanding locks, newest first (the reverse of how they were taken).
  for (const lock of m.store.listLocks().reverse()) {
    const r = lock.record;
    if (isAlive(lock.pid) && busy.has(lock.volume)) {
      remaining.push(`${r.volume}: its ${r.action} lock belongs to a ${lock.volume} operation of pid ${lock.pid} that is still running; run resource-match again once it has ended`);
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

  // 3: the array.
  let vols: Map<string, VolumeInfo>;
  let copies: Map<string, CopySessionView>;
  try {
    vols = new Map((await m.array.listVolumes()).map((v) => [v.name, v]));
    copies = new Map((await m.array.listCopies()).map((c) => [c.id, c]));
  } catch (err) {
    throw new AgentError('UNAVAILABLE', `resource-match cannot reach the array: ${(err as Error).message}; ${repaired.length} host-side repair(s) were done`);
  }

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
      if (!vols.has(g.backupVolume)) {
        const why = `its backup volume ${g.backupVolume} no longer exists on the array`;
        m.store.updateGeneration(tv.volume, g.number, { status: 'failed', sessionId: '', error: why });
        repaired.push(`${tv.volume} generation ${g.number} marked failed: ${why}`);
        continue;
      }
      if (!g.sessionId) continue;
      const s = copies.get(g.sessionId);
      if (s !== undefined) {
        const ends = [s.source, s.destination].sort().join(' ');
        if (ends !== [tv.volume, g.backupVolume].sort().join(' ')) {
          const msg = `${tv.volume} generation ${g.number}: session ${s.id} is now ${s.source} -> ${s.destination}, not ${tv.volume} -> ${g.backupVolume}; check it with arraylab copy show ${s.id}`;
          remaining.push(msg);
          unresolved.set(tv.volume, msg);
        }
        continue;
      }
      if (g.type === 'opc' || g.type === 'ec') {
        // These sessions end by design (OPC after its copy, EC after the cut): the image stays.
        m.store.updateGeneration(tv.volume, g.number, { sessionId: '' });
        repaired.push(`${tv.volume} generation ${g.number}: its ${g.type.toUpperCase()} session ${g.sessionId} has ended; the image on ${g.backupVolume} is kept`);
        continue;
      }
      const why =
        g.type === 'snapopcplus'
          ? `its SnapOPC+ session ${g.sessionId} is gone: a snap volume holds only before-images, so the image is no longer reliable`
          : `its QuickOPC session ${g.sessionId} is gone: the differential base is lost, and whether ${g.backupVolume} holds the whole image is unknown`;
      m.store.updateGeneration(tv.volume, g.number, { status: 'failed', sessionId: '', error: why });
      repaired.push(`${tv.volume} generation ${g.number} marked failed: ${why}; back it up again`);
    }
    const sync = m.store.getSync(tv.volume);
    if (sync) {
      const s = copies.get(sync.sessionId);
      if (s === undefined || s.type !== 'ec') {
        m.store.deleteSync(tv.volume);
        repaired.push(`removed the sync pair ${tv.volume} -> ${sync.backupVolume}: its EC session ${sync.sessionId} is gone from the array; start it again with: arraylab-agent start-sync ${tv.volume}`);
      }
    }
  }

  for (const bv of m.store.listBackupVolumes()) {
    if (busy.has(bv.volume)) {
      unresolved.set(bv.volume, bv.needsResourceMatch);
      continue;
    }
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
