/**
 * EventService: the array's event stream (emulator/events/EventLog.ts) over gRPC. A tenant's
 * user sees only events about its own objects: the handler filters, as WatchCopies does, since
 * a stream's items never pass ApiGuard's response filter.
 */
import * as grpc from '@grpc/grpc-js';
import { StatusError } from '../../proto/errors.js';
import type * as pb from '../../proto/gen/index.js';
import type { AccessControl } from '../auth/AccessControl.js';
import { principalOf } from '../auth/ApiGuard.js';
import { Scope, type ScopeDirectory } from '../auth/tenantScope.js';
import type { ArrayEvent, EventFilter, EventLog, NewEvent } from '../events/EventLog.js';
import { matches } from '../events/EventLog.js';

export const EVENTS_OFF = 'the event stream is off on this array (api.events: off); turn it on with api.events: on in the config, or serve --events on';

export interface EventServiceDeps {
  unary: <Req, Res>(method: string, fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Res | Promise<Res>) => grpc.handleUnaryCall<Req, Res>;
  draining: () => boolean;
  /** Registers a stream to end when the server drains; returns its unregister. */
  track: (stop: () => void) => () => void;
  access: { control: AccessControl; dir: ScopeDirectory } | undefined;
  /** ReportAgentEvent: whether the array has the volume (absent: any name is taken). */
  volumeExists?: (name: string) => boolean;
}

/** What a host agent may report (ReportAgentEvent). */
export const AGENT_EVENT_KINDS = ['agent.backup.completed', 'agent.backup.failed'] as const;

/** Longest text kept of a reported field, and of a reported error: the ring's memory stays bounded. */
const AGENT_FIELD_MAX = 256;
const AGENT_ERROR_MAX = 1000;

function clip(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

/** A host agent's report as an event of its transaction volume; refuses what no agent sends. */
export function agentEvent(req: pb.ReportAgentEventRequest__Output, volumeExists: ((name: string) => boolean) | undefined): NewEvent {
  const kind = req.kind;
  if (!(AGENT_EVENT_KINDS as readonly string[]).includes(kind)) {
    throw new StatusError('INVALID_ARGUMENT', `${JSON.stringify(kind)} is not an agent event; report ${AGENT_EVENT_KINDS.join(' or ')}`);
  }
  const volume = req.volume;
  if (volume === '') throw new StatusError('INVALID_ARGUMENT', 'name the transaction volume the backup was of');
  if (volumeExists !== undefined && !volumeExists(volume)) {
    throw new StatusError('NOT_FOUND', `no volume named ${clip(volume, AGENT_FIELD_MAX)} on this array; report backups of this array's volumes`);
  }
  const host = clip(req.host, AGENT_FIELD_MAX);
  const backupVolume = clip(req.backupVolume, AGENT_FIELD_MAX);
  const type = clip(req.type, 32);
  const sessionId = clip(req.sessionId, 64);
  const error = clip(req.error, AGENT_ERROR_MAX);
  const generation = req.generation > 0 ? req.generation : undefined;
  const what = [type, generation !== undefined ? `generation ${generation}` : ''].filter((x) => x !== '').join(', ');
  const to = backupVolume !== '' ? ` to ${backupVolume}` : '';
  const on = host !== '' ? ` (agent on ${host})` : '';
  const message =
    kind === 'agent.backup.completed'
      ? `backup of ${volume}${to}${what ? ` (${what})` : ''} completed${on}`
      : `backup of ${volume}${to}${what ? ` (${what})` : ''} failed${on}${error ? `: ${error}` : ''}`;
  const fields: Record<string, unknown> = { host, backupVolume, type, generation, sessionId, error };
  for (const k of Object.keys(fields)) if (fields[k] === '' || fields[k] === undefined) delete fields[k];
  return { kind, subject: { kind: 'volume', name: volume }, message, fields };
}

/** Who owned an event's subject when it happened (set on the event by stampTenant): a deleted volume's events stay its tenant's. */
const tenantAtEvent = new WeakMap<ArrayEvent, string>();

/** The owner key of an event's subject (volumes by UUID, so a deleted or renamed one keeps it); undefined: shared. */
function ownerKey(e: ArrayEvent, dir: ScopeDirectory): string | undefined {
  switch (e.subject.kind) {
    case 'volume': {
      const uuid = dir.volumeUuid(e.subject.name) ?? e.fields.uuid;
      return uuid === undefined ? undefined : `volume:${uuid}`;
    }
    case 'host':
      return `host:${e.subject.name}`;
    case 'cartridge':
      return `cartridge:${e.subject.name}`;
    default:
      return undefined;
  }
}

/**
 * Records the subject's tenant on each event as it happens (access control on), so a tenant
 * keeps the events of a volume or host it has since deleted: the owners table forgets an
 * object with it. A create is owned only once its call answers (ApiGuard), so the owner of a
 * new object is looked up again right after; owners seen are remembered until the object goes.
 */
export function stampTenants(log: EventLog, control: AccessControl, dir: ScopeDirectory): () => void {
  const known = new Map<string, string>();
  const stamp = (e: ArrayEvent): boolean => {
    if (e.subject.kind === 'session') {
      const tenants = new Set(
        (e.volumes ?? []).map((v) => known.get(`volume:${dir.volumeUuid(v)}`) ?? control.owners().get(`volume:${dir.volumeUuid(v)}`) ?? ''),
      );
      const t = tenants.size === 1 ? [...tenants][0]! : '';
      if (t !== '') tenantAtEvent.set(e, t);
      return true;
    }
    const key = ownerKey(e, dir);
    if (key === undefined) return true;
    const t = control.owners().get(key) ?? known.get(key) ?? '';
    if (t !== '') {
      tenantAtEvent.set(e, t);
      known.set(key, t);
    }
    if (e.kind.endsWith('.deleted') || e.kind === 'tape.removed') known.delete(key);
    return t !== '';
  };
  return log.subscribe((e) => {
    if (!stamp(e) && (e.kind.endsWith('.created') || e.kind === 'tape.added')) setImmediate(() => stamp(e));
  });
}

function visibleTo(s: Scope | undefined): (e: ArrayEvent) => boolean {
  if (s === undefined) return () => true;
  return (e) => {
    if (tenantAtEvent.get(e) === s.p.tenant) return true;
    switch (e.subject.kind) {
      case 'volume':
        return s.ownsVolume(e.subject.name);
      case 'host':
        return s.ownsHost(e.subject.name);
      case 'cartridge':
        return s.ownsCartridge(e.subject.name);
      case 'session':
        return s.ownsSession(e.subject.name) || ((e.volumes ?? []).length > 0 && (e.volumes ?? []).every((v) => s.ownsVolume(v)));
      default:
        // Faults and the array as a whole are shared: a tenant's user sees them, as it lists faults.
        return e.subject.kind === 'fault' || e.subject.kind === 'array';
    }
  };
}

function filterFromWire(req: { sinceSeq: string | number; sinceTime: string; kinds: string[] }): EventFilter {
  const f: EventFilter = { sinceSeq: Number(req.sinceSeq ?? 0), kinds: req.kinds ?? [] };
  if (req.sinceTime) {
    const t = Date.parse(req.sinceTime);
    if (Number.isNaN(t))
      throw new StatusError('INVALID_ARGUMENT', `since_time ${JSON.stringify(req.sinceTime)} is not an ISO 8601 time, e.g. 2026-12-06T10:00:00Z`);
    f.sinceTime = t;
  }
  return f;
}

export function eventToWire(e: ArrayEvent): pb.ArrayEvent {
  return { seq: e.seq, at: e.at, kind: e.kind, subjectKind: e.subject.kind, subjectName: e.subject.name, message: e.message, fields: e.fields };
}

function scopeOf(md: grpc.Metadata, access: EventServiceDeps['access']): Scope | undefined {
  const p = principalOf(md);
  return p !== undefined && p.tenant !== '' && access ? new Scope(p, access.control, access.dir) : undefined;
}

export function eventHandlers(log: EventLog | undefined, deps: EventServiceDeps): pb.EventServiceHandlers {
  return {
    ListEvents: deps.unary('ListEvents', (req: pb.ListEventsRequest__Output, call) => {
      if (log === undefined) throw new StatusError('FAILED_PRECONDITION', EVENTS_OFF);
      const visible = visibleTo(scopeOf(call.metadata, deps.access));
      return { events: log.list(filterFromWire(req)).filter(visible).map(eventToWire) };
    }),
    ReportAgentEvent: deps.unary('ReportAgentEvent', (req: pb.ReportAgentEventRequest__Output) => {
      if (log === undefined) throw new StatusError('FAILED_PRECONDITION', EVENTS_OFF);
      return eventToWire(log.add(agentEvent(req, deps.volumeExists)));
    }),
    WatchEvents: (call: grpc.ServerWritableStream<pb.WatchEventsRequest__Output, pb.ArrayEvent>) => {
      const fail = (code: grpc.status, details: string): void => {
        call.emit('error', { code, details });
      };
      if (deps.draining()) {
        fail(grpc.status.UNAVAILABLE, 'the arraylab server is shutting down; retry when it is back');
        return;
      }
      if (log === undefined) {
        fail(grpc.status.FAILED_PRECONDITION, EVENTS_OFF);
        return;
      }
      let filter: EventFilter;
      try {
        filter = filterFromWire(call.request);
      } catch (err) {
        fail(grpc.status.INVALID_ARGUMENT, (err as Error).message);
        return;
      }
      const visible = visibleTo(scopeOf(call.metadata, deps.access));
      const send = (e: ArrayEvent) => {
        if (!call.writableEnded && !call.cancelled && visible(e)) call.write(eventToWire(e));
      };
      let last = 0;
      // Subscribe first so nothing falls between the history and the live events; skip repeats by seq.
      const live: ArrayEvent[] = [];
      let replaying = true;
      const off = call.request.follow
        ? log.subscribe((e) => {
            if (!matches(e, filter)) return;
            if (replaying) live.push(e);
            else if (e.seq > last) {
              last = e.seq;
              send(e);
            }
          })
        : () => undefined;
      for (const e of log.list(filter)) {
        last = e.seq;
        send(e);
      }
      replaying = false;
      for (const e of live) {
        if (e.seq <= last) continue;
        last = e.seq;
        send(e);
      }
      if (!call.request.follow) {
        call.end();
        return;
      }
      const stop = () => {
        off();
        untrack();
        if (!call.writableEnded) call.end();
      };
      const untrack = deps.track(stop);
      call.on('cancelled', stop);
      call.on('error', stop);
      call.on('close', stop);
    },
  };
}
