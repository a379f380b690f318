/**
 * The iSCSI target's public option types: what the array gives the target. The target knows
 * nothing of volumes, hosts or copy sessions; it asks `luns` which exports an initiator may
 * see at which LUN (host affinity is the array's policy), and opens each through the same
 * ExportProvider the NBD server uses, so both protocols see one block layer.
 */
import type { ExportProvider } from '../block/BlockDevice.js';
import type { ChapCredentials } from './chap.js';
import type { LoginThrottleOptions } from './loginThrottle.js';

/** The subset of pino's Logger the target uses; a pino logger fits as is. */
export interface IscsiLogger {
  debug(o: object | string, msg?: string): void;
  info(o: object | string, msg?: string): void;
  warn(o: object | string, msg?: string): void;
  error(o: object | string, msg?: string): void;
  child(bindings: object): IscsiLogger;
}

/** One LUN an initiator may see: LUN number and the export behind it. */
export interface LunMapping {
  readonly lun: number;
  readonly exportName: string;
}

/** Host affinity, decided by the array. */
export interface IscsiLunSource {
  /**
   * The LUNs an initiator may see, or an empty list when it may see none (it can still log
   * in and run REPORT LUNS, which then lists nothing). Called at login and again after
   * IscsiTarget.lunsChanged().
   */
  lunsFor(initiatorName: string): readonly LunMapping[];
  /**
   * The CHAP an initiator's host requires, or undefined (then `auth`, if set, applies). Asked
   * at every login, once the first Login Request has named the initiator.
   */
  chapFor?(initiatorName: string): IscsiAuthOptions | undefined;
}

export interface IscsiAuthOptions {
  /** The initiator must authenticate with these (one-way CHAP). */
  readonly initiator: ChapCredentials;
  /** When set, the target also answers the initiator's challenge with these (mutual CHAP). */
  readonly target?: ChapCredentials;
  /** Whose credentials these are, for the log: "host web", "iscsi.chap". */
  readonly label?: string;
}

/**
 * Persistent reservation state of one logical unit that must survive a restart (APTPL=1).
 * The state is opaque to the store; it is keyed by the LUN's WWN.
 */
export interface ReservationStore {
  load(wwn: string): Buffer | undefined;
  save(wwn: string, state: Buffer | undefined): void;
}

export interface IscsiTargetOptions {
  /** The array's target name, an IQN such as "iqn.2026-11.lab.arraylab:array0". */
  readonly targetName: string;
  readonly targetAlias?: string;
  readonly provider: ExportProvider;
  readonly luns: IscsiLunSource;
  readonly logger: IscsiLogger;
  /** CHAP every initiator must log in with, unless luns.chapFor names its host's; absent: AuthMethod=None. */
  readonly auth?: IscsiAuthOptions | undefined;
  /** CHAP algorithms accepted, preferred first (chap.ts numbers); default all four. Without MD5, libiscsi cannot log in with CHAP. */
  readonly chapAlgorithms?: readonly number[];
  /** Failed-login throttle per initiator address (loginThrottle.ts); false: none. */
  readonly loginThrottle?: LoginThrottleOptions | false;
  /** For APTPL; absent means reservations are never persisted (APTPL=1 is then refused). */
  readonly reservations?: ReservationStore;
  /** A connection must finish login within this time or be closed. Default 15 s. */
  readonly loginTimeoutMs?: number;
  /** Connections beyond this many are refused at accept. Default 256. */
  readonly maxConnections?: number;
}

export const DEFAULT_LOGIN_TIMEOUT_MS = 15_000;
export const DEFAULT_MAX_CONNECTIONS = 256;

/** One logged-in session, for status output and tests. */
export interface IscsiSessionInfo {
  readonly initiatorName: string;
  readonly isid: string;
  readonly tsih: number;
  readonly connections: number;
  readonly remoteAddresses: readonly string[];
  readonly luns: readonly LunMapping[];
}
