/**
 * Generations as users see them: their relative numbers (1 = newest restorable, the same in
 * history, status and restore, from disk or tape) and their health as the array reports it.
 *
 * A held generation is only as good as what the array still has: its backup volume, and for
 * the types whose image depends on a live session (QuickOPC, SnapOPC+, and EC with
 * Suspend/Resume) that session in the right state. The agent's records alone would call a
 * generation "held" after its pool filled up or its session was cancelled out of band; every
 * reader goes through assess() instead.
 */
import type { CopySessionView } from '../../proto/views.js';
import type { VolumeInfo } from '../../proto/views.js';
import type { GenerationRecord, HistoryEntry } from '../types.js';
import { isRemoteVolume, pairName } from './remote.js';

/** What the array has now, for assess(). */
export interface ArrayState {
  volumes: Map<string, VolumeInfo>;
  copies: Map<string, CopySessionView>;
}

export interface Health {
  status: 'error' | 'lost';
  /** The array's reason, naming the session or volume, and what it means for the image. */
  reason: string;
}

/**
 * How assess()'s reason for a held generation whose session the array error-suspended
 * begins. BackupManager keeps that reason in the record once it sees it, because the array
 * forgets: once the session is cancelled out of band, an OPC generation's missing session
 * would otherwise read as a copy that finished, with only part of the image on its volume.
 */
export const ERROR_SUSPENDED = 'the array error-suspended session ';

/** The record keeps the array's verdict that its session was error-suspended. */
export function errorSeen(g: Pick<GenerationRecord, 'error'>): boolean {
  return g.error.startsWith(ERROR_SUSPENDED);
}

/**
 * How the reason begins for a held OPC generation whose session the array says ended before
 * its copy finished (cancelled out of band: ListCopies' ended). Kept in the record, like
 * ERROR_SUSPENDED, since the array forgets how sessions ended.
 */
export const ENDED_UNFINISHED = 'its OPC session ';

export function endedUnfinished(g: Pick<GenerationRecord, 'error' | 'type'>): boolean {
  return g.type === 'opc' && g.error.startsWith(ENDED_UNFINISHED);
}

export function key(g: Pick<GenerationRecord, 'transactionVolume' | 'number'>): string {
  return `${g.transactionVolume}\0${g.number}`;
}

/** Restorable: held on disk, or with a good tape copy. */
export function restorable(g: GenerationRecord): boolean {
  return g.status === 'held' || g.tape?.status === 'ok';
}

/** Relative generation numbers: 1 = newest restorable, per transaction volume; others 0. */
export function relativeNumbers(gens: GenerationRecord[]): Map<string, number> {
  const out = new Map<string, number>();
  const byTv = new Map<string, GenerationRecord[]>();
  for (const g of gens) if (restorable(g)) byTv.set(g.transactionVolume, [...(byTv.get(g.transactionVolume) ?? []), g]);
  for (const list of byTv.values()) list.sort((a, b) => b.number - a.number).forEach((g, i) => out.set(key(g), i + 1));
  return out;
}

/**
 * The health of a held generation on the array, or undefined when it is good (or cannot be
 * checked from the session: an OPC generation whose session ended after its copy, or one whose
 * session the agent itself ended, keeping the image).
 */
export function assess(g: GenerationRecord, a: ArrayState): Health | undefined {
  if (g.status !== 'held') return undefined;
  const gen = `${g.transactionVolume} generation #${g.number}`;
  // A remote backup volume (REMOTE:VOL) is not on this array: its REC session speaks for it.
  if (!isRemoteVolume(g.backupVolume) && !a.volumes.has(g.backupVolume))
    return { status: 'lost', reason: `its backup volume ${g.backupVolume} no longer exists on the array` };
  if (endedUnfinished(g)) return { status: 'lost', reason: g.error };
  if (errorSeen(g) && (!g.sessionId || !a.copies.has(g.sessionId))) {
    return { status: 'error', reason: `${g.error}; the session has since ended, so ${g.backupVolume} may hold only part of ${gen}` };
  }
  if (!g.sessionId) return undefined;
  const s = a.copies.get(g.sessionId);
  if (s === undefined) {
    switch (g.type) {
      case 'opc':
        return undefined; // an OPC session ends by itself once the copy is done
      case 'quickopc':
        return {
          status: 'lost',
          reason: `its QuickOPC session ${g.sessionId} was cancelled on the array: ${g.backupVolume} is no longer protected and may have been overwritten`,
        };
      case 'snapopcplus':
        return {
          status: 'lost',
          reason: `its SnapOPC+ session ${g.sessionId} was cancelled on the array: the snap volume ${g.backupVolume} no longer holds the image`,
        };
      case 'ec':
        return {
          status: 'lost',
          reason: `its suspended ${pairName(g.backupVolume)} ${g.sessionId} was cancelled on the array: ${g.backupVolume} is no longer protected and may have been overwritten`,
        };
    }
  }
  const ends = [s.source, s.destination].sort().join(' ');
  if (ends !== [g.transactionVolume, g.backupVolume].sort().join(' ')) {
    return {
      status: 'error',
      reason: `session ${s.id} is now ${s.source} -> ${s.destination}, not ${g.transactionVolume} -> ${g.backupVolume} (arraylab copy show ${s.id})`,
    };
  }
  if (s.state === 'error-suspended') return { status: 'error', reason: `${ERROR_SUSPENDED}${s.id}: ${s.error || 'no reason given'}` };
  if (g.type === 'ec') {
    const pair = pairName(g.backupVolume);
    // halt: a REC pair halts only from copying or equivalent, i.e. once resumed.
    if (s.state === 'copying' || s.state === 'equivalent' || s.state === 'halt') {
      return {
        status: 'lost',
        reason: `its ${pair} ${s.id} was resumed on the array (now ${s.state}): ${g.backupVolume} follows ${g.transactionVolume} again and no longer holds ${gen}`,
      };
    }
    if (s.state === 'split')
      return { status: 'error', reason: `its ${pair} ${s.id} was split on the array: ${g.backupVolume} is writable and may have changed since the backup` };
    if (s.reversed) return { status: 'error', reason: `its ${pair} ${s.id} was reversed on the array (${s.source} -> ${s.destination})` };
  }
  return undefined;
}

/** History entries (newest first) with relative numbers and the array's verdict on held ones. */
export function toHistory(gens: GenerationRecord[], a: ArrayState | undefined): HistoryEntry[] {
  const rel = relativeNumbers(gens);
  return gens.map((g) => {
    const e: HistoryEntry = { ...g, generation: rel.get(key(g)) ?? 0 };
    if (g.status !== 'held') return e;
    // Not "unreachable": an array that answers with an error (an api-error fault) is reachable.
    if (a === undefined) {
      if (endedUnfinished(g)) return { ...e, status: 'lost' };
      return errorSeen(g) ? { ...e, status: 'error' } : { ...e, error: e.error || "not checked: the array's volumes and sessions could not be read" };
    }
    const h = assess(g, a);
    return h ? { ...e, status: h.status, error: h.reason } : e;
  });
}
