/**
 * AgentService messages <-> the agent's records (agent/types.ts). Field names agree, so sending
 * is the record itself (protobufjs skips null and undefined fields); receiving turns proto3's
 * defaults back into the records' nulls and optionals.
 */
import type {
  AgentStatus,
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

/** proto3 has no null: an absent SyncView arrives as null, numbers as numbers. */
export function syncFromWire(w: SyncView): SyncView {
  return { ...w, start: (w.start || '') as SyncView['start'] };
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
      if (v.resync) out.resync = syncFromWire(v.resync);
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

export function progressFromWire(w: ProgressEvent & { doneBytes: number; totalBytes: number }): ProgressEvent {
  const p: ProgressEvent = { volume: w.volume, step: w.step, message: w.message };
  if (w.totalBytes > 0) {
    p.doneBytes = w.doneBytes;
    p.totalBytes = w.totalBytes;
  }
  return p;
}

export function lockFromWire(w: LockRecord & { freezeGuardPid: number; thawDeadline: string }): LockRecord {
  const { freezeGuardPid, thawDeadline, ...rest } = w;
  return { ...rest, ...(freezeGuardPid ? { freezeGuardPid } : {}), ...(thawDeadline ? { thawDeadline } : {}) };
}

export function statusFromWire(w: AgentStatus): AgentStatus {
  return {
    transactionVolumes: w.transactionVolumes.map((t): TransactionVolumeStatus => ({ ...t, sync: t.sync ? syncFromWire(t.sync) : null })),
    backupVolumes: w.backupVolumes,
    outstandingLocks: w.outstandingLocks.map((l) => lockFromWire(l as LockRecord & { freezeGuardPid: number; thawDeadline: string })),
  };
}
