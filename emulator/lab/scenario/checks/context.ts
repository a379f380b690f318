/** What every check kind is given, and what it answers. */
import { ApiError, type ArrayClient } from '../../../../proto/ArrayClient.js';
import type { NbdPsk } from '../../../vm/nbdPsk.js';
import type { ShellEnv } from '../shell.js';

export interface CheckResult {
  ok: boolean;
  /** What passed, or what is missing. */
  message: string;
}

export interface CheckContext {
  /** A client for a lab array (default: the first), with the lab's credential. */
  client(array?: string): ArrayClient;
  /** The array's name in messages: "" in a one-array lab, " on array NAME" otherwise. */
  where(array?: string): string;
  shell: ShellEnv;
  /** The NBD TLS-PSK keys the lab holds for an array's hosts (lab up's keys.psk), for data checks under host affinity. */
  nbdKeys?(array?: string): NbdPsk[];
  /** When the step began: events since then count. */
  stepStartedAt: Date;
}

export type Check<S> = (spec: S, ctx: CheckContext) => Promise<CheckResult>;

export const pass = (message: string): CheckResult => ({ ok: true, message });
export const fail = (message: string): CheckResult => ({ ok: false, message });

/** undefined when the array says there is no such thing; other errors are thrown. */
export async function orMissing<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch (err) {
    if (err instanceof ApiError && err.code === 'NOT_FOUND') return undefined;
    throw err;
  }
}
