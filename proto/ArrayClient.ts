/**
 * A typed promise client for arraylab.v1.ArrayService, CopyService and HostAffinityService,
 * used by the CLI and by tests.
 *
 * Every call has a deadline, and failures become ApiError with a message fit to show as is:
 * the server's own message for array errors, and for an unreachable server, where it looked
 * and how to point it elsewhere.
 */
import * as grpc from '@grpc/grpc-js';
import type { CreateVolumeRequest, HostLun, RenameVolumeOptions, VolumeInfo, WriteCacheMode } from './views.js';
import type { SizeChange } from './util/units.js';
import { formatHostPort, parseHostPort, type HostPort } from './util/address.js';
import { AUTHORIZATION, resolveCredential, type ResolvedCredential, type TlsFiles } from './auth/credentials.js';
import { ApiError, statusCodeOf } from './errors.js';
import type * as pb from './gen/index.js';
import { openStream, unaryCall, type RequestOf, type ResponseOf, type StreamMethod, type StreamRequestOf, type UnaryMethod } from './rpc.js';
import { hostFromWire, hostListFromWire, hostLunFromWire } from './wire/hostWire.js';
import type {
  ArrayEventView,
  ArrayStatus,
  CopyBitmapView,
  CopyEventView,
  CopySessionView,
  ExportInfo,
  HostListView,
  HostView,
  StartCopyParams,
} from './views.js';
import {
  arrayServiceClientConstructor,
  copyServiceClientConstructor,
  hostAffinityServiceClientConstructor,
  faultServiceClientConstructor,
  remoteCopyServiceClientConstructor,
  remoteServiceClientConstructor,
  tapeServiceClientConstructor,
  accessServiceClientConstructor,
  eventServiceClientConstructor,
  type ClientConstructor,
} from './loader.js';
import type { CartridgeView, HostProgress, TapeRecordView, TapeRestoreView } from './views.js';
import { cartridgeFromWire, tapeRecordFromWire, tapeRestoreFromWire } from './wire/tapeWire.js';
import { faultEventFromWire, faultFromWire, powerCutFromWire } from './wire/faultWire.js';
import { type EventQuery, eventFromWire, eventQueryToWire } from './wire/eventWire.js';
import type { AgentEventReport, AuditEntryView, FaultEventView, FaultView, PowerCutView, RemoteView, TenantView, UserView } from './views.js';
import {
  copyEventFromWire,
  copySessionFromWire,
  copyStateFromWire,
  copyTypeFromWire,
  copyTypeToWire,
  exportFromWire,
  provisioningToWire,
  remoteFromWire,
  statusFromWire,
  volumeFromWire,
} from './wire/wire.js';

export { ApiError, type ApiErrorCode } from './errors.js';

export interface ArrayClientOptions {
  /** Per-call deadline; default 10 s. */
  deadlineMs?: number;
  /** Sent with every call. */
  metadata?: Record<string, string>;
  /** The bearer token; absent: found as proto/auth/credentials.ts says (ARRAYLAB_TOKEN, the local link). */
  token?: string;
  /** A file holding the token (the CLI's --token-file). */
  tokenFile?: string;
  /** TLS to the API (CA, and a client certificate for mutual TLS); absent: ARRAYLAB_TLS_* or plaintext. */
  tls?: TlsFiles;
}

export const DEFAULT_DEADLINE_MS = 10_000;

export class ArrayClient {
  readonly address: string;
  private readonly client: pb.ArrayServiceClient;
  private copyStub: pb.CopyServiceClient | undefined;
  private hostStub: pb.HostAffinityServiceClient | undefined;
  private tapeStub: pb.TapeServiceClient | undefined;
  private faultStub: pb.FaultServiceClient | undefined;
  private remoteStub: pb.RemoteServiceClient | undefined;
  private remoteCopyStub: pb.RemoteCopyServiceClient | undefined;
  private accessStub: pb.AccessServiceClient | undefined;
  private eventStub: pb.EventServiceClient | undefined;
  private readonly deadlineMs: number;
  private readonly metadata: Record<string, string>;
  private readonly credential: ResolvedCredential;
  private readonly channelCredentials: grpc.ChannelCredentials;

  /** Throws ApiError UNAUTHENTICATED when a token or TLS file it was told to read cannot be read. */
  constructor(address: HostPort | string, opts: ArrayClientOptions = {}) {
    const hostPort = typeof address === 'string' ? parseHostPort(address) : address;
    this.address = formatHostPort(hostPort);
    try {
      this.credential = resolveCredential(hostPort, { token: opts.token, tokenFile: opts.tokenFile, tls: opts.tls });
    } catch (err) {
      throw new ApiError('UNAUTHENTICATED', (err as Error).message);
    }
    const tls = this.credential.tls;
    this.channelCredentials = tls ? grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null) : grpc.credentials.createInsecure();
    this.client = this.stub(arrayServiceClientConstructor);
    this.deadlineMs = opts.deadlineMs ?? DEFAULT_DEADLINE_MS;
    this.metadata = { ...opts.metadata };
    if (this.credential.token !== undefined) this.metadata[AUTHORIZATION] = `Bearer ${this.credential.token}`;
  }

  async createVolume(req: CreateVolumeRequest): Promise<VolumeInfo> {
    const wire: pb.CreateVolumeRequest = {
      name: req.name,
      sizeBytes: req.sizeBytes,
      blockSize: req.blockSize ?? 512,
      provisioning: provisioningToWire(req.provisioning ?? 'thin'),
      readOnly: req.readOnly ?? false,
      description: req.description ?? '',
      ...(req.allocLimitBytes !== undefined && req.allocLimitBytes !== null ? { allocLimitBytes: req.allocLimitBytes } : {}),
      ...(req.writeCache !== undefined ? { writeCache: req.writeCache } : {}),
    };
    return volumeFromWire(await this.call(this.client, 'CreateVolume', wire));
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    const res = await this.call(this.client, 'ListVolumes', {});
    return res.volumes.map(volumeFromWire);
  }

  async getVolume(name: string): Promise<VolumeInfo> {
    return volumeFromWire(await this.call(this.client, 'GetVolume', { name }));
  }

  /** Resizes to a size in bytes, or by a SizeChange ({kind: 'grow'} grows by that much). */
  async resizeVolume(name: string, size: number | SizeChange): Promise<VolumeInfo> {
    const change: SizeChange = typeof size === 'number' ? { kind: 'absolute', bytes: size } : size;
    const req: pb.ResizeVolumeRequest = change.kind === 'grow' ? { name, growByBytes: change.bytes } : { name, sizeBytes: change.bytes };
    return volumeFromWire(await this.call(this.client, 'ResizeVolume', req));
  }

  async deleteVolume(name: string): Promise<void> {
    await this.call(this.client, 'DeleteVolume', { name });
  }

  /** Sets a thin volume's allocation limit in bytes; null removes it. */
  async setVolumeAllocLimit(name: string, limitBytes: number | null): Promise<VolumeInfo> {
    const req: pb.UpdateVolumeRequest = limitBytes === null ? { name, noAllocLimit: true } : { name, allocLimitBytes: limitBytes };
    return volumeFromWire(await this.call(this.client, 'UpdateVolume', req));
  }

  /** Volatile write cache on, or off (write-through: the array destages and flushes it first). */
  async setVolumeWriteCache(name: string, mode: WriteCacheMode): Promise<VolumeInfo> {
    return volumeFromWire(await this.call(this.client, 'UpdateVolume', { name, writeCache: mode }));
  }

  /** Renames a volume; newIdentity also gives it a new serial and WWN. */
  async renameVolume(name: string, newName: string, opts: RenameVolumeOptions = {}): Promise<VolumeInfo> {
    const req: pb.RenameVolumeRequest = { name, newName, newIdentity: opts.newIdentity ?? false };
    return volumeFromWire(await this.call(this.client, 'RenameVolume', req));
  }

  async listExports(): Promise<ExportInfo[]> {
    const res = await this.call(this.client, 'ListExports', {});
    return res.exports.map(exportFromWire);
  }

  async getStatus(): Promise<ArrayStatus> {
    return statusFromWire(await this.call(this.client, 'GetStatus', {}));
  }

  // ---- copy sessions (CopyService) ----

  async startCopy(p: StartCopyParams): Promise<CopySessionView> {
    return copySessionFromWire(await this.call(this.copyClient(), 'StartCopy', startToWire(p)));
  }

  /** Starts every pair at one instant as consistency group `group` (all or none). */
  async startCopyGroup(group: string, pairs: StartCopyParams[]): Promise<CopySessionView[]> {
    const res = await this.call(this.copyClient(), 'StartCopyGroup', { group, pairs: pairs.map(startToWire) });
    return res.sessions.map(copySessionFromWire);
  }

  /** EC suspends or splits at one instant: the sessions named and every EC session of `group`. */
  async cutCopyGroup(op: 'suspend' | 'split', sel: { ids?: string[]; group?: string }): Promise<CopySessionView[]> {
    const res = await this.call(this.copyClient(), op === 'suspend' ? 'SuspendCopyGroup' : 'SplitCopyGroup', { group: sel.group ?? '', ids: sel.ids ?? [] });
    return res.sessions.map(copySessionFromWire);
  }

  /** EC: copies the split (or suspended) clone back onto the original; force: even while clients write to the original. */
  async restoreFromClone(id: string, opts: { force?: boolean } = {}): Promise<CopySessionView> {
    return copySessionFromWire(await this.call(this.copyClient(), 'RestoreFromClone', { id, force: opts.force ?? false }));
  }

  async listCopies(): Promise<CopySessionView[]> {
    const res = await this.call(this.copyClient(), 'ListCopies', {});
    return res.sessions.map(copySessionFromWire);
  }

  /**
   * How sessions that are gone ended, by id: completed (an OPC that finished its copy),
   * cancelled, dropped, or unknown (the array forgets at a restart; an older array never says).
   * Ids of current sessions are left out.
   */
  async copyEndings(ids: string[]): Promise<Map<string, string>> {
    const res = await this.call(this.copyClient(), 'ListCopies', { endedIds: ids });
    return new Map((res.ended ?? []).map((e) => [e.id, e.how || 'unknown']));
  }

  async getCopy(id: string): Promise<CopySessionView> {
    return copySessionFromWire(await this.call(this.copyClient(), 'GetCopy', { id }));
  }

  /**
   * The session's bitmap as cells (see CopyBitmapView): at most maxCells (default 4096, at
   * most 65536). FAILED_PRECONDITION on the remote end of a REC/ROPC pair: ask the source array.
   */
  async copyBitmap(id: string, maxCells?: number): Promise<CopyBitmapView> {
    const w = await this.call(this.copyClient(), 'GetCopyBitmap', { id, maxCells: maxCells ?? 0 });
    return {
      id: w.id,
      type: copyTypeFromWire(w.type),
      state: copyStateFromWire(w.state),
      units: Number(w.units),
      unitBytes: w.unitBytes,
      unitsPerCell: Number(w.unitsPerCell),
      cells: w.cells,
      counts: { copied: Number(w.copied), pending: Number(w.pending), tracked: Number(w.tracked), beforeImage: Number(w.beforeImage) },
    };
  }

  async suspendCopy(id: string): Promise<CopySessionView> {
    return copySessionFromWire(await this.call(this.copyClient(), 'SuspendCopy', { id }));
  }

  /** Resumes a suspended EC pair or rejoins a split one; force: even while clients write to the destination. */
  async resumeCopy(id: string, opts: { force?: boolean } = {}): Promise<CopySessionView> {
    return copySessionFromWire(await this.call(this.copyClient(), 'ResumeCopy', { id, force: opts.force ?? false }));
  }

  /** EC: swaps the direction; QuickOPC: restore. force: even while clients write to the source (the new destination). */
  async reverseCopy(id: string, opts: { force?: boolean } = {}): Promise<CopySessionView> {
    return copySessionFromWire(await this.call(this.copyClient(), 'ReverseCopy', { id, force: opts.force ?? false }));
  }

  /** newName: rename the split clone, with a new serial and WWN. */
  async splitCopy(id: string, opts: { newName?: string } = {}): Promise<CopySessionView> {
    return copySessionFromWire(await this.call(this.copyClient(), 'SplitCopy', { id, newName: opts.newName ?? '' }));
  }

  async cancelCopy(id: string, opts: { force?: boolean } = {}): Promise<void> {
    await this.call(this.copyClient(), 'CancelCopy', { id, force: opts.force ?? false });
  }

  /** MiB/s: 0 = no background copy; undefined = unthrottled. */
  async setCopyRate(id: string, rateMiBs: number | undefined): Promise<CopySessionView> {
    return copySessionFromWire(await this.call(this.copyClient(), 'SetCopyRate', { id, ...(rateMiBs !== undefined ? { rateMibS: rateMiBs } : {}) }));
  }

  /** REC: switches the transfer mode (sync, stack, through). */
  async setCopyMode(id: string, mode: string): Promise<CopySessionView> {
    return copySessionFromWire(await this.call(this.copyClient(), 'SetCopyMode', { id, mode }));
  }

  // ---- users, tenants, audit (AccessService) ----

  async whoAmI(): Promise<UserView> {
    return userFromWire(await this.call(this.accessClient(), 'WhoAmI', {}));
  }

  /** Creates a user; the token is returned once (empty for a certificate-only user). */
  async addUser(req: {
    name: string;
    role: string;
    tenant?: string;
    expiresInSeconds?: number;
    certSubject?: string;
    certFingerprint?: string;
    noToken?: boolean;
  }): Promise<{ user: UserView; token: string }> {
    const res = await this.call(this.accessClient(), 'AddUser', {
      name: req.name,
      role: req.role,
      tenant: req.tenant ?? '',
      expiresInSeconds: req.expiresInSeconds ?? 0,
      certSubject: req.certSubject ?? '',
      certFingerprint: req.certFingerprint ?? '',
      noToken: req.noToken ?? false,
    });
    return { user: userFromWire(res.user!), token: res.token };
  }

  async listUsers(): Promise<UserView[]> {
    return (await this.call(this.accessClient(), 'ListUsers', {})).users.map(userFromWire);
  }

  async getUser(name: string): Promise<UserView> {
    return userFromWire(await this.call(this.accessClient(), 'GetUser', { name }));
  }

  async removeUser(name: string): Promise<void> {
    await this.call(this.accessClient(), 'RemoveUser', { name });
  }

  async rotateUser(name: string, expiresInSeconds?: number): Promise<{ user: UserView; token: string }> {
    const res = await this.call(this.accessClient(), 'RotateUser', { name, expiresInSeconds: expiresInSeconds ?? 0 });
    return { user: userFromWire(res.user!), token: res.token };
  }

  async addTenant(spec: TenantSpec): Promise<TenantView> {
    return tenantFromWire(await this.call(this.accessClient(), 'AddTenant', tenantSpecToWire(spec)));
  }

  async setTenant(spec: TenantSpec): Promise<TenantView> {
    return tenantFromWire(await this.call(this.accessClient(), 'SetTenant', tenantSpecToWire(spec)));
  }

  async listTenants(): Promise<TenantView[]> {
    return (await this.call(this.accessClient(), 'ListTenants', {})).tenants.map(tenantFromWire);
  }

  async getTenant(name: string): Promise<TenantView> {
    return tenantFromWire(await this.call(this.accessClient(), 'GetTenant', { name }));
  }

  async removeTenant(name: string, force = false): Promise<void> {
    await this.call(this.accessClient(), 'RemoveTenant', { name, force });
  }

  /** Gives objects to a tenant ('' : to none). */
  async assignToTenant(tenant: string, objects: { volumes?: string[]; hosts?: string[]; cartridges?: string[] }): Promise<void> {
    await this.call(this.accessClient(), 'AssignToTenant', {
      tenant,
      volumes: objects.volumes ?? [],
      hosts: objects.hosts ?? [],
      cartridges: objects.cartridges ?? [],
    });
  }

  /** Newest first. */
  async listAudit(q: { since?: string; user?: string; limit?: number } = {}): Promise<AuditEntryView[]> {
    const res = await this.call(this.accessClient(), 'ListAudit', { since: q.since ?? '', user: q.user ?? '', limit: q.limit ?? 0 });
    return res.entries.map((e) => ({ ...e, seq: Number(e.seq) }));
  }

  // ---- remote arrays (RemoteService) ----

  /** opts.token: the token the array will call the remote with (a replication user's there). */
  async addRemote(name: string, api: string, opts: { offline?: boolean; token?: string } = {}): Promise<RemoteView> {
    return remoteFromWire(await this.call(this.remoteClient(), 'AddRemote', { name, api, offline: opts.offline ?? false, token: opts.token ?? '' }));
  }

  async listRemotes(): Promise<RemoteView[]> {
    return (await this.call(this.remoteClient(), 'ListRemotes', {})).remotes.map(remoteFromWire);
  }

  /** probe: ask the remote now rather than what is known. */
  async getRemote(name: string, opts: { probe?: boolean } = {}): Promise<RemoteView> {
    return remoteFromWire(await this.call(this.remoteClient(), 'GetRemote', { name, probe: opts.probe ?? false }));
  }

  async removeRemote(name: string, opts: { force?: boolean } = {}): Promise<void> {
    await this.call(this.remoteClient(), 'RemoveRemote', { name, force: opts.force ?? false });
  }

  // ---- array to array (RemoteCopyService), for the source array of a REC pair ----

  async openRemoteEnd(req: pb.OpenRemoteEndRequest): Promise<pb.RemoteEnd__Output> {
    return this.call(this.remoteCopyClient(), 'OpenRemoteEnd', req);
  }

  async setRemoteEndState(req: pb.SetRemoteEndStateRequest): Promise<pb.RemoteEnd__Output> {
    return this.call(this.remoteCopyClient(), 'SetRemoteEndState', req);
  }

  async resumeRemoteEnd(pairId: string, force: boolean): Promise<pb.RemoteEndChanges__Output> {
    return this.call(this.remoteCopyClient(), 'ResumeRemoteEnd', { pairId, force });
  }

  async reverseRemoteEnd(req: pb.ReverseRemoteEndRequest): Promise<pb.RemoteEnd__Output> {
    return this.call(this.remoteCopyClient(), 'ReverseRemoteEnd', req);
  }

  async commitCycle(cycle: number, pairIds: string[]): Promise<void> {
    await this.call(this.remoteCopyClient(), 'CommitCycle', { cycle, pairIds });
  }

  /** REC buffer settings of a remote (consistency mode); fields left out keep their value. */
  async setRemoteBuffer(name: string, s: { bytes?: number; haltWaitMs?: number; monitorMs?: number; cycleMs?: number }): Promise<RemoteView> {
    return remoteFromWire(
      await this.call(this.remoteClient(), 'SetRemote', {
        name,
        buffer: {
          ...(s.bytes !== undefined ? { bytes: s.bytes } : {}),
          ...(s.haltWaitMs !== undefined ? { haltWaitMs: s.haltWaitMs } : {}),
          ...(s.monitorMs !== undefined ? { monitorMs: s.monitorMs } : {}),
          ...(s.cycleMs !== undefined ? { cycleMs: s.cycleMs } : {}),
        },
      }),
    );
  }

  async closeRemoteEnd(pairId: string): Promise<pb.RemoteEnd__Output> {
    return this.call(this.remoteCopyClient(), 'CloseRemoteEnd', { pairId });
  }

  /**
   * Streams copy events (first a "snapshot" of each current session) until cancel() or the
   * server ends the stream; `done` resolves then, or rejects with an ApiError.
   */
  watchCopies(opts: { id?: string; progressIntervalMs?: number }, onEvent: (e: CopyEventView) => void): { cancel: () => void; done: Promise<void> } {
    const stream = this.copyClient().WatchCopies({ id: opts.id ?? '', progressIntervalMs: opts.progressIntervalMs ?? 0 }, this.callMetadata());
    return this.follow(stream, (w: pb.CopyEvent__Output) => onEvent(copyEventFromWire(w)));
  }

  /** A server stream as cancel() and a promise: it resolves when the stream ends or is cancelled, rejects with an ApiError. */
  private follow<M>(stream: grpc.ClientReadableStream<M>, onMessage: (m: M) => void): { cancel: () => void; done: Promise<void> } {
    let cancelled = false;
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', onMessage);
      stream.on('end', () => resolve());
      stream.on('error', (err: grpc.ServiceError) => {
        if (cancelled && err.code === grpc.status.CANCELLED) resolve();
        else reject(this.toApiError(err));
      });
    });
    return {
      cancel: () => {
        cancelled = true;
        stream.cancel();
      },
      done,
    };
  }

  // ---- events (EventService) ----

  /** The events the array keeps that match, oldest first (FAILED_PRECONDITION when api.events is off). */
  async listEvents(q: EventQuery = {}): Promise<ArrayEventView[]> {
    const res = await this.call(this.eventClient(), 'ListEvents', eventQueryToWire(q));
    return (res.events ?? []).map(eventFromWire);
  }

  /** The kept events that match, then with follow every new one until cancel(). */
  watchEvents(q: EventQuery & { follow?: boolean }, onEvent: (e: ArrayEventView) => void): { cancel: () => void; done: Promise<void> } {
    const req = { ...eventQueryToWire(q), follow: q.follow ?? false };
    const stream = openStream(this.eventClient(), 'WatchEvents', req, this.callMetadata()) as grpc.ClientReadableStream<pb.ArrayEvent__Output>;
    return this.follow(stream, (w) => onEvent(eventFromWire(w)));
  }

  /**
   * A host agent's report of a backup it ran, recorded as an event of the transaction volume
   * (needs copy.write); returns the event. FAILED_PRECONDITION when the array's events are off.
   */
  async reportAgentEvent(report: AgentEventReport): Promise<ArrayEventView> {
    return eventFromWire(
      await this.call(this.eventClient(), 'ReportAgentEvent', {
        kind: report.kind,
        volume: report.volume,
        backupVolume: report.backupVolume ?? '',
        type: report.type ?? '',
        generation: report.generation ?? 0,
        sessionId: report.sessionId ?? '',
        error: report.error ?? '',
        host: report.host ?? '',
      }),
    );
  }

  private eventClient(): pb.EventServiceClient {
    this.eventStub ??= this.stub(eventServiceClientConstructor);
    return this.eventStub;
  }

  // ---- faults (FaultService) ----

  /** Sets a fault given as the wire's FaultSpec (the CLI's options, one to one). */
  async addFault(spec: pb.FaultSpec): Promise<FaultView> {
    return faultFromWire(await this.call(this.faultClient(), 'AddFault', spec));
  }

  async listFaults(): Promise<FaultView[]> {
    return (await this.call(this.faultClient(), 'ListFaults', {})).faults.map(faultFromWire);
  }

  async getFault(id: string): Promise<FaultView> {
    return faultFromWire(await this.call(this.faultClient(), 'GetFault', { id }));
  }

  async removeFault(id: string): Promise<FaultView> {
    return faultFromWire(await this.call(this.faultClient(), 'RemoveFault', { id }));
  }

  /** Returns how many faults were removed. */
  async clearFaults(opts: { flags?: boolean } = {}): Promise<number> {
    return (await this.call(this.faultClient(), 'ClearFaults', { clearFlags: opts.flags ?? false })).removed;
  }

  async setFaultRate(id: string, rate: { mibs?: number; iops?: number }): Promise<FaultView> {
    return faultFromWire(await this.call(this.faultClient(), 'SetFaultRate', { id, ...rate }));
  }

  /** Applies a plan's YAML text; returns the faults it set. */
  async applyFaultPlan(text: string, source: string): Promise<FaultView[]> {
    return (await this.call(this.faultClient(), 'ApplyFaultPlan', { text, source })).faults.map(faultFromWire);
  }

  /** Sets or clears a flag; returns the flags set. */
  async setFaultFlag(name: string, set: boolean): Promise<string[]> {
    return (await this.call(this.faultClient(), 'SetFaultFlag', { name, set })).names;
  }

  async listFaultFlags(): Promise<string[]> {
    return (await this.call(this.faultClient(), 'ListFaultFlags', {})).names;
  }

  async powerCut(req: { policy?: string; seed?: number; downMs?: number } = {}): Promise<PowerCutView> {
    return powerCutFromWire(
      await this.call(this.faultClient(), 'PowerCut', {
        policy: req.policy ?? '',
        ...(req.seed !== undefined ? { seed: req.seed } : {}),
        downMs: req.downMs ?? 0,
      }),
    );
  }

  /** Events after sinceSeq; with follow, then new ones until cancel(). */
  watchFaultEvents(opts: { sinceSeq?: number; follow?: boolean }, onEvent: (e: FaultEventView) => void): { cancel: () => void; done: Promise<void> } {
    const req = { sinceSeq: opts.sinceSeq ?? 0, follow: opts.follow ?? false };
    const stream = openStream(this.faultClient(), 'WatchFaultEvents', req, this.callMetadata()) as grpc.ClientReadableStream<pb.FaultEvent__Output>;
    return this.follow(stream, (w) => onEvent(faultEventFromWire(w)));
  }

  private faultClient(): pb.FaultServiceClient {
    this.faultStub ??= this.stub(faultServiceClientConstructor);
    return this.faultStub;
  }

  // ---- host affinity (HostAffinityService) ----

  async createHost(name: string, initiators: string[]): Promise<HostView> {
    return hostFromWire(await this.call(this.hostClient(), 'CreateHost', { name, initiators }));
  }

  /** force: also when LUNs are mapped (they are unmapped). Returns the LUNs the host had. */
  async deleteHost(name: string, opts: { force?: boolean } = {}): Promise<{ unmapped: HostLun[] }> {
    const res = await this.call(this.hostClient(), 'DeleteHost', { name, force: opts.force ?? false });
    return { unmapped: (res.unmapped ?? []).map(hostLunFromWire) };
  }

  async addHostInitiator(host: string, initiator: string): Promise<HostView> {
    return hostFromWire(await this.call(this.hostClient(), 'AddHostInitiator', { host, initiator }));
  }

  async removeHostInitiator(host: string, initiator: string): Promise<HostView> {
    return hostFromWire(await this.call(this.hostClient(), 'RemoveHostInitiator', { host, initiator }));
  }

  /** Maps a volume to a host at `lun`, or the lowest free LUN when undefined. */
  async mapVolume(host: string, volume: string, lun?: number): Promise<{ host: HostView; lun: number }> {
    const res = await this.call(this.hostClient(), 'MapVolume', { host, volume, ...(lun !== undefined ? { lun } : {}) });
    return { host: hostFromWire(res.host!), lun: res.lun };
  }

  /** Returns the host after the change and the LUN the volume had. */
  async unmapVolume(host: string, volume: string): Promise<{ host: HostView; lun: number }> {
    const res = await this.call(this.hostClient(), 'UnmapVolume', { host, volume });
    return { host: hostFromWire(res.host!), lun: res.lun };
  }

  async listHosts(): Promise<HostListView> {
    return hostListFromWire(await this.call(this.hostClient(), 'ListHosts', {}));
  }

  async getHost(name: string): Promise<HostView> {
    return hostFromWire(await this.call(this.hostClient(), 'GetHost', { name }));
  }

  /** Sets or clears a host's NBD identities and CHAP (`host set`); a new PSK key comes back this once. */
  async setHostCredentials(
    name: string,
    change: Omit<pb.SetHostCredentialsRequest, 'name'>,
  ): Promise<{ host: HostView; nbdPsk?: { identity: string; key: Buffer } }> {
    const res = await this.call(this.hostClient(), 'SetHostCredentials', { ...change, name });
    const key = Buffer.from(res.nbdPskKey ?? []);
    return { host: hostFromWire(res.host!), ...(key.length > 0 ? { nbdPsk: { identity: res.nbdPskIdentity, key } } : {}) };
  }

  // ---- tape library (TapeService) ----
  // Streaming calls have no deadline (a big volume takes a while), but the server sends
  // progress at least every second: TAPE_SILENCE_MS without a message fails the call.

  async addCartridge(label: string, capacityBytes: number): Promise<CartridgeView> {
    return cartridgeFromWire(await this.tapeCall('AddCartridge', { label, capacityBytes }));
  }

  async listCartridges(): Promise<CartridgeView[]> {
    const res = await this.tapeCall('ListCartridges', {});
    return res.cartridges.map(cartridgeFromWire);
  }

  async getCartridge(label: string): Promise<{ cartridge: CartridgeView; records: TapeRecordView[] }> {
    const res = await this.tapeCall('GetCartridge', { label });
    if (!res.cartridge) throw new ApiError('UNKNOWN', `the arraylab API at ${this.address} answered GetCartridge ${label} without the cartridge`);
    return { cartridge: cartridgeFromWire(res.cartridge), records: (res.records ?? []).map(tapeRecordFromWire) };
  }

  async eraseCartridge(label: string): Promise<CartridgeView> {
    return cartridgeFromWire(await this.tapeCall('EraseCartridge', { label }));
  }

  async removeCartridge(label: string): Promise<void> {
    await this.tapeCall('RemoveCartridge', { label });
  }

  /** pointInTime (ISO 8601): the instant the volume's image is of; default: the array derives it. */
  async writeTape(
    req: { volume: string; cartridge?: string; tag?: string; pointInTime?: string },
    onProgress?: (p: HostProgress) => void,
  ): Promise<TapeRecordView> {
    const wire = { volume: req.volume, cartridge: req.cartridge ?? '', tag: req.tag ?? '', pointInTime: req.pointInTime ?? '' };
    const last = await this.tapeStream('WriteTape', wire, `the tape write of volume ${req.volume}`, onProgress);
    if (!last.record)
      throw new ApiError(
        'UNKNOWN',
        `the arraylab API at ${this.address} ended the tape write of volume ${req.volume} without a result; see arraylab tape list`,
      );
    return tapeRecordFromWire(last.record);
  }

  async restoreTape(
    req: { cartridge: string; record: number; volume: string; force?: boolean },
    onProgress?: (p: HostProgress) => void,
  ): Promise<TapeRestoreView> {
    const what = `the restore of cartridge ${req.cartridge} record ${req.record} onto ${req.volume}`;
    const last = await this.tapeStream(
      'RestoreTape',
      { cartridge: req.cartridge, record: req.record, volume: req.volume, force: req.force ?? false },
      what,
      onProgress,
    );
    if (!last.restored) throw new ApiError('UNKNOWN', `the arraylab API at ${this.address} ended ${what} without a result; restore again`);
    return tapeRestoreFromWire(last.restored);
  }

  async verifyTape(
    req: { cartridge: string; record?: number },
    onProgress?: (p: HostProgress) => void,
  ): Promise<Array<{ record: number; ok: boolean; error: string }>> {
    const last = await this.tapeStream(
      'VerifyTape',
      { cartridge: req.cartridge, record: req.record ?? 0 },
      `the verify of cartridge ${req.cartridge}`,
      onProgress,
    );
    if (!last.verified)
      throw new ApiError('UNKNOWN', `the arraylab API at ${this.address} ended the verify of cartridge ${req.cartridge} without a result; verify again`);
    return (last.verified.checks ?? []).map((c) => ({ record: c.record, ok: c.ok, error: c.error }));
  }

  private tapeClient(): pb.TapeServiceClient {
    this.tapeStub ??= this.stub(tapeServiceClientConstructor);
    return this.tapeStub;
  }

  private tapeCall<K extends UnaryMethod<pb.TapeServiceClient>>(
    method: K,
    req: RequestOf<pb.TapeServiceClient, K>,
  ): Promise<ResponseOf<pb.TapeServiceClient, K>> {
    return this.call(this.tapeClient(), method, req).catch((err: unknown) => {
      throw tapeApiError(err);
    });
  }

  /** Runs a streaming tape call to its end; resolves with the last message (the result). */
  private tapeStream<K extends StreamMethod<pb.TapeServiceClient>>(
    method: K,
    req: StreamRequestOf<pb.TapeServiceClient, K>,
    what: string,
    onProgress?: (p: HostProgress) => void,
  ): Promise<pb.TapeProgress__Output> {
    const stream = openStream(this.tapeClient(), method, req, this.callMetadata()) as grpc.ClientReadableStream<pb.TapeProgress__Output>;
    return new Promise((resolve, reject) => {
      let last: pb.TapeProgress__Output | undefined;
      let heard = false;
      let silent: NodeJS.Timeout | undefined;
      let failed: ApiError | undefined;
      const arm = () => {
        clearTimeout(silent);
        silent = setTimeout(() => {
          failed = new ApiError(
            'DEADLINE_EXCEEDED',
            `the arraylab API at ${this.address} sent nothing for ${TAPE_SILENCE_MS / 1000} s during ${what}; is the server still running? (the operation may still finish: see arraylab tape show)`,
          );
          stream.cancel();
        }, TAPE_SILENCE_MS);
      };
      arm();
      stream.on('data', (m: pb.TapeProgress__Output) => {
        heard = true;
        arm();
        last = m;
        if (onProgress && !m.result) onProgress({ doneBytes: Number(m.doneBytes), totalBytes: Number(m.totalBytes) });
      });
      stream.on('end', () => {
        clearTimeout(silent);
        if (last && onProgress) onProgress({ doneBytes: Number(last.doneBytes), totalBytes: Number(last.totalBytes) });
        if (failed) reject(failed);
        else if (last) resolve(last);
        else reject(new ApiError('UNKNOWN', `the arraylab API at ${this.address} ended ${what} without a result`));
      });
      stream.on('error', (err: grpc.ServiceError) => {
        clearTimeout(silent);
        if (failed) return reject(failed);
        if (heard && err.code === grpc.status.UNAVAILABLE && !/shutting down/.test(err.details)) {
          return reject(
            new ApiError(
              'UNAVAILABLE',
              `the arraylab API at ${this.address} went away during ${what} (${describeUnreachable(err.details)}); when it is back, check with arraylab tape show and run it again`,
            ),
          );
        }
        reject(tapeApiError(err, this.toApiError(err)));
      });
    });
  }

  close(): void {
    this.client.close();
    this.copyStub?.close();
    this.hostStub?.close();
    this.tapeStub?.close(); // tape
    this.faultStub?.close();
    this.remoteStub?.close();
    this.remoteCopyStub?.close();
    this.eventStub?.close();
  }

  private accessClient(): pb.AccessServiceClient {
    this.accessStub ??= this.stub(accessServiceClientConstructor);
    return this.accessStub;
  }

  private remoteClient(): pb.RemoteServiceClient {
    this.remoteStub ??= this.stub(remoteServiceClientConstructor);
    return this.remoteStub;
  }

  private remoteCopyClient(): pb.RemoteCopyServiceClient {
    this.remoteCopyStub ??= this.stub(remoteCopyServiceClientConstructor);
    return this.remoteCopyStub;
  }

  private stub<C extends grpc.Client>(ctor: () => ClientConstructor<C>): C {
    const Client = ctor();
    // No retries or reconnect back-off hidden behind a call: a CLI wants a prompt answer.
    return new Client(this.address, this.channelCredentials, {
      'grpc.enable_retries': 0,
      'grpc.initial_reconnect_backoff_ms': 100,
    });
  }

  private copyClient(): pb.CopyServiceClient {
    this.copyStub ??= this.stub(copyServiceClientConstructor);
    return this.copyStub;
  }

  private hostClient(): pb.HostAffinityServiceClient {
    this.hostStub ??= this.stub(hostAffinityServiceClientConstructor);
    return this.hostStub;
  }

  private callMetadata(): grpc.Metadata {
    const metadata = new grpc.Metadata();
    for (const [key, value] of Object.entries(this.metadata)) metadata.set(key, value);
    return metadata;
  }

  /** A unary call of a generated client, typed by its method, with the deadline and metadata. */
  private call<C extends grpc.Client, K extends UnaryMethod<C>>(client: C, method: K, req: RequestOf<C, K>): Promise<ResponseOf<C, K>> {
    return unaryCall(client, method, req, this.callMetadata(), { deadline: Date.now() + this.deadlineMs }).catch((err: grpc.ServiceError) => {
      throw this.toApiError(err);
    });
  }

  private toApiError(err: grpc.ServiceError): ApiError {
    const code = statusCodeOf(err.code);
    if (err.code === grpc.status.UNAUTHENTICATED) {
      const from = this.credential.source === undefined ? 'no token was sent' : `the token came from ${this.credential.source}`;
      return new ApiError('UNAUTHENTICATED', `${err.details} (${from})`);
    }
    // The array's own refusals carry the thing and the fix: kept as they are.
    if (!['UNAVAILABLE', 'DEADLINE_EXCEEDED', 'UNKNOWN', 'CANCELLED', 'UNIMPLEMENTED'].includes(code)) return new ApiError(code, err.details);
    // An api-error fault the array injected (its message names the fault): the server did answer.
    if (/ failed: injected [A-Z_]+ \(fault f\d+\)/.test(err.details)) return new ApiError(code, err.details);
    const tls = this.credential.tls !== undefined;
    const hint = 'is `arraylab serve` running? (set --api or ARRAYLAB_API)';
    if (err.code === grpc.status.UNAVAILABLE) {
      if (/shutting down/.test(err.details)) return new ApiError('UNAVAILABLE', err.details);
      if (/certificate required|alert number 116/i.test(err.details)) {
        return new ApiError(
          'UNAVAILABLE',
          `the arraylab API at ${this.address} wants a client certificate (mutual TLS): pass --tls-cert and --tls-key (or set ARRAYLAB_TLS_CERT and ARRAYLAB_TLS_KEY)`,
        );
      }
      if (tls && /certificate|self.signed|unable to verify|CERT_|handshake/i.test(err.details)) {
        return new ApiError(
          'UNAVAILABLE',
          `the TLS handshake with the arraylab API at ${this.address} failed: ${describeUnreachable(err.details)}; pass the CA that signed its certificate with --tls-ca (ARRAYLAB_TLS_CA), and a client certificate it trusts`,
        );
      }
      const reason = describeUnreachable(err.details);
      // Something answered, but not in plaintext gRPC: maybe a TLS API.
      const socketError = /^(connection refused|host not found|host unreachable|connection timed out)$/.test(reason);
      const tlsHint = tls || socketError ? '' : '; if it serves TLS, pass --tls-ca CA.pem or set ARRAYLAB_TLS_CA';
      return new ApiError('UNAVAILABLE', `cannot reach the arraylab API at ${this.address}: ${reason}; ${hint}${tlsHint}`);
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
  return details.replace(/\s*\n\s*/g, ' ').trim();
}

/** tape: a streaming call that has been silent this long has lost its server. */
export const TAPE_SILENCE_MS = 30_000;

/** tape: DATA_LOSS keeps its code (a checksum failed); CANCELLED has no ApiErrorCode of its own. The message is kept. */
function tapeApiError(err: unknown, mapped?: ApiError): unknown {
  const e = err as grpc.ServiceError;
  if (e && typeof e === 'object' && 'code' in e && typeof e.details === 'string') {
    if (e.code === grpc.status.DATA_LOSS) return new ApiError('DATA_LOSS', e.details);
    if (e.code === grpc.status.CANCELLED) return new ApiError('UNKNOWN', e.details);
  }
  return mapped ?? err;
}

function startToWire(p: StartCopyParams): pb.StartCopyRequest {
  return {
    type: copyTypeToWire(p.type),
    source: p.source,
    destination: p.destination,
    ...(p.rateMiBs !== undefined ? { rateMibS: p.rateMiBs } : {}),
    group: p.group ?? '',
    force: p.force ?? false,
    refuseIfFull: p.refuseIfFull ?? false,
    mode: p.mode ?? '',
    split: p.split ?? '',
    recovery: p.recovery ?? '',
  };
}

/** A tenant's quotas as given to tenant add/set (absent: none on add, unchanged on set; 0: none). */
export interface TenantSpec {
  name: string;
  maxCapacityBytes?: number;
  maxVolumes?: number;
  maxSessions?: number;
}

function tenantSpecToWire(t: TenantSpec): pb.TenantSpec {
  return {
    name: t.name,
    ...(t.maxCapacityBytes !== undefined ? { maxCapacityBytes: t.maxCapacityBytes } : {}),
    ...(t.maxVolumes !== undefined ? { maxVolumes: t.maxVolumes } : {}),
    ...(t.maxSessions !== undefined ? { maxSessions: t.maxSessions } : {}),
  };
}

function userFromWire(u: pb.User__Output): UserView {
  return { ...u, permissions: [...u.permissions] };
}

function tenantFromWire(t: pb.Tenant__Output): TenantView {
  return { ...t, maxCapacityBytes: Number(t.maxCapacityBytes), capacityBytes: Number(t.capacityBytes) };
}
