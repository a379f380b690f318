/**
 * The fault hook of a link to a remote array (remote copy): what emulator/remote's RemoteLink
 * calls before each transfer, and the error it gets when a link fault fails one. A file of its
 * own, with no import of the engine or of emulator/remote, so either side can depend on it.
 *
 * The array's FaultEngine implements LinkFaultHook (link-down, link-delay, link-rate and
 * link-loss faults on `remote:NAME`; emulator/fault/README.md, "Link faults").
 */
import { StatusError } from '../../proto/errors.js';

/** What a link carries: writes and reads of data, flushes, and its own control messages. */
export const LINK_OPS = ['write', 'read', 'flush', 'control'] as const;
export type LinkOp = (typeof LINK_OPS)[number];

/** A remote array's name, as `arraylab remote add NAME` takes it. */
export const REMOTE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/**
 * A transfer a link fault failed. The link treats it as a lost connection: it drops the
 * connection it has and reconnects (asking linkDown() before each dial). UNAVAILABLE, so an API
 * call that waits on the link reports it as the transient failure it is.
 */
export class LinkFaultError extends StatusError {
  readonly remote: string;
  readonly kind: 'link-down' | 'link-loss';
  readonly faultId: string;

  constructor(remote: string, kind: 'link-down' | 'link-loss', faultId: string) {
    super(
      'UNAVAILABLE',
      kind === 'link-down'
        ? `link to remote ${remote} is down (fault ${faultId} link-down); remove it with arraylab fault remove ${faultId}`
        : `link to remote ${remote} lost its connection (fault ${faultId} link-loss); the link reconnects; remove the fault with arraylab fault remove ${faultId}`,
    );
    this.name = 'LinkFaultError';
    this.remote = remote;
    this.kind = kind;
    this.faultId = faultId;
  }
}

export interface LinkFaultHook {
  /**
   * Called by the remote link before each transfer of `bytes` bytes to `remote`.
   * Returns undefined when no link fault applies (the fast path: no allocation), or a promise
   * that resolves when the transfer may go (delay, rate), or rejects with LinkFaultError
   * (link-down, link-loss fired). On a rejection the link drops its connection and reconnects.
   */
  linkSend(remote: string, op: LinkOp, bytes: number): Promise<void> | undefined;
  /**
   * True while a link-down fault applies to `remote` now (the link's reconnect loop asks before
   * dialling, and waits while it is). A question: it counts nothing and records no event.
   */
  linkDown(remote: string): boolean;
  /**
   * Calls `drop` when a link-down fault starts to apply to `remote` (added, its window opens, its
   * flag is set), so the link drops its current connection at once rather than at its next
   * transfer. Returns the function that stops the calls (the link is removed).
   */
  onLinkDown(remote: string, drop: (err: LinkFaultError) => void): () => void;
}
