/**
 * AgentService messages <-> the agent's records (agent/types.ts). Field names agree, so sending
 * is the record itself (protobufjs skips null and undefined fields); receiving turns proto3's
 * defaults back into the records' nulls and optionals, and uint64s (decimal strings from the
 * contract's one loader) into numbers.
 */
import { toByteCount, type WireUint64 } from '../../proto/wire/wire.js';
import type {
  AgentStatus,
  BackupVolumeRecord,
  BackupReport,
  HistoryEntry,
  HookResult,
  LockRecord,
  ProgressEvent,
  RestoreReport,
  SyncView,
  TransactionVolumeStatus,
  VolumeOutcome,
} from '../types.js';

/** What is sent for a HookResult: exitCode null becomes -1 (proto3 has no null). */
export function hookToWire(h: HookResult): object {
  return { ...h, exitCode: h.exitCode ?? -1, signal: h.signal ?? '' };
}

export function hookFromWire(w: HookResult & { exitCode: number }): HookResult {
  return { ...w, exitCode: w.exitCode < 0 ? null : w.exitCode, signal: w.signal === '' ? null : w.signal };
}

export function backupReportToWire(r: BackupReport): object {
  return { ok: r.ok, volumes: r.volumes.map((v) => ({ ...v, hooks: v.hooks.map(hookToWire) })) };
}

export function historyFromWire(w: HistoryEntry): HistoryEntry {
  if (!w.tape) return { ...w, tape: null };
  const { pid, ...tape } = w.tape;
  return { ...w, tape: { ...tape, ...(pid ? { pid } : {}) } };
}

type Wire<T, K extends keyof T> = Omit<T, K> & { [P in K]: WireUint64 };

export function syncFromWire(w: Wire<SyncView, 'unitsToCopy' | 'totalUnits'>): SyncView {
  return { ...w, start: (w.start || '') as SyncView['start'], unitsToCopy: toByteCount(w.unitsToCopy, 'units_to_copy'), totalUnits: toByteCount(w.totalUnits, 'total_units') };
}

export function backupVolumeFromWire(w: Wire<BackupVolumeRecord, 'sizeBytes'>): BackupVolumeRecord {
  return { ...w, sizeBytes: toByteCount(w.sizeBytes, 'size_bytes') };
}

export function backupReportFromWire(w: BackupReport): BackupReport {
  return {
    ok: w.ok,
    volumes: w.volumes.map((v): VolumeOutcome => {
      const out: VolumeOutcome = { volume: v.volume, ok: v.ok, hooks: v.hooks.map((h) => hookFromWire(h as HookResult & { exitCode: number })) };
      if (v.generation) out.generation = historyFromWire(v.generation);
      if (v.error) out.error = v.error;
      if (v.needsResourceMatch) out.needsResourceMatch = v.needsResourceMatch;
      if (v.code) out.code = v.code;
      if (v.resync) out.resync = syncFromWire(v.resync as Wire<SyncView, 'unitsToCopy' | 'totalUnits'>);
      if (v.resyncError) out.resyncError = v.resyncError;
      return out;
    }),
  };
}

export function restoreReportToWire(r: RestoreReport): object {
  return { ...r, hooks: r.hooks.map(hookToWire) };
}

export function restoreReportFromWire(w: RestoreReport): RestoreReport {
  return { ...w, generation: historyFromWire(w.generation), hooks: w.hooks.map((h) => hookFromWire(h as HookResult & { exitCode: number })) };
}

export function progressFromWire(w: ProgressEvent & { doneBytes: WireUint64; totalBytes: WireUint64 }): ProgressEvent {
  const p: ProgressEvent = { volume: w.volume, step: w.step, message: w.message };
  const total = toByteCount(w.totalBytes, 'total_bytes');
  if (total > 0) {
    p.doneBytes = toByteCount(w.doneBytes, 'done_bytes');
    p.totalBytes = total;
  }
  return p;
}

export function lockFromWire(w: LockRecord & { freezeGuardPid: number; thawDeadline: string }): LockRecord {
  const { freezeGuardPid, thawDeadline, ...rest } = w;
  return { ...rest, ...(freezeGuardPid ? { freezeGuardPid } : {}), ...(thawDeadline ? { thawDeadline } : {}) };
}

export function statusFromWire(w: AgentStatus): AgentStatus {
  return {
    transactionVolumes: w.transactionVolumes.map((t): TransactionVolumeStatus => ({ ...t, sync: t.sync ? syncFromWire(t.sync as Wire<SyncView, 'unitsToCopy' | 'totalUnits'>) : null })),
    backupVolumes: w.backupVolumes.map((b) => backupVolumeFromWire(b as Wire<BackupVolumeRecord, 'sizeBytes'>)),
    outstandingLocks: w.outstandingLocks.map((l) => lockFromWire(l as LockRecord & { freezeGuardPid: number; thawDeadline: string })),
  };
}
