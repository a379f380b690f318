/**
 * The dashboard's JSON endpoints: each one is a control-API call made with the caller's own
 * ArrayClient, so ApiGuard authenticates, authorises, scopes to the tenant and audits exactly as
 * for the CLI. Nothing here decides who may do what; it only shapes answers for the pages.
 * The objects are what ArrayClient returns (proto/views.ts).
 */
import { ApiError, type ArrayClient } from '../../proto/ArrayClient.js';
import type * as pb from '../../proto/gen/index.js';
import type { ArrayEventView, VolumeIoCounts } from '../../proto/views.js';
import { allowed, isRole } from '../auth/permissions.js';

/** What /api/overview lists of the event history: the newest. */
export const OVERVIEW_EVENTS = 50;
export const DEFAULT_BITMAP_CELLS = 4096;
export const MAX_BITMAP_CELLS = 65536;

/** An error with its HTTP status and a message fit to show as is. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The control API's refusal as HTTP: its message is kept (it names the role needed, the fix). */
export function httpStatusOf(err: unknown): number {
  if (err instanceof HttpError) return err.status;
  if (!(err instanceof ApiError)) return 500;
  switch (err.code) {
    case 'UNAUTHENTICATED':
      return 401;
    case 'PERMISSION_DENIED':
      return 403;
    case 'NOT_FOUND':
      return 404;
    case 'INVALID_ARGUMENT':
    case 'OUT_OF_RANGE':
      return 400;
    case 'FAILED_PRECONDITION':
    case 'ALREADY_EXISTS':
      return 409;
    case 'RESOURCE_EXHAUSTED':
      return 429;
    default:
      return 500;
  }
}

export interface WhoAmI {
  user: string | null;
  roles: string[];
  tenant: string | null;
  authRequired: boolean;
  can: { faults: boolean; copies: boolean };
}

export const AUTH_OFF_WHOAMI: WhoAmI = { user: null, roles: [], tenant: null, authRequired: false, can: { faults: true, copies: true } };

/** What the user's role allows, by the same table ApiGuard checks (emulator/auth/permissions.ts). */
export function whoAmIOf(u: { name: string; role: string; tenant: string }): WhoAmI {
  const may = (path: string) => isRole(u.role) && allowed(u.role, path) === true;
  return {
    user: u.name,
    roles: [u.role],
    tenant: u.tenant === '' ? null : u.tenant,
    authRequired: true,
    can: { faults: may('/arraylab.v1.FaultService/AddFault'), copies: may('/arraylab.v1.CopyService/StartCopy') },
  };
}

/** FAILED_PRECONDITION (the event stream is off) reads as no events. */
async function recentEvents(client: ArrayClient): Promise<ArrayEventView[]> {
  try {
    const all = await client.listEvents();
    return all.slice(-OVERVIEW_EVENTS).reverse();
  } catch (err) {
    if (err instanceof ApiError && err.code === 'FAILED_PRECONDITION') return [];
    throw err;
  }
}

export async function overview(client: ArrayClient) {
  const [status, volumes, exports, copies, faults, events] = await Promise.all([
    client.getStatus(),
    client.listVolumes(),
    client.listExports(),
    client.listCopies(),
    client.listFaults(),
    recentEvents(client),
  ]);
  return { status, volumes, exports, copies, faults, events };
}

export async function volumes(client: ArrayClient, ioOf: ((volume: string) => VolumeIoCounts | undefined) | undefined) {
  const [vols, hosts] = await Promise.all([client.listVolumes(), client.listHosts()]);
  return {
    volumes: ioOf === undefined ? vols : vols.map((v) => ({ ...v, ...withIo(ioOf(v.name)) })),
    hosts: hosts.hosts,
  };
}

function withIo(io: VolumeIoCounts | undefined): { io?: VolumeIoCounts } {
  return io === undefined ? {} : { io };
}

/** GET /api/copies/:id/bitmap?cells=N: the session's units as cells (ArrayClient.copyBitmap). */
export async function copyBitmap(client: ArrayClient, id: string, cellsParam: string | null) {
  let cells = DEFAULT_BITMAP_CELLS;
  if (cellsParam !== null) {
    cells = Number(cellsParam);
    if (!Number.isSafeInteger(cells) || cells < 1 || cells > MAX_BITMAP_CELLS)
      throw new HttpError(400, `cells=${cellsParam} is not a number of cells from 1 to ${MAX_BITMAP_CELLS}; e.g. cells=${DEFAULT_BITMAP_CELLS}`);
  }
  return client.copyBitmap(id, cells);
}

/** tape: an array without a tape library lists no cartridges. */
export async function cartridges(client: ArrayClient) {
  try {
    return { cartridges: await client.listCartridges() };
  } catch (err) {
    if (err instanceof ApiError && (err.code === 'UNIMPLEMENTED' || err.code === 'FAILED_PRECONDITION')) return { cartridges: [] };
    throw err;
  }
}

const TARGETS = ['volume', 'export', 'session', 'tape', 'remote'] as const;
const STRING_FIELDS = ['lba', 'window', 'flag', 'errno', 'sense', 'distribution', 'scope', 'code', 'label'] as const;
const NUMBER_FIELDS = ['probability', 'seed', 'every', 'after', 'ms', 'jitterMs', 'mibs', 'iops', 'bits', 'refuseMs'] as const;
const BOOLEAN_FIELDS = ['once', 'perConnection', 'permanent', 'transient', 'drain'] as const;
const FAULT_FIELDS = new Set<string>(['kind', 'target', 'ops', ...TARGETS, ...STRING_FIELDS, ...NUMBER_FIELDS, ...BOOLEAN_FIELDS]);

/**
 * POST /api/faults's body to the wire's FaultSpec, as `arraylab fault add` builds it:
 * {kind, volume: "vol1", ops: ["read"] or "read,write", probability: 0.1, ...}, or target given
 * whole ("volume:vol1"). The array checks the values; this checks only the types.
 */
export function faultSpecOf(body: unknown): pb.FaultSpec {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw new HttpError(400, 'the body must be a JSON object such as {"kind": "error", "volume": "vol1", "ops": ["read"]}');
  const b = body as Record<string, unknown>;
  const unknown = Object.keys(b).filter((k) => !FAULT_FIELDS.has(k));
  if (unknown.length > 0)
    throw new HttpError(
      400,
      `unknown fault field ${unknown.join(', ')}; use the options of arraylab fault add in camelCase (kind, volume, ops, probability, ms, ...)`,
    );
  if (typeof b.kind !== 'string' || b.kind === '') throw new HttpError(400, 'kind is missing; give a fault kind such as "error", "delay" or "pause"');
  const spec: pb.FaultSpec = { kind: b.kind };
  const targets = TARGETS.filter((t) => b[t] !== undefined);
  if (targets.length + (b.target !== undefined ? 1 : 0) > 1)
    throw new HttpError(400, `give one target, not ${[...targets, ...(b.target !== undefined ? ['target'] : [])].join(' and ')}`);
  const t = targets[0];
  if (t !== undefined) {
    if (typeof b[t] !== 'string' || b[t] === '') throw new HttpError(400, `${t} must be a name`);
    spec.target = `${t}:${b[t] as string}`;
  } else if (b.target !== undefined) {
    if (typeof b.target !== 'string') throw new HttpError(400, 'target must be text such as "volume:vol1" or "api"');
    spec.target = b.target;
  } else if (b.kind.startsWith('api-')) spec.target = 'api';
  if (b.ops !== undefined) {
    if (typeof b.ops === 'string') spec.ops = b.ops.split(',').map((s) => s.trim());
    else if (Array.isArray(b.ops) && b.ops.every((o) => typeof o === 'string')) spec.ops = b.ops as string[];
    else throw new HttpError(400, 'ops must be a list of operations such as ["read", "write"]');
  }
  for (const k of STRING_FIELDS) {
    if (b[k] === undefined) continue;
    if (typeof b[k] !== 'string') throw new HttpError(400, `${k} must be text`);
    spec[k] = b[k] as string;
  }
  for (const k of NUMBER_FIELDS) {
    if (b[k] === undefined) continue;
    if (typeof b[k] !== 'number' || !Number.isFinite(b[k])) throw new HttpError(400, `${k} must be a number`);
    spec[k] = b[k] as number;
  }
  for (const k of BOOLEAN_FIELDS) {
    if (b[k] === undefined) continue;
    if (typeof b[k] !== 'boolean') throw new HttpError(400, `${k} must be true or false`);
    spec[k] = b[k] as boolean;
  }
  return spec;
}
