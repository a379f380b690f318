/**
 * The copy manager's state and limits (SPC-4 §5.17, EXTENDED COPY LID1): what OPERATING
 * PARAMETERS advertises, the held results RECEIVE COPY RESULTS reports, and the seam for an
 * offloaded copy. State lives here, per device server (a WeakMap, so a target that
 * goes away takes its copy results with it), because the device server itself knows nothing of
 * copies.
 */
import type { BlockDevice } from '../../block/BlockDevice.js';
import type { Nexus } from './types.js';
import type { DeviceServer } from './dispatch.js';

/** Limits reported by RECEIVE COPY RESULTS / OPERATING PARAMETERS and enforced by EXTENDED COPY. */
export const MAX_CSCD_DESCRIPTORS = 16;
export const MAX_SEGMENT_DESCRIPTORS = 64;
/** CSCD descriptor list plus segment descriptor list, in bytes (the 16-byte header not included). */
export const MAX_DESCRIPTOR_LIST_LENGTH = 2048;
/** A block-to-block segment moves at most 65535 blocks of 4096 bytes: always below this. */
export const MAX_SEGMENT_LENGTH = 256 * 1024 * 1024;
/** Inline and embedded data are not supported. */
export const MAX_INLINE_DATA_LENGTH = 0;
/** EXTENDED COPY commands processed at once per target (with or without a list identifier). */
export const MAX_CONCURRENT_COPIES = 16;
/** Held results kept per target; the oldest completed ones go first. */
export const MAX_HELD_RESULTS = 256;
/** Bytes moved per read/write pair; a multiple of every block size (512, 4096). */
export const COPY_CHUNK_BYTES = 1024 * 1024;

/** Descriptor type codes the copy manager implements: block→block segment, identification CSCD. */
export const SEGMENT_BLOCK_TO_BLOCK = 0x02;
export const CSCD_IDENTIFICATION = 0xe4;

/** COPY MANAGER STATUS values of COPY STATUS (SPC-4 §6.18.3). */
export const COPY_IN_PROGRESS = 0x00;
export const COPY_COMPLETED = 0x01;
export const COPY_FAILED = 0x02;

/** What RECEIVE COPY RESULTS reports for one list identifier of one I_T nexus. */
export interface CopyResult {
  status: number;
  segmentsProcessed: number;
  bytesCopied: number;
  /** Status and sense data of a failed copy, for FAILED SEGMENT DETAILS. */
  failure?: { status: number; sense: Buffer } | undefined;
}

/**
 * Offloaded copy: when set, a segment is handed over whole instead of being read and written
 * in chunks by the SCSI layer. It must have the same effect as writing the destination range
 * through dst.write (copy-on-write sessions and write protection apply), and resolve only once
 * the data is in place. Ranges are block-aligned and inside both devices; the destination
 * range is registered as a write in flight for the whole call, so COMPARE AND WRITE excludes it.
 */
export type CopyRange = (src: BlockDevice, srcOffset: number, dst: BlockDevice, dstOffset: number, length: number) => Promise<void>;

export interface CopyManagerOptions {
  copyRange?: CopyRange;
}

interface CopyManagerState {
  options: CopyManagerOptions;
  /** Held results by nexus + list identifier, in insertion order (oldest first). */
  results: Map<string, CopyResult>;
  /** EXTENDED COPY commands being processed now. */
  active: number;
}

const states = new WeakMap<DeviceServer, CopyManagerState>();

export function copyManager(target: DeviceServer): CopyManagerState {
  let s = states.get(target);
  if (s === undefined) {
    s = { options: {}, results: new Map(), active: 0 };
    states.set(target, s);
  }
  return s;
}

/** Sets the copy manager's options of a target, e.g. an offloaded copyRange. */
export function configureCopyManager(target: DeviceServer, options: CopyManagerOptions): void {
  copyManager(target).options = { ...options };
}

function nexusPrefix(nexus: Nexus): string {
  return `${nexus.initiatorPort}\n${nexus.targetPort}\n`;
}

export function resultKey(nexus: Nexus, listId: number): string {
  return nexusPrefix(nexus) + listId;
}

/** Holds a result, replacing one of the same key; evicts the oldest completed results past the bound. */
export function holdResult(s: CopyManagerState, key: string, result: CopyResult): void {
  s.results.delete(key); // re-inserted last: eviction order follows the latest use
  s.results.set(key, result);
  if (s.results.size <= MAX_HELD_RESULTS) return;
  for (const [k, r] of s.results) {
    if (r.status === COPY_IN_PROGRESS) continue; // never lose track of a running copy
    s.results.delete(k);
    if (s.results.size <= MAX_HELD_RESULTS) return;
  }
}

/**
 * I_T nexus loss (logout, connection drop without reinstatement): SPC-4 discards the results
 * held for that nexus. The transport calls this when a session ends.
 */
export function endCopyNexus(target: DeviceServer, nexus: Nexus): void {
  const s = states.get(target);
  if (s === undefined) return;
  const prefix = nexusPrefix(nexus);
  for (const [k, r] of s.results) if (k.startsWith(prefix) && r.status !== COPY_IN_PROGRESS) s.results.delete(k);
}
