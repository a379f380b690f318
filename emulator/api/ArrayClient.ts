/**
 * A typed promise client for arraylab.v1.ArrayService, used by the CLI and by tests.
 *
 * Every call has a deadline, and failures become ApiError with a message fit to show as is:
 * the server's own message for array errors, and for an unreachable server, where it looked
 * and how to point it elsewhere.
 */
import * as grpc from '@grpc/grpc-js';
import type { ArrayErrorCode, CreateVolumeRequest, VolumeInfo } from '../array/types.js';
import type { SizeChange } from '../units.js';
import { formatHostPort, parseHostPort, type HostPort } from './address.js';
import { ApiError } from './errors.js';
import type { ArrayStatus, ExportInfo } from './model.js';
import { arrayServiceClientConstructor } from './proto.js';
import {
  exportFromWire,
  provisioningToWire,
  statusFromWire,
  volumeFromWire,
  type WireCreateVolumeRequest,
  type WireExport,
  type WireResizeVolumeRequest,
  type WireStatus,
  type WireVolume,
} from './wire.js';

export { ApiError, type ApiErrorCode } from './errors.js';

export interface ArrayClientOptions {
  /** Per-call deadline; default 10 s. */
  deadlineMs?: number;
  /** Sent with every call, e.g. {authorization: 'Bearer ...'} once the API checks roles. */
  metadata?: Record<string, string>;
}

export const DEFAULT_DEADLINE_MS = 10_000;

const ARRAY_CODES: Partial<Record<grpc.status, ArrayErrorCode>> = {
  [grpc.status.NOT_FOUND]: 'NOT_FOUND',
  [grpc.status.ALREADY_EXISTS]: 'ALREADY_EXISTS',
  [grpc.status.INVALID_ARGUMENT]: 'INVALID_ARGUMENT',
  [grpc.status.FAILED_PRECONDITION]: 'FAILED_PRECONDITION',
  [grpc.status.RESOURCE_EXHAUSTED]: 'RESOURCE_EXHAUSTED',
  [grpc.status.INTERNAL]: 'INTERNAL',
};

type Unary = (req: unknown, metadata: grpc.Metadata, options: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

export class ArrayClient {
  readonly address: string;
  private readonly client: grpc.Client;
  private readonly deadlineMs: number;
  private readonly metadata: Record<string, string>;

  constructor(address: HostPort | string, opts: ArrayClientOptions = {}) {
    this.address = typeof address === 'string' ? formatHostPort(parseHostPort(address)) : formatHostPort(address);
    const Client = arrayServiceClientConstructor();
    // No retries or reconnect back-off hidden behind a call: a CLI wants a prompt answer.
    this.client = new Client(this.address, grpc.credentials.createInsecure(), {
      'grpc.enable_retries': 0,
      'grpc.initial_reconnect_backoff_ms': 100,
    });
    this.deadlineMs = opts.deadlineMs ?? DEFAULT_DEADLINE_MS;
    this.metadata = opts.metadata ?? {};
  }

  async createVolume(req: CreateVolumeRequest): Promise<VolumeInfo> {
    const wire: WireCreateVolumeRequest = {
      name: req.name,
      sizeBytes: req.sizeBytes,
      blockSize: req.blockSize ?? 512,
      provisioning: provisioningToWire(req.provisioning ?? 'thin'),
      readOnly: req.readOnly ?? false,
      description: req.description ?? '',
    };
    return volumeFromWire(await this.call<WireVolume>('CreateVolume', wire));
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    const res = await this.call<{ volumes: WireVolume[] }>('ListVolumes', {});
    return res.volumes.map(volumeFromWire);
  }

  async getVolume(name: string): Promise<VolumeInfo> {
    return volumeFromWire(await this.call<WireVolume>('GetVolume', { name }));
  }

  /** Resizes to a size in bytes, or by a SizeChange ({kind: 'grow'} grows by that much). */
  async resizeVolume(name: string, size: number | SizeChange): Promise<VolumeInfo> {
    const change: SizeChange = typeof size === 'number' ? { kind: 'absolute', bytes: size } : size;
    const req: WireResizeVolumeRequest = change.kind === 'grow' ? { name, growByBytes: change.bytes } : { name, sizeBytes: change.bytes };
    return volumeFromWire(await this.call<WireVolume>('ResizeVolume', req));
  }

  async deleteVolume(name: string): Promise<void> {
    await this.call('DeleteVolume', { name });
  }

  async listExports(): Promise<ExportInfo[]> {
    const res = await this.call<{ exports: WireExport[] }>('ListExports', {});
    return res.exports.map(exportFromWire);
  }

  async getStatus(): Promise<ArrayStatus> {
    return statusFromWire(await this.call<WireStatus>('GetStatus', {}));
  }

  close(): void {
    this.client.close();
  }

  private call<Res>(method: string, req: unknown): Promise<Res> {
    const fn = (this.client as unknown as Record<string, Unary>)[method]!;
    const metadata = new grpc.Metadata();
    for (const [key, value] of Object.entries(this.metadata)) metadata.set(key, value);
    return new Promise((resolve, reject) => {
      fn.call(this.client, req, metadata, { deadline: Date.now() + this.deadlineMs }, (err, res) => {
        if (err) reject(this.toApiError(err));
        else resolve(res as Res);
      });
    });
  }

  private toApiError(err: grpc.ServiceError): ApiError {
    const arrayCode = ARRAY_CODES[err.code];
    if (arrayCode) return new ApiError(arrayCode, err.details);
    const hint = 'is `arraylab serve` running? (set --api or ARRAYLAB_API)';
    if (err.code === grpc.status.UNAVAILABLE) {
      if (/shutting down/.test(err.details)) return new ApiError('UNAVAILABLE', err.details);
      return new ApiError('UNAVAILABLE', `cannot reach the arraylab API at ${this.address}: ${describeUnreachable(err.details)}; ${hint}`);
    }
    if (err.code === grpc.status.DEADLINE_EXCEEDED) {
      return new ApiError('DEADLINE_EXCEEDED', `the arraylab API at ${this.address} did not answer within ${this.deadlineMs / 1000} s; ${hint}`);
    }
    return new ApiError('UNKNOWN', `the arraylab API at ${this.address} failed: ${grpc.status[err.code] ?? err.code}: ${err.details}`);
  }
}

/** grpc-js's UNAVAILABLE details carry the socket error; turn the common ones into words. */
function describeUnreachable(details: string): string {
  if (/ECONNREFUSED/.test(details)) return 'connection refused';
  if (/ENOTFOUND|EAI_AGAIN|Name resolution failed|DNS resolution failed/i.test(details)) return 'host not found';
  if (/EHOSTUNREACH|ENETUNREACH/.test(details)) return 'host unreachable';
  if (/ETIMEDOUT/.test(details)) return 'connection timed out';
  if (/ECONNRESET|Connection dropped|socket hang up/i.test(details)) return 'the connection was reset (is something other than arraylab listening there?)';
  return details;
}
