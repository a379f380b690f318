/**
 * AgentCore over gRPC: the CLI with --agent HOST:PORT, and lab tools, drive a remote agent with
 * the same calls as a local one. Failures become AgentError with the agent's own message.
 */
import * as grpc from '@grpc/grpc-js';
import { formatHostPort, parseHostPort } from '../../proto/util/address.js';
import {
  AgentError,
  type AgentCore,
  type AgentErrorCode,
  type AgentStatus,
  type BackupOptions,
  type BackupReport,
  type BackupVolumeRecord,
  type DeviceMapping,
  type DoctorCheck,
  type HistoryEntry,
  type ProgressEvent,
  type RegisteredTransaction,
  type RegisterTransactionOptions,
  type StartSyncOptions,
  type ResourceMatchReport,
  type RestoreOptions,
  type RestoreReport,
  type SyncView,
} from '../types.js';
import { agentServiceClientConstructor } from '../../proto/loader.js';
import { statusCodeOf } from '../../proto/errors.js';

/** The codes an AgentError may carry; other statuses are described below. */
const AGENT_CODES = [
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'INVALID_ARGUMENT',
  'FAILED_PRECONDITION',
  'RESOURCE_EXHAUSTED',
  'ABORTED',
  'DATA_LOSS',
  'INTERNAL',
] as const;
import type * as pb from '../../proto/gen/index.js';
import { openStream, unaryCall, type RequestOf, type ResponseOf, type StreamMethod, type StreamRequestOf, type UnaryMethod } from '../../proto/rpc.js';
import {
  backupReportFromWire,
  backupVolumeFromWire,
  deviceFromWire,
  doctorCheckFromWire,
  historyFromWire,
  progressFromWire,
  restoreReportFromWire,
  statusFromWire,
  syncFromWire,
  transactionFromWire,
} from './wire.js';

export interface AgentClientOptions {
  token: string;
  /** PEM of the CA that signed the agent's certificate: use TLS. */
  tlsCa?: Buffer;
  /** Unary calls; default 30 s. Streams (backup, restore, start-sync) have none. */
  deadlineMs?: number;
}

export class AgentClient implements AgentCore {
  readonly address: string;
  private readonly client: pb.AgentServiceClient;
  private readonly opts: AgentClientOptions;

  constructor(address: string, opts: AgentClientOptions) {
    // unix:/PATH is grpc's own name for a Unix socket; anything else is HOST:PORT.
    this.address = address.startsWith('unix:') ? address : formatHostPort(parseHostPort(address));
    this.opts = opts;
    const Client = agentServiceClientConstructor();
    const creds = opts.tlsCa ? grpc.credentials.createSsl(opts.tlsCa) : grpc.credentials.createInsecure();
    this.client = new Client(this.address, creds, { 'grpc.enable_retries': 0, 'grpc.initial_reconnect_backoff_ms': 100 });
  }

  async registerTransaction(volume: string, o: RegisterTransactionOptions = {}): Promise<RegisteredTransaction> {
    const res = await this.unary('RegisterTransaction', {
      volume,
      lock: o.lock ?? '',
      generations: o.generations ?? 0,
      ...(o.flushOnly !== undefined ? { flushOnly: o.flushOnly } : {}),
      defaultType: o.defaultType ?? '',
      ...(o.resyncAfterBackup !== undefined ? { resyncAfterBackup: o.resyncAfterBackup } : {}),
    });
    return transactionFromWire(res);
  }

  async registerBackup(volume: string): Promise<BackupVolumeRecord> {
    return backupVolumeFromWire(await this.unary('RegisterBackup', { volume }));
  }

  async unregister(volume: string, o: { force?: boolean } = {}): Promise<void> {
    await this.unary('Unregister', { volume, force: o.force ?? false });
  }

  async backup(volumes: string[], o: BackupOptions = {}): Promise<BackupReport> {
    const last = await this.stream(
      'Backup',
      {
        volumes,
        type: o.type ?? '',
        flushOnly: o.flushOnly ?? false,
        to: o.to ?? '',
        cartridge: o.cartridge ?? '',
        completeAfter: o.completeAfter ?? '',
        ...(o.resync !== undefined ? { resync: o.resync } : {}),
        waitEquivalentSeconds: o.waitEquivalentSeconds ?? 0,
      },
      o.onProgress,
    );
    if (!last.backup) throw this.noResult('Backup');
    return backupReportFromWire(last.backup);
  }

  async startSync(volume: string, o: StartSyncOptions = {}): Promise<SyncView> {
    const last = await this.stream(
      'StartSync',
      { volume, full: o.full ?? false, wait: o.wait ?? false, ...(o.rateMiBs !== undefined ? { rateMibS: o.rateMiBs } : {}) },
      o.onProgress,
    );
    if (!last.sync) throw this.noResult('StartSync');
    return syncFromWire(last.sync);
  }

  async cancelSync(volume: string): Promise<void> {
    await this.unary('CancelSync', { volume });
  }

  async restore(volume: string, o: RestoreOptions = {}): Promise<RestoreReport> {
    const last = await this.stream(
      'Restore',
      { volume, generation: o.generation ?? 0, to: o.to ?? '', fromTape: o.fromTape ?? false, force: o.force ?? false },
      o.onProgress,
    );
    if (!last.restore) throw this.noResult('Restore');
    return restoreReportFromWire(last.restore);
  }

  async history(volume?: string): Promise<HistoryEntry[]> {
    const res = await this.unary('History', { volume: volume ?? '' });
    return res.entries.map(historyFromWire);
  }

  async status(): Promise<AgentStatus> {
    return statusFromWire(await this.unary('Status', {}));
  }

  async devices(): Promise<DeviceMapping[]> {
    return (await this.unary('Devices', {})).devices.map(deviceFromWire);
  }

  async resourceMatch(): Promise<ResourceMatchReport> {
    const r = await this.unary('ResourceMatch', {});
    return { repaired: [...r.repaired], remaining: [...r.remaining] };
  }

  async doctor(): Promise<DoctorCheck[]> {
    return (await this.unary('Doctor', {})).checks.map(doctorCheckFromWire);
  }

  async close(): Promise<void> {
    this.client.close();
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${this.opts.token}`);
    return md;
  }

  private unary<K extends UnaryMethod<pb.AgentServiceClient>>(
    method: K,
    req: RequestOf<pb.AgentServiceClient, K>,
  ): Promise<ResponseOf<pb.AgentServiceClient, K>> {
    return unaryCall(this.client, method, req, this.metadata(), { deadline: Date.now() + (this.opts.deadlineMs ?? 30_000) }).catch((err: grpc.ServiceError) => {
      throw this.toError(err);
    });
  }

  /** Resolves with the stream's last message (the result); progress messages go to onProgress. */
  private stream<K extends StreamMethod<pb.AgentServiceClient>>(
    method: K,
    req: StreamRequestOf<pb.AgentServiceClient, K>,
    onProgress?: (p: ProgressEvent) => void,
  ): Promise<pb.AgentProgress__Output> {
    const call = openStream(this.client, method, req, this.metadata()) as grpc.ClientReadableStream<pb.AgentProgress__Output>;
    return new Promise((resolve, reject) => {
      let last: pb.AgentProgress__Output | undefined;
      call.on('data', (m: pb.AgentProgress__Output) => {
        if (m.progress) onProgress?.(progressFromWire(m.progress));
        else last = m;
      });
      call.on('error', (err: grpc.ServiceError) => reject(this.toError(err)));
      call.on('end', () => (last ? resolve(last) : reject(this.noResult(method))));
    });
  }

  private noResult(method: string): AgentError {
    return new AgentError('UNAVAILABLE', `the agent at ${this.address} ended ${method} without a result; see its log`);
  }

  private toError(err: grpc.ServiceError): AgentError {
    const code = statusCodeOf(err.code);
    if ((AGENT_CODES as readonly string[]).includes(code) && code !== 'UNAVAILABLE') return new AgentError(code as AgentErrorCode, err.details);
    if (err.code === grpc.status.UNAUTHENTICATED) return new AgentError('FAILED_PRECONDITION', `the agent at ${this.address} refused the call: ${err.details}`);
    if (err.code === grpc.status.UNAVAILABLE)
      return new AgentError(
        'UNAVAILABLE',
        `cannot reach the agent at ${this.address}: ${err.details}; is \`arraylab-agent serve\` running there? (set --agent or ARRAYLAB_AGENT)`,
      );
    if (err.code === grpc.status.DEADLINE_EXCEEDED) return new AgentError('UNAVAILABLE', `the agent at ${this.address} did not answer in time`);
    return new AgentError('INTERNAL', `the agent at ${this.address} failed: ${grpc.status[err.code] ?? err.code}: ${err.details}`);
  }
}
