/** The part of the array's API that backup management uses (proto/ArrayClient). */
import type { ArrayClient } from '../../proto/ArrayClient.js';

export type ArrayPort = Pick<
  ArrayClient,
  | 'getVolume'
  | 'listVolumes'
  | 'listExports'
  | 'startCopy'
  | 'startCopyGroup'
  | 'cutCopyGroup'
  | 'getCopy'
  | 'listCopies'
  | 'copyEndings'
  | 'suspendCopy'
  | 'resumeCopy'
  | 'reverseCopy'
  | 'cancelCopy'
  | 'restoreFromClone'
  | 'setCopyRate'
>;

/** True when an array call failed because the thing is gone (ApiError NOT_FOUND). */
export function isNotFound(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === 'NOT_FOUND';
}
