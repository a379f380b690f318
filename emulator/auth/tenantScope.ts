/**
 * Tenant isolation, one row per method: what a tenant's user may name in a request (its own
 * volumes, hosts, cartridges, and sessions between its volumes), which items of a list it sees,
 * which quota a call counts against, and what a create gives to the tenant. Array-wide users
 * (no tenant) pass untouched. Another tenant's object answers NOT_FOUND, as one that does not
 * exist, so a tenant cannot learn what others hold by probing names.
 *
 * ApiGuard applies these: checks on the request before the handler runs, filters and
 * ownership on the response before it is sent. A method without a row needs no tenant rule
 * (array-wide data such as faults and remotes, which tenant roles only read).
 */
import { StatusError } from '../../proto/errors.js';
import type { AccessControl, Principal } from './AccessControl.js';
import type { OwnedKind } from './AccessStore.js';

/** What the rules need to look up; ApiGuard's caller provides it. */
export interface ScopeDirectory {
  volumeUuid(name: string): string | undefined;
  volumeSize(name: string): number | undefined;
  /** A copy session's local volumes (a remote end has no local source: ''). */
  session(id: string): { source: string; destination: string } | undefined;
  sessionsInGroup(group: string): string[];
}

/** One call's view: the caller, and the owners table read once. */
export class Scope {
  private ownersMap: Map<string, string> | undefined;
  constructor(
    readonly p: Principal,
    readonly access: AccessControl,
    readonly dir: ScopeDirectory,
  ) {}

  get scoped(): boolean {
    return this.p.tenant !== '';
  }

  private owner(kind: OwnedKind, key: string): string {
    this.ownersMap ??= this.access.owners();
    return this.ownersMap.get(`${kind}:${key}`) ?? '';
  }

  ownsVolume(name: string): boolean {
    const uuid = this.dir.volumeUuid(name);
    return uuid !== undefined && this.owner('volume', uuid) === this.p.tenant;
  }
  ownsHost(name: string): boolean {
    return this.owner('host', name) === this.p.tenant;
  }
  ownsCartridge(label: string): boolean {
    return this.owner('cartridge', label) === this.p.tenant;
  }
  ownsSession(id: string): boolean {
    const s = this.dir.session(id);
    if (s === undefined) return false;
    return (
      (s.source === '' || this.ownsVolume(s.source)) && (s.destination === '' || this.ownsVolume(s.destination)) && !(s.source === '' && s.destination === '')
    );
  }

  volume(name: string): void {
    if (!this.ownsVolume(name)) throw this.notFound('volume', name);
  }
  host(name: string): void {
    if (!this.ownsHost(name)) throw this.notFound('host', name);
  }
  cartridge(label: string): void {
    if (!this.ownsCartridge(label)) throw this.notFound('cartridge', label);
  }
  session(id: string): void {
    if (!this.ownsSession(id)) throw this.notFound('copy session', id);
  }

  notFound(what: string, name: string): StatusError {
    return new StatusError('NOT_FOUND', `no ${what} ${name} in tenant ${this.p.tenant}; its users see only the tenant's objects (list them, or ask an admin)`);
  }
}

/* biome-ignore-start lint/suspicious/noExplicitAny: requests and responses arrive as the loader's plain objects */
type Msg = any;
/* biome-ignore-end lint/suspicious/noExplicitAny: (end) */

export interface ScopeRule {
  /** Before the handler: throws to refuse. */
  check?(req: Msg, s: Scope): void;
  /** The response as the caller may see it. */
  filter?(res: Msg, s: Scope): Msg;
  /** After a successful create: what the tenant now owns. */
  created?(res: Msg, req: Msg, s: Scope): Array<{ kind: OwnedKind; key: string }>;
  /**
   * After a successful removal, whoever called: what no tenant owns any more. (Volumes and
   * hosts are forgotten by the database's triggers; a cartridge is a file, so here.)
   */
  removed?(req: Msg): Array<{ kind: OwnedKind; key: string }>;
}

const volumeByName: ScopeRule = { check: (r, s) => s.volume(r.name) };
const sessionById: ScopeRule = { check: (r, s) => s.session(r.id) };
const hostByName: ScopeRule = { check: (r, s) => s.host(r.name) };
const cartridgeByLabel: ScopeRule = { check: (r, s) => s.cartridge(r.label) };

function checkStart(r: Msg, s: Scope): void {
  if (r.type === 'COPY_TYPE_REC' || r.type === 'COPY_TYPE_ROPC' || String(r.destination ?? '').includes(':')) {
    throw new StatusError(
      'PERMISSION_DENIED',
      `remote copy to ${r.destination} needs a user without a tenant (a remote array is shared by every tenant); ask an admin to start it`,
    );
  }
  s.volume(r.source);
  s.volume(r.destination);
}

function checkGroup(r: Msg, s: Scope): void {
  for (const id of r.ids ?? []) s.session(id);
  if (r.group) {
    const ids = s.dir.sessionsInGroup(r.group);
    if (ids.length === 0 || !ids.every((id) => s.ownsSession(id))) throw s.notFound('copy group', r.group);
  }
}

function quota(s: Scope, add: { volumes?: number; capacityBytes?: number; sessions?: number }, what: string): void {
  s.access.checkQuota(s.p.tenant, add, what);
}

const rules: Record<string, ScopeRule> = {
  // ArrayService
  'ArrayService/CreateVolume': {
    check: (r, s) => quota(s, { volumes: 1, capacityBytes: Number(r.sizeBytes) }, `create volume ${r.name}`),
    created: (res) => [{ kind: 'volume', key: res.uuid }],
  },
  'ArrayService/ListVolumes': { filter: (res, s) => ({ ...res, volumes: res.volumes.filter((v: Msg) => s.ownsVolume(v.name)) }) },
  'ArrayService/GetVolume': volumeByName,
  'ArrayService/ResizeVolume': {
    check: (r, s) => {
      s.volume(r.name);
      const now = s.dir.volumeSize(r.name) ?? 0;
      const next = r.size === 'growByBytes' ? now + Number(r.growByBytes) : Number(r.sizeBytes);
      quota(s, { capacityBytes: next - now }, `resize volume ${r.name}`);
    },
  },
  'ArrayService/DeleteVolume': volumeByName,
  'ArrayService/UpdateVolume': volumeByName,
  'ArrayService/RenameVolume': volumeByName,
  'ArrayService/ListExports': { filter: (res, s) => ({ ...res, exports: res.exports.filter((e: Msg) => s.ownsVolume(e.name)) }) },
  // CopyService
  'CopyService/StartCopy': {
    check: (r, s) => {
      checkStart(r, s);
      quota(s, { sessions: 1 }, `start a copy session ${r.source} -> ${r.destination}`);
    },
  },
  'CopyService/StartCopyGroup': {
    check: (r, s) => {
      for (const pair of r.pairs ?? []) checkStart(pair, s);
      quota(s, { sessions: (r.pairs ?? []).length }, `start copy group ${r.group}`);
    },
  },
  'CopyService/ListCopies': {
    filter: (res, s) => ({ ...res, sessions: res.sessions.filter((c: Msg) => s.ownsSession(c.id)), ended: [] }),
  },
  'CopyService/GetCopy': sessionById,
  'CopyService/GetCopyBitmap': sessionById,
  'CopyService/SuspendCopy': sessionById,
  'CopyService/ResumeCopy': sessionById,
  'CopyService/ReverseCopy': sessionById,
  'CopyService/SplitCopy': sessionById,
  'CopyService/RestoreFromClone': sessionById,
  'CopyService/SuspendCopyGroup': { check: checkGroup },
  'CopyService/SplitCopyGroup': { check: checkGroup },
  'CopyService/CancelCopy': sessionById,
  'CopyService/SetCopyRate': sessionById,
  'CopyService/SetCopyMode': sessionById,
  // WatchCopies: the handler filters its events (emulator/api/ArrayApiServer.ts).
  'CopyService/WatchCopies': { check: (r, s) => (r.id ? s.session(r.id) : undefined) },
  // HostAffinityService
  'HostAffinityService/CreateHost': { created: (res) => [{ kind: 'host', key: res.name }] },
  'HostAffinityService/DeleteHost': hostByName,
  'HostAffinityService/AddHostInitiator': { check: (r, s) => s.host(r.host) },
  'HostAffinityService/RemoveHostInitiator': { check: (r, s) => s.host(r.host) },
  'HostAffinityService/MapVolume': {
    check: (r, s) => {
      s.host(r.host);
      s.volume(r.volume);
    },
  },
  'HostAffinityService/UnmapVolume': {
    check: (r, s) => {
      s.host(r.host);
      s.volume(r.volume);
    },
  },
  'HostAffinityService/GetHost': hostByName,
  'HostAffinityService/SetHostCredentials': { check: (r, s) => s.host(r.name) },
  'HostAffinityService/ListHosts': {
    filter: (res, s) => ({
      ...res,
      hosts: res.hosts.filter((h: Msg) => s.ownsHost(h.name)),
      defaultLuns: (res.defaultLuns ?? []).filter((l: Msg) => s.ownsVolume(l.volume)),
      otherSessions: [],
    }),
  },
  // TapeService
  'TapeService/AddCartridge': { created: (_res, req) => [{ kind: 'cartridge', key: req.label }] },
  'TapeService/ListCartridges': { filter: (res, s) => ({ ...res, cartridges: res.cartridges.filter((c: Msg) => s.ownsCartridge(c.label)) }) },
  'TapeService/GetCartridge': cartridgeByLabel,
  'TapeService/EraseCartridge': cartridgeByLabel,
  'TapeService/RemoveCartridge': { ...cartridgeByLabel, removed: (req) => [{ kind: 'cartridge', key: req.label }] },
  'TapeService/WriteTape': {
    check: (r, s) => {
      s.volume(r.volume);
      if (!r.cartridge) {
        throw new StatusError(
          'INVALID_ARGUMENT',
          `give the cartridge to write ${r.volume} to (--cartridge): a tenant's user writes only to its own cartridges`,
        );
      }
      s.cartridge(r.cartridge);
    },
  },
  'TapeService/RestoreTape': {
    check: (r, s) => {
      s.cartridge(r.cartridge);
      s.volume(r.volume);
    },
  },
  'TapeService/VerifyTape': { check: (r, s) => s.cartridge(r.cartridge) },
  // EventService: the handlers keep each event to its subject's tenant (emulator/api/eventService.ts).
  'EventService/WatchEvents': {},
  'EventService/ListEvents': {},
  'EventService/ReportAgentEvent': { check: (r, s) => s.volume(r.volume) },
};

/** path (/arraylab.v1.Service/Method) -> its tenant rule. */
export const SCOPE_RULES: ReadonlyMap<string, ScopeRule> = new Map(Object.entries(rules).map(([k, v]) => [`/arraylab.v1.${k}`, v]));
