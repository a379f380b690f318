/**
 * `arraylab-agent serve`: AgentService over gRPC, each method a thin call into AgentCore.
 *
 * Every call must carry `authorization: Bearer <token>`; the token is compared in constant time
 * (as SHA-256 digests, so lengths do not leak either). Errors keep their message and get the
 * status code of their kind: AgentError's code, the array's ApiError code, else INTERNAL.
 *
 * Where it listens: TCP with TLS; plaintext TCP only on a loopback address (elsewhere it is
 * refused, since the token and every command, run as root, would cross the network in the
 * clear); or a Unix socket, 0600 in a directory only the agent's user may use (0700). grpc-js
 * does not give the peer's credentials (SO_PEERCRED), so the socket's and directory's modes
 * are what keep other local users out, with the token still required.
 */
import * as grpc from '@grpc/grpc-js';
import { createHash, timingSafeEqual } from 'node:crypto';
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { grpcStatusOfError } from '../../proto/errors.js';
import type { AgentCore, DoctorCheck, LockMode, ProgressEvent } from '../types.js';
import type * as pb from '../../proto/gen/index.js';
import { addService, agentServiceDefinition } from '../../proto/loader.js';
import { ensurePrivateDir } from '../host/trust.js';
import { backupReportToWire, restoreReportToWire } from './wire.js';

/** 127.0.0.0/8, ::1 (and ::ffff:127.x), localhost: addresses no other machine reaches. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** Throws when a listener on host:port would be plaintext TCP that other machines can reach. */
export function refusePlaintext(host: string, port: number, tls: boolean): void {
  if (tls || isLoopback(host)) return;
  const address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  throw new Error(
    `refusing to serve the agent API in plaintext on ${address}: its token, and the commands it runs as root, would cross the network in the clear; give a certificate with --tls-cert PEM --tls-key PEM (or "tls: {cert: PEM, key: PEM}" in the config), or listen on 127.0.0.1 or on a Unix socket (--listen unix)`,
  );
}

/** Is something serving on that Unix socket (a live agent), rather than a socket file left behind? */
function socketServed(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export interface AgentApiServerOptions {
  core: AgentCore;
  doctor: () => Promise<DoctorCheck[]>;
  token: string;
  log: Logger;
  /** PEM; both or neither. */
  tls?: { cert: Buffer; key: Buffer };
}

/**
 * The gRPC status of a failed call: the contract's one mapping (anything else is a bug), but
 * the array's own deadline is UNAVAILABLE here, so that a client does not take it for this
 * agent's.
 */
export function statusOf(err: unknown): grpc.status {
  const s = grpcStatusOfError(err);
  return s === grpc.status.DEADLINE_EXCEEDED ? grpc.status.UNAVAILABLE : s;
}

type Call = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>;

export class AgentApiServer {
  private readonly server = new grpc.Server();
  private readonly tokenDigest: Buffer;
  private readonly opts: AgentApiServerOptions;

  constructor(opts: AgentApiServerOptions) {
    if (opts.token.length < 16) throw new Error('the agent token must be at least 16 characters; generate one with: openssl rand -hex 32');
    this.opts = opts;
    this.tokenDigest = createHash('sha256').update(opts.token).digest();
    const c = opts.core;
    const handlers: pb.AgentServiceHandlers = {
      RegisterTransaction: this.unary((r) =>
        c.registerTransaction(r.volume, {
          ...(r.lock ? { lock: r.lock as LockMode } : {}),
          ...(r.generations ? { generations: r.generations } : {}),
          ...(r.flushOnly !== undefined ? { flushOnly: r.flushOnly } : {}),
          ...(r.defaultType ? { defaultType: r.defaultType as 'opc' } : {}),
          ...(r.resyncAfterBackup !== undefined ? { resyncAfterBackup: r.resyncAfterBackup } : {}),
        }),
      ),
      RegisterBackup: this.unary((r) => c.registerBackup(r.volume)),
      Unregister: this.unary(async (r) => {
        await c.unregister(r.volume, { force: r.force });
        return {};
      }),
      Backup: this.stream(async (r, progress) => {
        const report = await c.backup(r.volumes, {
          ...(r.type ? { type: r.type as 'opc' } : {}),
          flushOnly: r.flushOnly,
          ...(r.to ? { to: r.to as 'disk' } : {}),
          ...(r.cartridge ? { cartridge: r.cartridge } : {}),
          ...(r.completeAfter ? { completeAfter: r.completeAfter as 'disk' } : {}),
          ...(r.resync !== undefined ? { resync: r.resync } : {}),
          ...(r.waitEquivalentSeconds > 0 ? { waitEquivalentSeconds: r.waitEquivalentSeconds } : {}),
          onProgress: progress,
        });
        return { backup: backupReportToWire(report) };
      }),
      StartSync: this.stream(async (r, progress) => ({
        sync: await c.startSync(r.volume, {
          full: r.full,
          wait: r.wait,
          ...(r.rateMibS !== undefined ? { rateMiBs: r.rateMibS } : {}),
          onProgress: progress,
        }),
      })),
      CancelSync: this.unary(async (r) => {
        await c.cancelSync(r.volume);
        return {};
      }),
      Restore: this.stream(async (r, progress) => {
        const report = await c.restore(r.volume, {
          ...(r.generation ? { generation: r.generation } : {}),
          ...(r.to ? { to: r.to } : {}),
          fromTape: r.fromTape,
          force: r.force,
          onProgress: progress,
        });
        return { restore: restoreReportToWire(report) };
      }),
      History: this.unary(async (r) => ({ entries: await c.history(r.volume || undefined) })),
      Status: this.unary(() => c.status()),
      Devices: this.unary(async () => ({ devices: await c.devices() })),
      ResourceMatch: this.unary(() => c.resourceMatch()),
      Doctor: this.unary(async () => ({ checks: await opts.doctor() })),
    };
    addService(this.server, agentServiceDefinition(), handlers);
  }

  private credentials(): grpc.ServerCredentials {
    return this.opts.tls
      ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: this.opts.tls.cert, private_key: this.opts.tls.key }], false)
      : grpc.ServerCredentials.createInsecure();
  }

  /**
   * Binds host:port (port 0 = any free port) and returns the port bound. Plaintext is refused
   * on an address other machines can reach.
   */
  async listen(host: string, port: number): Promise<number> {
    const address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    refusePlaintext(host, port, this.opts.tls !== undefined);
    return new Promise((resolve, reject) => {
      this.server.bindAsync(address, this.credentials(), (err, bound) =>
        err ? reject(new Error(`cannot listen on ${address}: ${err.message}; choose another --listen address`)) : resolve(bound),
      );
    });
  }

  /**
   * Binds a Unix socket at path: its directory must be the agent's own (made 0700 when missing,
   * refused when another user owns it or others may write it), and the socket is made 0600. A
   * socket file left by an agent that is gone is replaced; a served one is refused.
   */
  async listenUnix(path: string): Promise<void> {
    if (!path.startsWith('/')) throw new Error(`the agent socket ${path} must be an absolute path; give --listen unix:/PATH`);
    ensurePrivateDir(dirname(path), 'socket directory');
    let existing: ReturnType<typeof lstatSync> | undefined;
    try {
      existing = lstatSync(path);
    } catch {
      // none: fine
    }
    if (existing) {
      if (!existing.isSocket()) throw new Error(`${path} exists and is not a socket; remove it or choose another --listen unix:/PATH`);
      if (await socketServed(path)) throw new Error(`another agent serves on ${path}; stop it, or choose another --listen unix:/PATH`);
      unlinkSync(path);
    }
    await new Promise<void>((resolve, reject) => {
      this.server.bindAsync(`unix:${path}`, this.credentials(), (err) =>
        err ? reject(new Error(`cannot listen on ${path}: ${err.message}; choose another --listen unix:/PATH`)) : resolve(),
      );
    });
    chmodSync(path, 0o600);
  }

  /** Stops taking calls; running ones finish (a backup in progress runs its post-processing). */
  close(): Promise<void> {
    return new Promise((resolve) => this.server.tryShutdown(() => resolve()));
  }

  private authorized(call: Call): boolean {
    const header = call.metadata.get('authorization')[0];
    if (typeof header !== 'string' || !header.startsWith('Bearer ')) return false;
    const digest = createHash('sha256').update(header.slice('Bearer '.length)).digest();
    return timingSafeEqual(digest, this.tokenDigest);
  }

  private denied(call: Call): grpc.ServiceError {
    this.opts.log.warn({ peer: call.getPeer() }, 'agent API call refused: missing or wrong token');
    return Object.assign(new Error('missing or wrong token'), {
      code: grpc.status.UNAUTHENTICATED,
      details: "missing or wrong token; pass the agent's token (its token file, or ARRAYLAB_AGENT_TOKEN)",
      metadata: new grpc.Metadata(),
    });
  }

  private failure(err: unknown, method: string): grpc.ServiceError {
    const message = err instanceof Error ? err.message : String(err);
    const code = statusOf(err);
    if (code === grpc.status.INTERNAL) this.opts.log.error({ err, method }, 'agent API call failed unexpectedly');
    return Object.assign(new Error(message), { code, details: message, metadata: new grpc.Metadata() });
  }

  private unary<Req, Res>(fn: (req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      if (!this.authorized(call)) return callback(this.denied(call));
      fn(call.request).then(
        (res) => callback(null, res),
        (err) => callback(this.failure(err, call.getPath())),
      );
    };
  }

  private stream<Req>(
    fn: (req: Req, progress: (p: ProgressEvent) => void) => Promise<pb.AgentProgress>,
  ): grpc.handleServerStreamingCall<Req, pb.AgentProgress> {
    return (call) => {
      if (!this.authorized(call)) {
        call.emit('error', this.denied(call));
        return;
      }
      // A client that goes away does not stop the operation: its post-processing must run.
      const progress = (p: ProgressEvent) => {
        if (!call.cancelled && !call.destroyed) call.write({ progress: p });
      };
      fn(call.request, progress).then(
        (last) => {
          if (!call.cancelled && !call.destroyed) {
            call.write(last);
            call.end();
          }
        },
        (err) => {
          if (!call.cancelled && !call.destroyed) call.emit('error', this.failure(err, call.getPath()));
        },
      );
    };
  }
}
