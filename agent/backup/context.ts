/**
 * What restore.ts and resourceMatch.ts share with BackupManager, and small helpers.
 */
import type { Logger } from 'pino';
import type { CopySessionView } from '../../proto/views.js';
import type { VolumeInfo } from '../../proto/views.js';
import type { AgentStore } from '../store/AgentStore.js';
import type {
  AgentErrorCode,
  DeviceMapping,
  HistoryEntry,
  HookPhase,
  HookResult,
  HostSide,
  ProgressEvent,
  TapePort,
  TransactionVolumeRecord,
} from '../types.js';
import type { ArrayPort } from './ArrayPort.js';
import type { ArrayState } from './generations.js';

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
  /** An unused registered backup volume of tvInfo's size and block size, claimed for purpose. */
  pickUnused(
    volume: string,
    tvInfo: VolumeInfo,
    heldCount: number,
    arrayVolumes: Map<string, VolumeInfo>,
    purpose: string,
    prefer?: (bv: string) => boolean,
  ): string;
  /** The array's volumes and sessions; undefined when they cannot be read (arrayStateError says why). */
  arrayState(): Promise<ArrayState | undefined>;
  /** Why the last arrayState() had none: the array unreachable, or its answer an error (e.g. an injected api-error). */
  arrayStateError(): string;
  /** A volume's device here ('' when none), refused (AgentError) if it is not the volume pinned at registration. */
  pinnedDevice(devices: DeviceMapping[], volume: string, info: VolumeInfo | undefined, role: 'transaction' | 'backup'): string;
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
  const known: AgentErrorCode[] = [
    'NOT_FOUND',
    'ALREADY_EXISTS',
    'INVALID_ARGUMENT',
    'FAILED_PRECONDITION',
    'RESOURCE_EXHAUSTED',
    'ABORTED',
    'UNAVAILABLE',
    'INTERNAL',
  ];
  return known.includes(code as AgentErrorCode) ? (code as AgentErrorCode) : code === 'DEADLINE_EXCEEDED' ? 'UNAVAILABLE' : 'INTERNAL';
}

/**
 * Why a volume that is to be locked, frozen or flushed cannot be: no block device of it was
 * found on this host. Names how the agent looked and every way to fix it.
 */
export function noDeviceMessage(volume: string, info: Pick<VolumeInfo, 'wwn' | 'serial'> | undefined): string {
  const how = info
    ? `by its WWN ${info.wwn}, its serial ${info.serial}, an NBD export named ${volume} or the device map`
    : `by WWN, serial, NBD export or the device map`;
  return (
    `no block device of ${volume} was found on this host (looked ${how}); ` +
    `attach the volume here (iSCSI login or nbd-client), or add "${volume} /dev/DEVICE" to the device map (--device-map), ` +
    `or register it with --lock none to back it up with no host-side processing`
  );
}

/** Sleeps ms milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
