/**
 * What the dashboard server's endpoints return (emulator/dashboard/README.md): envelopes around
 * the views ArrayClient returns (proto/views.ts). Types only: nothing here exists at run time.
 */
import type {
  ArrayEventView,
  ArrayStatus,
  CartridgeView,
  CopyBitmapView,
  CopySessionView,
  ExportInfo,
  FaultView,
  HostView,
  RemoteView,
  VolumeInfo,
  VolumeIoCounts,
} from '../../../proto/views.js';

export type {
  ArrayEventView,
  ArrayStatus,
  CartridgeView,
  CopyBitmapView,
  CopySessionView,
  ExportInfo,
  FaultView,
  HostView,
  RemoteView,
  VolumeInfo,
  VolumeIoCounts,
};

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
  events: ArrayEventView[];
}

export type VolumeWithIo = VolumeInfo & { io?: VolumeIoCounts };

export interface VolumesPage {
  volumes: VolumeWithIo[];
  hosts: HostView[];
}
