/**
 * The control API: arraylab.v1.ArrayService over gRPC, in front of a StorageArray.
 *
 * Array errors keep their message and map one-to-one onto gRPC status codes; anything else is
 * a bug, logged with its stack and returned as INTERNAL. While the server shuts down, new calls
 * get UNAVAILABLE so nothing changes the array as it is being flushed and closed.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { ArrayError, type ArrayErrorCode, type ConnectionInfo, type CreateVolumeRequest, type LogicalBlockSize, type VolumeInfo } from '../array/types.js';
import { DEFAULT_API_ADDRESS, formatHostPort, type HostPort } from './address.js';
import type { ArrayStatus, ExportInfo } from './model.js';
import { arrayServiceDefinition } from './proto.js';
import {
  exportToWire,
  provisioningFromWire,
  statusToWire,
  toByteCount,
  volumeToWire,
  type WireCreateVolumeRequest,
  type WireResizeVolumeRequest,
} from './wire.js';

export { DEFAULT_API_ADDRESS };

/** What the API needs of the array; StorageArray provides it. */
export interface ArrayControl {
  createVolume(req: CreateVolumeRequest): Promise<VolumeInfo>;
  listVolumes(): VolumeInfo[];
  getVolume(name: string): VolumeInfo;
  resizeVolume(name: string, newSizeBytes: number): Promise<VolumeInfo>;
  deleteVolume(name: string): Promise<void>;
  listConnections(): ConnectionInfo[];
}

/** The server-wide part of the status, which the array does not know. */
export type ServerStatus = Pick<ArrayStatus, 'version' | 'startedAt' | 'dataDir' | 'backend' | 'listeners'>;

export interface ArrayApiServerOptions {
  array: ArrayControl;
  status: () => ServerStatus;
  logger: Logger;
}

const GRPC_CODE: Record<ArrayErrorCode, grpc.status> = {
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  RESOURCE_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  INTERNAL: grpc.status.INTERNAL,
};

export class ArrayApiServer {
  private readonly server = new grpc.Server();
  private readonly array: ArrayControl;
  private readonly serverStatus: () => ServerStatus;
  private readonly log: Logger;
  private draining = false;
  private listening = false;

  constructor(opts: ArrayApiServerOptions) {
    this.array = opts.array;
    this.serverStatus = opts.status;
    this.log = opts.logger.child({ component: 'api' });
    this.server.addService(arrayServiceDefinition(), {
      CreateVolume: this.unary('CreateVolume', (req: WireCreateVolumeRequest) => this.createVolume(req)),
      ListVolumes: this.unary('ListVolumes', () => ({ volumes: this.array.listVolumes().map(volumeToWire) })),
      GetVolume: this.unary('GetVolume', (req: { name: string }) => volumeToWire(this.array.getVolume(req.name))),
      ResizeVolume: this.unary('ResizeVolume', (req: WireResizeVolumeRequest) => this.resizeVolume(req)),
      DeleteVolume: this.unary('DeleteVolume', async (req: { name: string }) => {
        await this.array.deleteVolume(req.name);
        return {};
      }),
      ListExports: this.unary('ListExports', () => ({ exports: this.listExports().map(exportToWire) })),
      GetStatus: this.unary('GetStatus', () => statusToWire(this.status())),
    });
  }

  /** Binds and starts serving; returns the bound address (the real port when asked for port 0). */
  listen(address: HostPort = DEFAULT_API_ADDRESS): Promise<HostPort> {
    const target = formatHostPort(address);
    return new Promise((resolve, reject) => {
      this.server.bindAsync(target, grpc.ServerCredentials.createInsecure(), (err, port) => {
        if (err) {
          const inUse = /EADDRINUSE|address already in use/i.test(err.message);
          const reason = inUse ? 'the address is in use (is another arraylab running?)' : err.message;
          reject(new Error(`cannot listen for the control API on ${target}: ${reason}; use --api HOST:PORT or listen.api in the config to pick another address`));
          return;
        }
        this.listening = true;
        this.log.info({ address: formatHostPort({ host: address.host, port }) }, 'control API listening');
        resolve({ host: address.host, port });
      });
    });
  }

  /** Refuses new calls with UNAVAILABLE from now on; calls in progress complete. */
  drain(): void {
    this.draining = true;
  }

  /** Stops serving: waits briefly for calls in progress, then cancels them. */
  async close(graceMs = 2000): Promise<void> {
    this.draining = true;
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
    const server = this.serverStatus();
    const volumes = this.array.listVolumes();
    return {
      ...server,
      uptimeSeconds: Math.max(0, (Date.now() - Date.parse(server.startedAt)) / 1000),
      volumeCount: volumes.length,
      totalBytes: volumes.reduce((sum, v) => sum + v.sizeBytes, 0),
      allocatedBytes: volumes.reduce((sum, v) => sum + v.allocatedBytes, 0),
      connectionCount: this.array.listConnections().length,
      pid: process.pid,
    };
  }

  private async createVolume(req: WireCreateVolumeRequest) {
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
    });
    return volumeToWire(volume);
  }

  private async resizeVolume(req: WireResizeVolumeRequest) {
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
   * Wraps a handler: refusal while draining, error mapping, logging. Every call passes here, so
   * this is where the role check will go (from call.metadata's authorization) when the API gets one.
   */
  private unary<Req, Res>(method: string, fn: (req: Req) => Res | Promise<Res>): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      if (this.draining) {
        callback({ code: grpc.status.UNAVAILABLE, details: 'the arraylab server is shutting down; retry when it is back' });
        return;
      }
      const started = process.hrtime.bigint();
      Promise.resolve()
        .then(() => fn(call.request))
        .then(
          (response) => {
            this.log.debug({ method, ms: elapsedMs(started) }, 'api call');
            callback(null, response);
          },
          (err: unknown) => {
            if (err instanceof ArrayError) {
              this.log.debug({ method, code: err.code, err: err.message }, 'api call refused');
              callback({ code: GRPC_CODE[err.code] ?? grpc.status.INTERNAL, details: err.message });
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

function elapsedMs(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e6;
}
