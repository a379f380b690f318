/** The iSCSI target library: serves an ExportProvider's exports as SCSI logical units over iSCSI. See README.md. */
export { IscsiTarget } from './IscsiTarget.js';
export type {
  IscsiAuthOptions,
  IscsiLogger,
  IscsiLunSource,
  IscsiSessionInfo,
  IscsiTargetOptions,
  LunMapping,
  ReservationStore,
} from './types.js';
export { DEFAULT_LOGIN_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS } from './types.js';
