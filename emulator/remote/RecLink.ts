/**
 * One REC pair's link to its remote end: the data path (an NBD connection to the remote
 * array's export `.rec/PAIR/SECRET`) and the pair's control calls (RemoteCopyService).
 *
 * Why NBD for the data: the remote array already serves NBD with bounded memory, flush and FUA
 * semantics, and real-client tests; a mirrored 4 KiB write costs a 28-byte header, no message
 * encoding; the export writes under the destination's copy-engine layer, so hosts there see
 * the volume guarded as a local EC destination. Control stays on gRPC, where refusals carry
 * their reasons.
 *
 * Link faults (the fault engine's link-down, link-delay, link-rate, link-loss on remote:NAME)
 * are applied before each transfer; a link-down fault that starts drops the connection at once.
 *
 * Failures. Every failure is a RemoteLinkError: link-down (no connection, or it was lost, or a
 * link fault fired) or remote-failed (the remote answered a transfer with an I/O error). A
 * connection lost while idle is reported to the session (events.down), which halts the pair.
 *
 * Reconnect. The link dials on demand (the first transfer after a loss). While a halted pair
 * with recovery auto watches it (watch(true)), it dials in the background with back-off
 * (250 ms doubling to 2 s; a link-down fault is waited out without dialling) and calls
 * events.up() once connected.
 */
import type { Logger } from 'pino';
import type { WriteOptions, ZeroOptions } from '../block/BlockDevice.js';
import { RemoteLinkError, type HaltReason, type RecMode, type RecRecord, type SessionRecord } from '../copy/CopySession.js';
import type { RecLink, RecLinkEvents, RemoteEndState } from '../copy/SessionBase.js';
import type { LinkFaultHook, LinkOp } from '../fault/link.js';
import { NbdClient, NbdRequestError } from './NbdClient.js';
import type { RemoteArrays } from './RemoteArrays.js';

const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 2000;
const CONNECT_TIMEOUT_MS = 3000;
/** A transfer the remote does not answer in this time is a hung path: the link drops. */
const TRANSFER_TIMEOUT_MS = 30_000;

export interface RecDataPathOptions {
  record: SessionRecord;
  events: RecLinkEvents;
  remotes: RemoteArrays;
  faults: () => LinkFaultHook | undefined;
  log: Logger;
  onClose: (path: RecDataPath) => void;
}

export class RecDataPath implements RecLink {
  private client: NbdClient | undefined;
  private connecting: Promise<NbdClient> | undefined;
  private closed = false;
  private watching = false;
  private watchTimer: NodeJS.Timeout | undefined;
  private backoff = BACKOFF_FIRST_MS;
  private readonly offLinkDown: () => void;
  private readonly remote: string;
  private readonly pairId: string;
  private readonly exportName: string;

  constructor(private readonly opts: RecDataPathOptions) {
    const rec = opts.record.rec!;
    this.remote = rec.peer;
    this.pairId = opts.record.id;
    this.exportName = `.rec/${opts.record.id}/${rec.secret}`;
    this.offLinkDown = opts.faults()?.onLinkDown(this.remote, (err) => this.lose(err.message)) ?? (() => undefined);
  }

  get up(): boolean {
    return this.client !== undefined && !this.client.closed;
  }

  // ---- data ----

  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.transfer('write', data.length, (c) => c.write(offset, data, opts?.fua ? { fua: true } : {}));
  }

  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.transfer('write', length, (c) => c.writeZeroes(offset, length, opts?.fua ? { fua: true } : {}));
  }

  flush(): Promise<void> {
    return this.transfer('flush', 0, (c) => c.flush());
  }

  private async transfer(op: LinkOp, bytes: number, fn: (c: NbdClient) => Promise<void>): Promise<void> {
    const fault = this.opts.faults()?.linkSend(this.remote, op, bytes);
    if (fault !== undefined) {
      try {
        await fault;
      } catch (err) {
        this.drop();
        throw new RemoteLinkError((err as Error).message, 'link-down');
      }
    }
    const c = this.client !== undefined && !this.client.closed ? this.client : await this.connect();
    try {
      await fn(c);
    } catch (err) {
      if (err instanceof NbdRequestError) {
        throw new RemoteLinkError(
          `remote ${this.remote} failed a ${err.op} at offset ${err.offset} (${err.errno}) on ${this.opts.record.destination}`,
          'remote-failed',
        );
      }
      throw new RemoteLinkError(`link to remote ${this.remote}: ${(err as Error).message}`, 'link-down');
    }
  }

  private connect(): Promise<NbdClient> {
    if (this.closed) return Promise.reject(new RemoteLinkError(`the link of REC session ${this.pairId} is closed`, 'link-down'));
    this.connecting ??= this.dial().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async dial(): Promise<NbdClient> {
    if (this.opts.faults()?.linkDown(this.remote)) {
      throw new RemoteLinkError(`link to remote ${this.remote} is down (a link-down fault applies; see arraylab fault list)`, 'link-down');
    }
    const addr = await this.opts.remotes.nbdAddress(this.remote);
    let c: NbdClient;
    try {
      c = await NbdClient.connect({
        host: addr.host,
        port: addr.port,
        exportName: this.exportName,
        connectTimeoutMs: CONNECT_TIMEOUT_MS,
        timeoutMs: TRANSFER_TIMEOUT_MS,
      });
    } catch (err) {
      // Perhaps it moved its NBD server: ask it again before the next dial.
      void this.opts.remotes.get(this.remote, { probe: true }).catch(() => undefined);
      throw new RemoteLinkError(`cannot connect to remote ${this.remote} at ${addr.host}:${addr.port}: ${(err as Error).message}`, 'link-down');
    }
    if (this.closed) {
      c.destroy();
      throw new RemoteLinkError(`the link of REC session ${this.pairId} is closed`, 'link-down');
    }
    this.client = c;
    c.onClose((err) => {
      if (this.client !== c) return;
      this.client = undefined;
      if (!this.closed) this.opts.events.down(new RemoteLinkError(`connection to remote ${this.remote} lost: ${err?.message ?? 'closed'}`, 'link-down'));
    });
    this.opts.log.info({ remote: this.remote, pair: this.pairId, nbd: `${addr.host}:${addr.port}` }, 'REC link connected');
    return c;
  }

  /** Drops the connection without telling the session (the caller reports the failure). */
  private drop(): void {
    const c = this.client;
    this.client = undefined;
    c?.destroy('dropped by a link fault');
  }

  /** A link-down fault began: the connection goes now, and the session hears of it. */
  private lose(reason: string): void {
    if (this.client === undefined || this.closed) return;
    this.drop();
    this.opts.events.down(new RemoteLinkError(reason, 'link-down'));
  }

  /** The remote this link goes to; its registry entry went: the pair halts now (remote remove --force). */
  get remoteName(): string {
    return this.remote;
  }

  /** The link is cut from this side (its remote was removed): the session halts with `reason`. */
  cut(reason: string): void {
    if (this.closed) return;
    this.drop();
    this.opts.events.down(new RemoteLinkError(reason, 'link-down'));
  }

  // ---- control ----

  async setRemoteState(
    state: RemoteEndState,
    extra: { imageAt?: string | undefined; haltReason?: HaltReason | undefined; mode?: RecMode | undefined; resynced?: boolean | undefined } = {},
  ): Promise<void> {
    await this.opts.remotes.control(this.remote, `set the remote end ${state}`, (c) =>
      c.setRemoteEndState({
        pairId: this.pairId,
        state,
        imageAt: extra.imageAt ?? '',
        haltReason: extra.haltReason ?? '',
        mode: extra.mode ?? '',
        resynced: extra.resynced ?? false,
      }),
    );
  }

  async reverseRemote(changed: Array<[number, number]>, rec: RecRecord): Promise<void> {
    await this.opts.remotes.control(this.remote, 'reverse the pair', (c) =>
      c.reverseRemoteEnd({
        pairId: this.pairId,
        sourceArrayId: this.opts.remotes.arrayId,
        starts: changed.map(([s]) => s),
        counts: changed.map(([, n]) => n),
        mode: rec.mode,
        split: rec.split,
        recovery: rec.recovery,
      }),
    );
  }

  async resumeRemote(force: boolean): Promise<{ runs: Array<[number, number]>; restarted: boolean }> {
    const res = await this.opts.remotes.control(this.remote, 'resume the remote end', (c) => c.resumeRemoteEnd(this.pairId, force));
    return { runs: res.starts.map((s, i) => [Number(s), Number(res.counts[i] ?? 0)]), restarted: res.restarted };
  }

  // ---- reconnect ----

  watch(on: boolean): void {
    if (!on || this.closed) {
      this.watching = false;
      clearTimeout(this.watchTimer);
      this.watchTimer = undefined;
      return;
    }
    if (this.watching) return;
    this.watching = true;
    this.backoff = BACKOFF_FIRST_MS;
    this.schedule();
  }

  private schedule(): void {
    clearTimeout(this.watchTimer);
    this.watchTimer = setTimeout(() => void this.tryUp(), this.backoff);
    this.watchTimer.unref();
  }

  /**
   * The remote answers again (and no link-down fault applies): the session resumes, which
   * dials the data path anew. Not the data export itself: a halted remote end refuses it until
   * the resume.
   */
  private async tryUp(): Promise<void> {
    if (!this.watching || this.closed) return;
    try {
      if (this.opts.faults()?.linkDown(this.remote)) throw new Error('a link-down fault applies');
      await this.opts.remotes.control(this.remote, 'answer', (c) => c.getStatus());
    } catch {
      this.backoff = Math.min(BACKOFF_MAX_MS, this.backoff * 2);
      if (this.watching) this.schedule();
      return;
    }
    this.watching = false;
    this.opts.events.up();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watch(false);
    this.offLinkDown();
    const c = this.client;
    this.client = undefined;
    if (c !== undefined) void c.close().catch(() => c.destroy());
    this.opts.onClose(this);
  }
}
