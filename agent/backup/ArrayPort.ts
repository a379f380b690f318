/** The part of the array's API that backup management uses (proto/ArrayClient). */
import type { ArrayClient } from '../../proto/ArrayClient.js';

/** reportAgentEvent is optional: a port without it (a test's fake array) reports nothing. */
export type ArrayPort = Partial<Pick<ArrayClient, 'reportAgentEvent'>> &
  Pick<
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
    | 'listRemotes'
  >;

/** What the agent asks a remote array itself: a remote backup volume's size (remote.ts). */
export type RemoteArrayPort = Pick<ArrayClient, 'getVolume' | 'close'>;

/** True when an array call failed because the thing is gone (ApiError NOT_FOUND). */
export function isNotFound(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === 'NOT_FOUND';
}
