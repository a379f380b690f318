/**
 * AgentService messages (their types generated in proto/gen/) <-> the agent's records
 * (agent/types.ts). Field names agree, so sending is mostly the record itself (protobufjs skips
 * null and undefined fields); receiving turns proto3's defaults back into the records' nulls,
 * optionals and word unions, and uint64s (decimal strings) into numbers.
 */
import type * as pb from '../../proto/gen/index.js';
import { toByteCount } from '../../proto/wire/wire.js';
import type {
  AgentErrorCode,
  AgentStatus,
  BackupReport,
  BackupVolumeRecord,
  DeviceMapping,
  DoctorCheck,
  GenerationStatus,
  HistoryEntry,
  HookResult,
  LockMode,
  LockRecord,
  MountEntry,
  PrepDone,
  ProgressEvent,
  RegisteredTransaction,
  RestoreReport,
  SyncView,
  TapeCopyRecord,
  TransactionVolumeRecord,
  TransactionVolumeStatus,
  VolumeOutcome,
} from '../types.js';

// ---- sending (the server) ----

/** A HookResult as sent: exitCode null becomes -1, signal null '' (proto3 has no null). */
export function hookToWire(h: HookResult): pb.HookResult {
  return { ...h, exitCode: h.exitCode ?? -1, signal: h.signal ?? '' };
}

export function backupReportToWire(r: BackupReport): pb.BackupReport {
  return { ok: r.ok, volumes: r.volumes.map((v) => ({ ...v, hooks: v.hooks.map(hookToWire) })) };
}

export function restoreReportToWire(r: RestoreReport): pb.RestoreReport {
  return { ...r, hooks: r.hooks.map(hookToWire) };
}

// ---- receiving (the client) ----

export function hookFromWire(w: pb.HookResult__Output): HookResult {
  return {
    ...w,
    phase: w.phase as HookResult['phase'],
    verdict: w.verdict as HookResult['verdict'],
    exitCode: w.exitCode < 0 ? null : w.exitCode,
    signal: w.signal === '' ? null : w.signal,
  };
}

function tapeFromWire(w: pb.TapeCopyRecord__Output | null): TapeCopyRecord | null {
  if (!w) return null;
  const { pid, ...tape } = w;
  return { ...tape, status: tape.status as TapeCopyRecord['status'], ...(pid ? { pid } : {}) };
}

export function historyFromWire(w: pb.HistoryEntry__Output): HistoryEntry {
  return { ...w, type: w.type as HistoryEntry['type'], status: w.status as GenerationStatus, prep: w.prep as PrepDone, tape: tapeFromWire(w.tape) };
}

export function syncFromWire(w: pb.SyncView__Output): SyncView {
  return {
    ...w,
    start: (w.start || '') as SyncView['start'],
    unitsToCopy: toByteCount(w.unitsToCopy, 'units_to_copy'),
    totalUnits: toByteCount(w.totalUnits, 'total_units'),
  };
}

export function backupVolumeFromWire(w: pb.BackupVolumeRecord__Output): BackupVolumeRecord {
  return { ...w, sizeBytes: toByteCount(w.sizeBytes, 'size_bytes') };
}

export function transactionFromWire(w: pb.TransactionVolumeRecord__Output): RegisteredTransaction {
  return { ...transactionRecord(w), warnings: [...w.warnings], notes: [...w.notes] };
}

function transactionRecord(w: Omit<pb.TransactionVolumeRecord__Output, 'warnings' | 'notes'>): TransactionVolumeRecord {
  return {
    volume: w.volume,
    lock: w.lock as LockMode,
    resyncAfterBackup: w.resyncAfterBackup,
    flushOnly: w.flushOnly,
    generations: w.generations,
    defaultType: w.defaultType as TransactionVolumeRecord['defaultType'],
    registeredAt: w.registeredAt,
    needsResourceMatch: w.needsResourceMatch,
  };
}

export function backupReportFromWire(w: pb.BackupReport__Output): BackupReport {
  return {
    ok: w.ok,
    volumes: w.volumes.map((v): VolumeOutcome => {
      const out: VolumeOutcome = { volume: v.volume, ok: v.ok, hooks: v.hooks.map(hookFromWire) };
      if (v.generation) out.generation = historyFromWire(v.generation);
      if (v.error) out.error = v.error;
      if (v.needsResourceMatch) out.needsResourceMatch = v.needsResourceMatch;
      if (v.code) out.code = v.code as AgentErrorCode;
      if (v.resync) out.resync = syncFromWire(v.resync);
      if (v.resyncError) out.resyncError = v.resyncError;
      return out;
    }),
  };
}

export function restoreReportFromWire(w: pb.RestoreReport__Output): RestoreReport {
  if (!w.generation) throw new Error('the agent answered Restore without the generation restored');
  return {
    volume: w.volume,
    target: w.target,
    generation: historyFromWire(w.generation),
    from: w.from as RestoreReport['from'],
    method: w.method as RestoreReport['method'],
    hooks: w.hooks.map(hookFromWire),
    notes: [...w.notes],
  };
}

export function progressFromWire(w: pb.ProgressEvent__Output): ProgressEvent {
  const p: ProgressEvent = { volume: w.volume, step: w.step, message: w.message };
  const total = toByteCount(w.totalBytes, 'total_bytes');
  if (total > 0) {
    p.doneBytes = toByteCount(w.doneBytes, 'done_bytes');
    p.totalBytes = total;
  }
  return p;
}

function mountFromWire(w: pb.MountEntry__Output): MountEntry {
  return {
    mountPoint: w.mountPoint,
    fsType: w.fsType,
    source: w.source,
    mountOptions: w.mountOptions,
    superOptions: w.superOptions,
    ...(w.root ? { root: w.root } : {}),
  };
}

export function lockFromWire(w: pb.LockRecord__Output): LockRecord {
  return {
    volume: w.volume,
    role: w.role as LockRecord['role'],
    device: w.device,
    action: w.action as LockRecord['action'],
    mounts: w.mounts.map(mountFromWire),
    at: w.at,
    ...(w.freezeGuardPid ? { freezeGuardPid: w.freezeGuardPid } : {}),
    ...(w.thawDeadline ? { thawDeadline: w.thawDeadline } : {}),
  };
}

export function statusFromWire(w: pb.AgentStatus__Output): AgentStatus {
  return {
    transactionVolumes: w.transactionVolumes.map(
      (t): TransactionVolumeStatus => ({
        ...transactionRecord(t),
        device: t.device,
        mountPoint: t.mountPoint,
        sync: t.sync ? syncFromWire(t.sync) : null,
        heldGenerations: t.heldGenerations,
        unhealthy: [...t.unhealthy],
        busy: t.busy,
      }),
    ),
    backupVolumes: w.backupVolumes.map(backupVolumeFromWire),
    outstandingLocks: w.outstandingLocks.map(lockFromWire),
  };
}

export function deviceFromWire(w: pb.DeviceMapping__Output): DeviceMapping {
  return { volume: w.volume, device: w.device, how: w.how as DeviceMapping['how'] };
}

export function doctorCheckFromWire(w: pb.DoctorCheck__Output): DoctorCheck {
  return { name: w.name, ok: w.ok, detail: w.detail, fix: w.fix };
}
