/**
 * What the dashboard server's endpoints return (emulator/dashboard/README.md): envelopes around
 * the views ArrayClient returns (proto/views.ts). Types only: nothing here exists at run time.
 */
import type {
  ArrayStatus,
  CartridgeView,
  CopyBitmapView,
  CopySessionView,
  ExportInfo,
  FaultView,
  HostView,
  RemoteView,
  VolumeInfo,
} from '../../../proto/views.js';

export type { ArrayStatus, CartridgeView, CopyBitmapView, CopySessionView, ExportInfo, FaultView, HostView, RemoteView, VolumeInfo };

/** An array event as the stream and /api/overview carry it (emulator/events/EventLog.ts). */
export interface ArrayEvent {
  seq: number;
  at: string;
  kind: string;
  subject: { kind: string; name: string };
  message: string;
  fields: Record<string, string>;
  volumes?: string[];
}

/** A volume's I/O counters since the array started (emulator/metrics/VolumeIo.ts). */
export interface VolumeIoCounts {
  readOps: number;
  readBytes: number;
  writeOps: number;
  writeBytes: number;
  flushOps: number;
  trimOps: number;
  trimBytes: number;
  errors: number;
}

export interface WhoAmI {
  /** null with api.auth off (nobody is logged in). */
  user: string | null;
  roles: string[];
  /** null: array-wide. */
  tenant: string | null;
  authRequired: boolean;
  can: { faults: boolean; copies: boolean };
}

export interface Overview {
  status: ArrayStatus;
  volumes: VolumeInfo[];
  exports: ExportInfo[];
  copies: CopySessionView[];
  faults: FaultView[];
  events: ArrayEvent[];
}

export type VolumeWithIo = VolumeInfo & { io?: VolumeIoCounts };

export interface VolumesPage {
  volumes: VolumeWithIo[];
  hosts: HostView[];
}
