/**
 * The control API: arraylab.v1.ArrayService, CopyService and HostAffinityService over gRPC, in
 * front of a StorageArray.
 *
 * Array errors keep their message and map one-to-one onto gRPC status codes; anything else is
 * a bug, logged with its stack and returned as INTERNAL. While the server shuts down, new calls
 * get UNAVAILABLE so nothing changes the array as it is being flushed and closed.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { ArrayError, type ConnectionInfo, type CreateVolumeRequest, type LogicalBlockSize, type RenameVolumeOptions, type VolumeInfo } from '../array/types.js';
import { DEFAULT_API_ADDRESS, formatHostPort, type HostPort, isLoopbackHost } from '../../proto/util/address.js';
import type { ArrayStatus, ExportInfo, WriteCacheMode } from '../../proto/views.js';
import type { CopyEvent, SessionInfo } from '../copy/CopySession.js';
import type { SessionBitmap } from '../copy/sessionBitmap.js';
import { grpcStatusOf, StatusError } from '../../proto/errors.js';
import type { StartCopyRequest } from '../array/StorageArray.js';
import { hostAffinityHandlers, type HostControl, type SessionSource } from './hostService.js';
import {
  addService,
  arrayServiceDefinition,
  copyServiceDefinition,
  faultServiceDefinition,
  hostAffinityServiceDefinition,
  remoteCopyServiceDefinition,
  remoteServiceDefinition,
  tapeServiceDefinition,
  accessServiceDefinition,
  eventServiceDefinition,
} from '../../proto/loader.js';
import type { EventLog } from '../events/EventLog.js';
import { eventHandlers, stampTenants } from './eventService.js';
import type { AccessControl } from '../auth/AccessControl.js';
import { apiGuard, callCounter, principalOf } from '../auth/ApiGuard.js';
import { Scope, type ScopeDirectory } from '../auth/tenantScope.js';
import { accessHandlers, type OwnershipKeys } from './accessService.js';
import type { FaultEngine } from '../fault/FaultEngine.js';
import { faultHandlers, type PowerCutControl } from './faultService.js';
import { tapeHandlers, type TapeControl } from './tapeService.js'; // tape
import { copyBitmapToWire, copySessionToWire, rateFromWire } from './copyWire.js';
import { remoteCopyHandlers, remoteHandlers, type RemoteControl } from './remoteService.js';
import type * as pb from '../../proto/gen/index.js';
import { copyStateToWire, copyTypeFromWire, exportToWire, provisioningFromWire, statusToWire, toByteCount, volumeToWire } from '../../proto/wire/wire.js';

export { DEFAULT_API_ADDRESS };

/** What the API needs of the array; StorageArray provides it. */
export interface ArrayControl {
  createVolume(req: CreateVolumeRequest): Promise<VolumeInfo>;
  listVolumes(): VolumeInfo[];
  getVolume(name: string): VolumeInfo;
  resizeVolume(name: string, newSizeBytes: number): Promise<VolumeInfo>;
  deleteVolume(name: string): Promise<void>;
  /** null removes the limit. */
  setVolumeAllocLimit(name: string, limitBytes: number | null): Promise<VolumeInfo>;
  /** Volatile write cache on or off; absent: the array has none (UNIMPLEMENTED). */
  setVolumeWriteCache?(name: string, mode: WriteCacheMode): Promise<VolumeInfo>;
  renameVolume(oldName: string, newName: string, opts?: RenameVolumeOptions): Promise<VolumeInfo>;
  listConnections(): ConnectionInfo[];
}

/** What the copy API needs of the array; StorageArray provides it. */
export interface CopyControl {
  startCopy(req: StartCopyRequest): Promise<SessionInfo>;
  listCopies(): SessionInfo[];
  /** How a session that is gone ended, if known (optional: fakes leave it out: unknown). */
  copyEndedAs?(id: string): 'completed' | 'cancelled' | 'dropped' | undefined;
  getCopy(id: string): SessionInfo;
  /** The session's bitmap as cells (GetCopyBitmap); absent: UNIMPLEMENTED. */
  copyBitmap?(id: string, maxCells?: number): SessionBitmap;
  suspendCopy(id: string): Promise<SessionInfo>;
  resumeCopy(id: string, opts?: { force?: boolean }): Promise<SessionInfo>;
  reverseCopy(id: string, opts?: { force?: boolean }): Promise<SessionInfo>;
  splitCopy(id: string, opts?: { newName?: string }): Promise<SessionInfo>;
  restoreFromClone(id: string, opts?: { force?: boolean }): Promise<SessionInfo>;
  startCopyGroup(group: string, reqs: StartCopyRequest[]): Promise<SessionInfo[]>;
  cutCopyGroup(op: 'suspend' | 'split', sel: { ids?: string[]; group?: string }): Promise<SessionInfo[]>;
  cancelCopy(id: string, opts?: { force?: boolean }): Promise<void>;
  setCopyRate(id: string, rate: number): Promise<SessionInfo>;
  /** REC: the transfer mode; absent: UNIMPLEMENTED. */
  setCopyMode?(id: string, mode: string): Promise<SessionInfo>;
  onCopyEvent(listener: (e: CopyEvent) => void): () => void;
}

/** The server-wide part of the status, which the array does not know. */
export type ServerStatus = Pick<ArrayStatus, 'version' | 'startedAt' | 'dataDir' | 'backend' | 'listeners'> & { iscsiTargetName?: string; arrayId?: string };

export interface ArrayApiServerOptions {
  array: ArrayControl;
  /** The copy sessions; CopyService is served only when given. */
  copy?: CopyControl;
  status: () => ServerStatus;
  logger: Logger;
  /** Host affinity; HostAffinityService is served only when given. */
  hosts?: HostControl;
  /** The iSCSI target's logged-in sessions (absent: none). */
  iscsiSessions?: SessionSource;
  /** tape: the tape library; TapeService is served only when given. */
  tape?: TapeControl;
  /** The fault engine; FaultService is served only when given, and api faults act on every call. */
  faults?: FaultEngine;
  /** The power cut of volatile write caches (FaultService.PowerCut). */
  power?: PowerCutControl;
  /** Remote arrays and REC remote ends; RemoteService and RemoteCopyService are served only when given. */
  remote?: RemoteControl;
  /**
   * Access control (emulator/auth): every call is authenticated, authorised, scoped to its
   * tenant and audited, and AccessService is served. Absent: anyone may call anything (tests
   * of the services themselves, and api.auth: off on a loopback address).
   */
  access?: { control: AccessControl; dir: ScopeDirectory; keys: OwnershipKeys };
  /** Told each call's method path and gRPC status name as it ends (the metrics), with or without access control. */
  onCallEnded?: (path: string, code: string) => void;
  /** TLS for the API (PEM); with ca, client certificates are verified and may name users. */
  tls?: { cert: Buffer; key: Buffer; ca?: Buffer };
  /** The event stream (unless api.events: off). Absent: EventService answers FAILED_PRECONDITION. */
  events?: EventLog;
}

export class ArrayApiServer {
  private readonly server: grpc.Server;
  private readonly tls: ArrayApiServerOptions['tls'];
  private readonly authenticated: boolean;
  private readonly access: ArrayApiServerOptions['access'];
  private readonly array: ArrayControl;
  private readonly serverStatus: () => ServerStatus;
  private readonly sessions: SessionSource;
  private readonly log: Logger;
  private draining = false;
  private listening = false;
  /** Open WatchCopies streams, ended when the server drains. */
  private readonly watches = new Set<() => void>();
  private readonly faults: FaultEngine | undefined;

  constructor(opts: ArrayApiServerOptions) {
    this.array = opts.array;
    this.serverStatus = opts.status;
    this.sessions = opts.iscsiSessions ?? (() => []);
    this.log = opts.logger.child({ component: 'api' });
    this.faults = opts.faults;
    this.tls = opts.tls;
    this.access = opts.access;
    this.authenticated = opts.access !== undefined;
    const guard =
      opts.access &&
      apiGuard({
        access: opts.access.control,
        dir: opts.access.dir,
        log: this.log,
        clientCertificates: opts.tls?.ca !== undefined,
        ...(opts.onCallEnded ? { onCallEnded: opts.onCallEnded } : {}),
      });
    const counter = guard === undefined && opts.onCallEnded ? callCounter(opts.onCallEnded) : undefined;
    this.server = new grpc.Server(guard ? { interceptors: [guard] } : counter ? { interceptors: [counter] } : {});
    if (opts.access) {
      addService(
        this.server,
        accessServiceDefinition(),
        accessHandlers(opts.access.control, opts.access.keys, (method, fn) => this.unary(method, fn)),
      );
    }
    const arrayHandlers: pb.ArrayServiceHandlers = {
      CreateVolume: this.unary('CreateVolume', (req) => this.createVolume(req)),
      ListVolumes: this.unary('ListVolumes', () => ({ volumes: this.array.listVolumes().map(volumeToWire) })),
      GetVolume: this.unary('GetVolume', (req) => volumeToWire(this.array.getVolume(req.name))),
      ResizeVolume: this.unary('ResizeVolume', (req) => this.resizeVolume(req)),
      DeleteVolume: this.unary('DeleteVolume', async (req) => {
        await this.array.deleteVolume(req.name);
        return {};
      }),
      UpdateVolume: this.unary('UpdateVolume', (req) => this.updateVolume(req)),
      RenameVolume: this.unary('RenameVolume', async (req) =>
        volumeToWire(await this.array.renameVolume(req.name, req.newName, { newIdentity: req.newIdentity })),
      ),
      ListExports: this.unary('ListExports', () => ({ exports: this.listExports().map(exportToWire) })),
      GetStatus: this.unary('GetStatus', () => statusToWire(this.status())),
    };
    addService(this.server, arrayServiceDefinition(), arrayHandlers);
    if (opts.hosts) {
      addService(
        this.server,
        hostAffinityServiceDefinition(),
        hostAffinityHandlers(opts.hosts, this.sessions, (method, fn) => this.unary(method, fn)),
      );
    }
    // tape: TapeService (emulator/api/tapeService.ts)
    if (opts.tape) {
      addService(
        this.server,
        tapeServiceDefinition(),
        tapeHandlers(opts.tape, {
          unary: (method, fn) => this.unary(method, fn),
          draining: () => this.draining,
          logger: this.log,
          apiFault: (method) => (this.faults === undefined || this.faults.count === 0 ? Promise.resolve() : this.faults.apiFault(method)), // api faults on the tape streams
        }),
      );
    }
    if (opts.faults) {
      addService(
        this.server,
        faultServiceDefinition(),
        faultHandlers(opts.faults, opts.power, {
          unary: (method, fn) => this.unary(method, fn),
          draining: () => this.draining,
          track: (stop) => {
            this.watches.add(stop);
            return () => this.watches.delete(stop);
          },
        }),
      );
    }
    if (opts.remote) {
      const unary = <Req, Res>(method: string, fn: (req: Req) => Res | Promise<Res>) => this.unary(method, fn);
      addService(this.server, remoteServiceDefinition(), remoteHandlers(opts.remote, unary));
      addService(this.server, remoteCopyServiceDefinition(), remoteCopyHandlers(opts.remote, unary));
    }
    // Always served, so every role's access to it is the same whether the stream is on or off.
    if (opts.events && opts.access) stampTenants(opts.events, opts.access.control, opts.access.dir);
    addService(
      this.server,
      eventServiceDefinition(),
      eventHandlers(opts.events, {
        unary: (method, fn) => this.unary(method, fn),
        draining: () => this.draining,
        track: (stop) => {
          this.watches.add(stop);
          return () => this.watches.delete(stop);
        },
        access: opts.access,
        volumeExists: (name) => {
          try {
            this.array.getVolume(name);
            return true;
          } catch {
            return false;
          }
        },
      }),
    );
    const copy = opts.copy;
    if (copy) {
      const copyHandlers: pb.CopyServiceHandlers = {
        StartCopy: this.unary('StartCopy', async (req) => copySessionToWire(await copy.startCopy(startFromWire(req)))),
        ListCopies: this.unary('ListCopies', (req) => {
          const sessions = copy.listCopies();
          const live = new Set(sessions.map((s) => s.id));
          const ended = (req.endedIds ?? []).filter((id) => !live.has(id)).map((id) => ({ id, how: copy.copyEndedAs?.(id) ?? 'unknown' }));
          return { sessions: sessions.map(copySessionToWire), ended };
        }),
        GetCopy: this.unary('GetCopy', (req) => copySessionToWire(copy.getCopy(req.id))),
        GetCopyBitmap: this.unary('GetCopyBitmap', (req) => {
          if (copy.copyBitmap === undefined) throw new StatusError('UNIMPLEMENTED', 'this array cannot show copy bitmaps');
          return copyBitmapToWire(copy.copyBitmap(req.id, req.maxCells));
        }),
        SuspendCopy: this.unary('SuspendCopy', async (req) => copySessionToWire(await copy.suspendCopy(req.id))),
        ResumeCopy: this.unary('ResumeCopy', async (req) => copySessionToWire(await copy.resumeCopy(req.id, { force: req.force }))),
        ReverseCopy: this.unary('ReverseCopy', async (req) => copySessionToWire(await copy.reverseCopy(req.id, { force: req.force }))),
        SplitCopy: this.unary('SplitCopy', async (req) => copySessionToWire(await copy.splitCopy(req.id, req.newName ? { newName: req.newName } : {}))),
        RestoreFromClone: this.unary('RestoreFromClone', async (req) => copySessionToWire(await copy.restoreFromClone(req.id, { force: req.force }))),
        StartCopyGroup: this.unary('StartCopyGroup', async (req) => ({
          sessions: (await copy.startCopyGroup(req.group, req.pairs.map(startFromWire))).map(copySessionToWire),
        })),
        SuspendCopyGroup: this.unary('SuspendCopyGroup', async (req) => ({
          sessions: (await copy.cutCopyGroup('suspend', groupSelection(req))).map(copySessionToWire),
        })),
        SplitCopyGroup: this.unary('SplitCopyGroup', async (req) => ({
          sessions: (await copy.cutCopyGroup('split', groupSelection(req))).map(copySessionToWire),
        })),
        CancelCopy: this.unary('CancelCopy', async (req) => {
          await copy.cancelCopy(req.id, { force: req.force });
          return {};
        }),
        SetCopyRate: this.unary('SetCopyRate', async (req) => copySessionToWire(await copy.setCopyRate(req.id, rateFromWire(req.rateMibS)))),
        SetCopyMode: this.unary('SetCopyMode', async (req) => {
          if (copy.setCopyMode === undefined) throw new StatusError('UNIMPLEMENTED', 'this array has no remote copy');
          return copySessionToWire(await copy.setCopyMode(req.id, req.mode));
        }),
        WatchCopies: (call) => this.watchCopies(copy, call),
      };
      addService(this.server, copyServiceDefinition(), copyHandlers);
    }
  }

  /** WatchCopies: a snapshot, then engine events and periodic progress, until the client leaves. */
  private watchCopies(copy: CopyControl, call: grpc.ServerWritableStream<pb.WatchCopiesRequest__Output, pb.CopyEvent>): void {
    if (this.draining) {
      call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'the arraylab server is shutting down; retry when it is back' });
      return;
    }
    const only = call.request.id;
    const interval = Math.max(50, call.request.progressIntervalMs || 1000);
    // A tenant's user watches only sessions between its volumes (ApiGuard checked an id given).
    const principal = principalOf(call.metadata);
    const scope = principal !== undefined && principal.tenant !== '' && this.access ? new Scope(principal, this.access.control, this.access.dir) : undefined;
    const wanted = (id: string) => (only === '' || only === id) && (scope === undefined || scope.ownsSession(id));
    const current = (id: string): SessionInfo | undefined => copy.listCopies().find((s) => s.id === id);
    const send = (e: pb.CopyEvent) => {
      if (!call.writableEnded && !call.cancelled) call.write(e);
    };
    const lastCopied = new Map<string, number>();
    const snapshot = copy.listCopies().filter((s) => wanted(s.id));
    const now = () => new Date().toISOString();
    if (only !== '' && snapshot.length === 0) {
      // A short copy may end before its watcher connects (copy start, then copy watch): say how
      // it ended, as the event the watcher waited for, rather than that it does not exist.
      const how = wanted(only) ? copy.copyEndedAs?.(only) : undefined;
      if (how === undefined) {
        call.emit('error', { code: grpc.status.NOT_FOUND, details: `no copy session ${only}; list sessions to see their ids` });
        return;
      }
      send({
        at: now(),
        sessionId: only,
        kind: how,
        state: copyStateToWire(''),
        message: `session ${only} had already ${how === 'dropped' ? 'been dropped' : how} when this watch began`,
        session: null,
      });
      call.end();
      return;
    }
    for (const s of snapshot) {
      lastCopied.set(s.id, s.copiedBlocks);
      send({
        at: now(),
        sessionId: s.id,
        kind: 'snapshot',
        state: copyStateToWire(s.state),
        message: `${s.type} ${s.source} -> ${s.destination} ${s.state}`,
        session: copySessionToWire(s),
      });
    }
    const off = copy.onCopyEvent((e) => {
      if (!wanted(e.sessionId)) return;
      const s = current(e.sessionId);
      if (s) lastCopied.set(s.id, s.copiedBlocks);
      else lastCopied.delete(e.sessionId);
      send({
        at: e.at,
        sessionId: e.sessionId,
        kind: e.kind,
        state: copyStateToWire(s?.state ?? ''),
        message: e.message,
        session: s ? copySessionToWire(s) : null,
      });
    });
    const timer = setInterval(() => {
      for (const s of copy.listCopies()) {
        if (!wanted(s.id) || s.state !== 'copying' || lastCopied.get(s.id) === s.copiedBlocks) continue;
        lastCopied.set(s.id, s.copiedBlocks);
        send({
          at: now(),
          sessionId: s.id,
          kind: 'progress',
          state: copyStateToWire(s.state),
          message: `${s.copiedBlocks}/${s.totalBlocks} units copied`,
          session: copySessionToWire(s),
        });
      }
    }, interval);
    const stop = () => {
      clearInterval(timer);
      off();
      this.watches.delete(stop);
      if (!call.writableEnded) call.end();
    };
    this.watches.add(stop);
    call.on('cancelled', stop);
    call.on('error', stop);
    call.on('close', stop);
  }

  /** Binds and starts serving; returns the bound address (the real port when asked for port 0). */
  listen(address: HostPort = DEFAULT_API_ADDRESS): Promise<HostPort> {
    const target = formatHostPort(address);
    if (!isLoopback(address.host) && (this.tls === undefined || !this.authenticated)) {
      const missing = [
        this.tls === undefined ? 'TLS (api.tls.cert and api.tls.key, or --api-tls-cert and --api-tls-key)' : '',
        this.authenticated ? '' : 'authentication (api.auth: on)',
      ]
        .filter((m) => m !== '')
        .join(' and ');
      return Promise.reject(
        new Error(`refusing to serve the control API on ${target} without ${missing}: other machines could reach it; enable them, or listen on 127.0.0.1`),
      );
    }
    const credentials = this.tls
      ? grpc.ServerCredentials.createSsl(this.tls.ca ?? null, [{ cert_chain: this.tls.cert, private_key: this.tls.key }], this.tls.ca !== undefined)
      : grpc.ServerCredentials.createInsecure();
    return new Promise((resolve, reject) => {
      this.server.bindAsync(target, credentials, (err, port) => {
        if (err) {
          const inUse = /EADDRINUSE|address already in use/i.test(err.message);
          const reason = inUse ? 'the address is in use (is another arraylab running?)' : err.message;
          reject(
            new Error(`cannot listen for the control API on ${target}: ${reason}; use --api HOST:PORT or listen.api in the config to pick another address`),
          );
          return;
        }
        this.listening = true;
        this.log.info(
          {
            address: formatHostPort({ host: address.host, port }),
            tls: this.tls ? (this.tls.ca ? 'mutual' : 'on') : 'off',
            auth: this.authenticated ? 'on' : 'off',
          },
          'control API listening',
        );
        resolve({ host: address.host, port });
      });
    });
  }

  /** Refuses new calls with UNAVAILABLE from now on; calls in progress complete. */
  drain(): void {
    this.draining = true;
    for (const stop of [...this.watches]) stop();
  }

  /** Stops serving: waits briefly for calls in progress, then cancels them. */
  async close(graceMs = 2000): Promise<void> {
    this.drain();
    if (!this.listening) {
      this.server.forceShutdown();
      return;
    }
    this.listening = false;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** One export per volume, with the clients connected to it. */
  listExports(): ExportInfo[] {
    const connections = this.array.listConnections();
    return this.array.listVolumes().map((v) => ({
      name: v.name,
      description: v.description,
      sizeBytes: v.sizeBytes,
      blockSize: v.blockSize,
      readOnly: v.readOnly,
      connections: connections
        .filter((c) => c.volume === v.name)
        .map((c) => ({
          connectionId: c.client.connectionId,
          protocol: c.client.protocol,
          remoteAddress: c.client.remoteAddress,
          initiator: c.client.initiator ?? '',
          readOnly: c.client.readOnly,
          openedAt: c.openedAt,
        })),
    }));
  }

  status(): ArrayStatus {
    const { iscsiTargetName, arrayId, ...server } = this.serverStatus();
    const volumes = this.array.listVolumes();
    return {
      ...server,
      iscsiTargetName: iscsiTargetName ?? '',
      arrayId: arrayId ?? '',
      iscsiSessionCount: this.sessions().length,
      uptimeSeconds: Math.max(0, (Date.now() - Date.parse(server.startedAt)) / 1000),
      volumeCount: volumes.length,
      totalBytes: volumes.reduce((sum, v) => sum + v.sizeBytes, 0),
      allocatedBytes: volumes.reduce((sum, v) => sum + v.allocatedBytes, 0),
      connectionCount: this.array.listConnections().length,
      pid: process.pid,
    };
  }

  private async createVolume(req: pb.CreateVolumeRequest__Output) {
    if (req.blockSize !== 0 && req.blockSize !== 512 && req.blockSize !== 4096) {
      throw new ArrayError('INVALID_ARGUMENT', `block size ${req.blockSize} is not supported; use 512 or 4096`);
    }
    const volume = await this.array.createVolume({
      name: req.name,
      sizeBytes: toByteCount(req.sizeBytes, 'size'),
      blockSize: (req.blockSize || 512) as LogicalBlockSize,
      provisioning: provisioningFromWire(req.provisioning) ?? 'thin',
      readOnly: req.readOnly,
      description: req.description,
      allocLimitBytes: req.allocLimitBytes === undefined || req.allocLimitBytes === null ? null : toByteCount(req.allocLimitBytes, 'alloc_limit_bytes'),
      ...(req.writeCache !== '' ? { writeCache: req.writeCache as WriteCacheMode } : {}),
    });
    return volumeToWire(volume);
  }

  private async updateVolume(req: pb.UpdateVolumeRequest__Output) {
    let v: VolumeInfo | undefined;
    if (req.allocLimit === 'allocLimitBytes') {
      v = await this.array.setVolumeAllocLimit(req.name, toByteCount(req.allocLimitBytes, 'alloc_limit_bytes'));
    } else if (req.allocLimit === 'noAllocLimit' && req.noAllocLimit) v = await this.array.setVolumeAllocLimit(req.name, null);
    if (req.writeCache !== '') {
      if (this.array.setVolumeWriteCache === undefined) throw new StatusError('UNIMPLEMENTED', 'this array has no volatile write cache');
      v = await this.array.setVolumeWriteCache(req.name, req.writeCache as WriteCacheMode);
    }
    // Nothing to change: answer with the volume as it is (NOT_FOUND if there is none).
    return volumeToWire(v ?? this.array.getVolume(req.name));
  }

  private async resizeVolume(req: pb.ResizeVolumeRequest__Output) {
    let newSize: number;
    if (req.size === 'growByBytes') {
      const current = this.array.getVolume(req.name).sizeBytes;
      newSize = current + toByteCount(req.growByBytes, 'grow by');
      toByteCount(newSize, 'new size');
    } else if (req.size === 'sizeBytes') {
      newSize = toByteCount(req.sizeBytes, 'size');
    } else {
      throw new ArrayError('INVALID_ARGUMENT', `resize of volume ${req.name} gives no size; set size_bytes or grow_by_bytes`);
    }
    return volumeToWire(await this.array.resizeVolume(req.name, newSize));
  }

  /**
   * Wraps a handler: refusal while draining, error mapping, logging. Who may call it was
   * decided before, by ApiGuard (emulator/auth), which every call passes.
   */
  private unary<Req, Res>(method: string, fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Res | Promise<Res>): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      if (this.draining) {
        callback({ code: grpc.status.UNAVAILABLE, details: 'the arraylab server is shutting down; retry when it is back' });
        return;
      }
      const started = process.hrtime.bigint();
      const faults = this.faults;
      (faults === undefined || faults.count === 0 ? Promise.resolve() : faults.apiFault(method))
        .then(() => fn(call.request, call))
        .then(
          (response) => {
            this.log.debug({ method, ms: elapsedMs(started) }, 'api call');
            callback(null, response);
          },
          (err: unknown) => {
            if (err instanceof StatusError) {
              this.log.debug({ method, code: err.code, err: err.message }, 'api call refused');
              callback({ code: grpcStatusOf(err.code), details: err.message });
            } else {
              this.log.error({ method, err }, 'api call failed unexpectedly');
              const message = err instanceof Error ? err.message : String(err);
              callback({ code: grpc.status.INTERNAL, details: `internal error in ${method}: ${message}; see the server log` });
            }
          },
        );
    };
  }
}

function startFromWire(req: pb.StartCopyRequest__Output): StartCopyRequest {
  const type = copyTypeFromWire(req.type);
  if (type === '') {
    throw new ArrayError('INVALID_ARGUMENT', `unknown copy type ${JSON.stringify(req.type)}: use opc, quickopc, snapopcplus, ec or rec`);
  }
  return {
    type,
    source: req.source,
    destination: req.destination,
    rate: rateFromWire(req.rateMibS),
    ...(req.group ? { group: req.group } : {}),
    force: req.force,
    ...(req.refuseIfFull ? { refuseIfFull: true } : {}),
    ...(req.mode ? { mode: req.mode } : {}),
    ...(req.split ? { split: req.split } : {}),
    ...(req.recovery ? { recovery: req.recovery } : {}),
  };
}

function groupSelection(req: { group: string; ids: string[] }): { ids: string[]; group?: string } {
  return { ids: req.ids ?? [], ...(req.group ? { group: req.group } : {}) };
}

function elapsedMs(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e6;
}

/** Loopback addresses: only this machine reaches them. */
export function isLoopback(host: string): boolean {
  return isLoopbackHost(host);
}
