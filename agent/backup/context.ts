/**
 * What restore.ts and resourceMatch.ts share with BackupManager, and small helpers.
 */
import type { Logger } from 'pino';
import type { CopySessionView } from '../../emulator/api/model.js';
import type { AgentStore } from '../store/AgentStore.js';
import type { AgentErrorCode, DeviceMapping, HistoryEntry, HookPhase, HookResult, HostSide, ProgressEvent, TapePort, TransactionVolumeRecord } from '../types.js';
import type { ArrayPort } from './ArrayPort.js';

export interface ManagerContext {
  store: AgentStore;
  array: ArrayPort;
  tape: TapePort;
  host: HostSide;
  log: Logger;
  owner: string;
  pollMs: number;
  iso(): string;
  claim(volumes: string[], op: string): string[];
  flag(volume: string, reason: string): void;
  runHook(phase: HookPhase, volume: string, device: string, mountPoint: string, backupVolume?: string, generation?: number): Promise<HookResult>;
  mountPointOf(device: string): Promise<string>;
  cancelSession(id: string): Promise<void>;
  historyEntry(volume: string, number: number): HistoryEntry;
  requireTransaction(volume: string): TransactionVolumeRecord;
  progressOf(cb: ((p: ProgressEvent) => void) | undefined, volume: string): (step: string, message: string, doneBytes?: number, totalBytes?: number) => void;
}

export function hookOk(h: HookResult): boolean {
  return h.verdict === 'ok' || h.verdict === 'none';
}

export function deviceOf(devices: DeviceMapping[], volume: string): string {
  return devices.find((d) => d.volume === volume)?.device ?? '';
}

/** False only when the process is certainly gone (ESRCH). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function percent(s: CopySessionView): number {
  return s.totalBlocks === 0 ? 100 : Math.floor((s.copiedBlocks * 100) / s.totalBlocks);
}

export function codeOf(err: unknown): AgentErrorCode {
  const code = (err as { code?: unknown } | null)?.code;
  const known: AgentErrorCode[] = ['NOT_FOUND', 'ALREADY_EXISTS', 'INVALID_ARGUMENT', 'FAILED_PRECONDITION', 'RESOURCE_EXHAUSTED', 'ABORTED', 'UNAVAILABLE', 'INTERNAL'];
  return known.includes(code as AgentErrorCode) ? (code as AgentErrorCode) : code === 'DEADLINE_EXCEEDED' ? 'UNAVAILABLE' : 'INTERNAL';
}

