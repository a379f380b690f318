/**
 * The guest side: serves a HostSide (LinuxHost in the guest) to the host over a GuestPort, one
 * JSON line per message (protocol.ts). Calls run concurrently; each answers with its own id.
 *
 * The port outlives host connections (qemu keeps the guest side open): when the host goes away
 * or a new host says `sync`, the epoch moves on and answers to calls of an earlier epoch are
 * dropped, so a new host never reads an answer meant for the old one.
 */
import { hostname, release } from 'node:os';
import type { Logger } from 'pino';
import { ARRAYLAB_VERSION } from '../../proto/util/version.js';
import { hostChecks } from '../doctor.js';
import { HOOK_PHASES, type HookContext, type HostSide, type LockRecord, type TransactionPrep } from '../types.js';
import type { GuestPort } from './port.js';
import {
  encodeLine,
  HOST_METHODS,
  LineReader,
  parseObject,
  PROTOCOL_VERSION,
  toWireError,
  type GuestHello,
  type GuestReply,
  type HostMethod,
} from '../../proto/guest/protocol.js';

export interface GuestServerOptions {
  host: HostSide;
  port: GuestPort;
  log: Logger;
  /** What hello reports: the settings the LinuxHost applies. */
  hookTimeoutMs: number;
  freezeDeadlineMs: number;
  /** guest-serve's hooks directory, for doctor's hooks check (none: not checked). */
  hooksDir?: string;
  /** The guest's wall clock (default Date.now); tests skew it. */
  clock?: () => number;
}

class BadParams extends Error {
  constructor(method: string, what: string) {
    super(`guest agent: bad params for ${method}: ${what}; the host and guest agents may be different versions (rebuild the guest image)`);
    this.name = 'BadParams';
  }
}

export class GuestServer {
  private readonly log: Logger;
  private readonly reader: LineReader;
  private epoch = 0;
  private running = 0;
  private stopped = false;
  private loop: Promise<void> | null = null;

  constructor(private readonly opts: GuestServerOptions) {
    this.log = opts.log.child({ part: 'guest-server' });
    this.reader = new LineReader(
      (line) => this.onLine(line),
      (seen) => this.log.warn({ bytes: seen }, `dropped a line longer than 1 MiB from the host; waiting for the next line`),
    );
  }

  /** Reads the port until stop(); resolves then. */
  start(): Promise<void> {
    this.loop ??= this.readLoop();
    return this.loop;
  }

  /** Stops reading (calls already running finish, their answers are still sent). */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.opts.port.close();
    await this.loop;
  }

  /** Calls in progress (for tests and logs). */
  get inFlight(): number {
    return this.running;
  }

  private async readLoop(): Promise<void> {
    while (!this.stopped) {
      let chunk: Buffer | null;
      try {
        chunk = await this.opts.port.read();
      } catch (err) {
        if (this.stopped) return;
        this.log.error({ err: (err as Error).message }, 'reading the agent port failed; retrying in 1 s');
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      if (chunk === null) {
        if (this.stopped) return;
        // The host went away: forget its partial line; its calls' answers are not sent.
        this.reader.reset();
        this.epoch++;
        this.log.info({ epoch: this.epoch }, 'host disconnected');
        continue;
      }
      this.reader.push(chunk);
    }
  }

  private onLine(line: string): void {
    const msg = parseObject(line);
    if (!msg || typeof msg.id !== 'number' || typeof msg.method !== 'string') {
      // Stale bytes of an earlier connection, or garbage: the host resyncs with `sync`.
      if (line.trim()) this.log.debug({ line: line.slice(0, 200) }, 'ignored a line that is not a request');
      return;
    }
    const id = msg.id;
    const method = msg.method;
    const params = Array.isArray(msg.params) ? msg.params : [];
    if (method === 'sync') {
      // A new host (or the same one after a reconnect): earlier calls' answers are not its.
      this.epoch++;
      this.send({ id, result: params[0] ?? null });
      return;
    }
    const epoch = this.epoch;
    this.running++;
    this.dispatch(id, method, params, epoch)
      .then(
        (result) => this.send({ id, result: result === undefined ? null : result }, epoch),
        (err: unknown) => {
          this.log.info({ id, method, err: (err as Error).message }, 'call failed');
          this.send({ id, error: toWireError(err) }, epoch);
        },
      )
      .finally(() => this.running--);
  }

  private send(reply: GuestReply, epoch = this.epoch): void {
    if (epoch !== this.epoch) {
      this.log.info({ id: reply.id }, 'the host that asked is gone; answer dropped');
      return;
    }
    this.opts.port.write(encodeLine(reply)).catch((err: Error) => this.log.warn({ err: err.message }, 'writing to the agent port failed'));
  }

  private hello(): GuestHello {
    return {
      protocol: PROTOCOL_VERSION,
      version: ARRAYLAB_VERSION,
      hostname: hostname(),
      kernel: release(),
      pid: process.pid,
      hookTimeoutMs: this.opts.hookTimeoutMs,
      freezeDeadlineMs: this.opts.freezeDeadlineMs,
      now: (this.opts.clock ?? Date.now)(),
    };
  }

  private async dispatch(id: number, method: string, p: unknown[], epoch: number): Promise<unknown> {
    if (method === 'hello') return this.hello();
    if (method === 'doctor') return hostChecks(this.opts.hooksDir !== undefined ? { hooksDir: this.opts.hooksDir } : {});
    if (!(HOST_METHODS as readonly string[]).includes(method)) {
      throw new Error(`guest agent: unknown method ${JSON.stringify(method)}; the host and guest agents may be different versions (rebuild the guest image)`);
    }
    const host = this.opts.host;
    const m = method as HostMethod;
    const str = (i: number, name: string) => {
      if (typeof p[i] !== 'string') throw new BadParams(m, `${name} must be a string`);
      return p[i] as string;
    };
    const obj = (i: number, name: string) => {
      if (p[i] === null || typeof p[i] !== 'object') throw new BadParams(m, `${name} must be an object`);
      return p[i] as Record<string, unknown>;
    };
    const opt = (i: number) => (p[i] !== null && typeof p[i] === 'object' ? (p[i] as Record<string, unknown>) : undefined);
    this.log.debug({ id, method }, 'call');
    switch (m) {
      case 'devices': {
        if (!Array.isArray(p[0])) throw new BadParams(m, 'volumes must be an array');
        return host.devices(p[0] as Parameters<HostSide['devices']>[0]);
      }
      case 'mountsOf':
        return host.mountsOf(str(0, 'device'));
      case 'lockTransaction': {
        const prep = str(2, 'prep');
        if (!['unmount', 'freeze', 'flush'].includes(prep)) throw new BadParams(m, `prep ${JSON.stringify(prep)} is not unmount, freeze or flush`);
        const o = opt(3);
        return host.lockTransaction(
          str(0, 'volume'),
          str(1, 'device'),
          prep as TransactionPrep,
          typeof o?.freezeDeadlineMs === 'number' ? { freezeDeadlineMs: o.freezeDeadlineMs } : undefined,
        );
      }
      case 'lockBackup':
        return host.lockBackup(str(0, 'volume'), str(1, 'device'));
      case 'unlock': {
        const rec = obj(0, 'record') as unknown as LockRecord;
        if (typeof rec.volume !== 'string' || typeof rec.action !== 'string' || !Array.isArray(rec.mounts))
          throw new BadParams(m, 'record is not a LockRecord');
        await host.unlock(rec);
        return null;
      }
      case 'invalidate':
        await host.invalidate(str(0, 'device'));
        return null;
      case 'runHook': {
        const ctx = obj(0, 'context') as unknown as HookContext;
        if (!(HOOK_PHASES as readonly string[]).includes(ctx.phase)) throw new BadParams(m, `phase ${JSON.stringify(ctx.phase)} is not a hook phase`);
        const o = opt(1);
        return host.runHook(ctx, typeof o?.timeoutMs === 'number' ? { timeoutMs: o.timeoutMs } : undefined);
      }
      case 'copyDevice':
        await host.copyDevice(str(0, 'from'), str(1, 'to'), (progress) => this.send({ id, progress }, epoch));
        return null;
      case 'isFrozen':
        return host.isFrozen(str(0, 'mountPoint'));
    }
  }
}
