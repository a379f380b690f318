/**
 * What a fault is: a target, the operations it applies to, an optional LBA range, a trigger
 * and an action. This file is the one place a fault is validated, whichever way it arrives
 * (the API, a plan file, a lab file), so every path gives the same one-line errors, each with
 * an example of a valid fault.
 *
 * A spec is plain data (JSON-safe): the metadata store keeps it as JSON and the API returns
 * it as it was given, with the defaults filled in.
 */
import { STATUS_CODES, StatusError } from '../../proto/errors.js';
import { FAULT_KINDS, type FaultKind } from './kinds.js';
import { LINK_OPS, REMOTE_NAME } from './link.js';

/** The operations a fault can apply to. */
export const FAULT_OPS = ['read', 'write', 'flush', 'trim', 'zero', 'block-status', 'connect'] as const;
export type FaultOp = (typeof FAULT_OPS)[number];

/** I/O errors a device can return; NBD sends them as they are, iSCSI as sense (see errorAction). */
export const FAULT_ERRNOS = ['EIO', 'ENOSPC', 'EPERM', 'EINVAL', 'ENOMEM', 'ESHUTDOWN'] as const;
export type FaultErrno = (typeof FAULT_ERRNOS)[number];

export type FaultTarget =
  | { kind: 'volume'; name: string }
  | { kind: 'export'; name: string }
  | { kind: 'session'; id: string }
  | { kind: 'tape'; label: string }
  /** The link to a remote array (remote copy), by the name it was registered with. */
  | { kind: 'remote'; name: string }
  | { kind: 'api' };

export type TriggerSpec =
  | { kind: 'always' }
  | { kind: 'probability'; probability: number }
  | { kind: 'every'; n: number }
  | { kind: 'after'; n: number }
  | { kind: 'once' }
  /** Active from startMs to endMs after the fault was added (endMs undefined: no end). */
  | { kind: 'window'; startMs: number; endMs?: number | undefined };

/** SCSI sense key / ASC / ASCQ, e.g. 03/11/00. */
export interface SenseSpec {
  key: number;
  asc: number;
  ascq: number;
}

export type ActionSpec =
  | { kind: 'error'; errno: FaultErrno; sense?: SenseSpec | undefined }
  | { kind: 'bad-blocks'; lbas: Array<[number, number]>; permanent: boolean }
  | { kind: 'delay'; ms: number; jitterMs: number; distribution: 'fixed' | 'uniform' | 'lognormal' }
  | { kind: 'rate'; mibs?: number | undefined; iops?: number | undefined; perConnection: boolean }
  | { kind: 'pause' }
  | { kind: 'corrupt'; bits: number }
  | { kind: 'lying-flush' }
  | { kind: 'disconnect'; refuseMs: number }
  | { kind: 'reset'; scope: 'lun' | 'target' }
  | { kind: 'copy-error' }
  | { kind: 'tape-error' }
  | { kind: 'api-error'; code: string }
  | { kind: 'api-delay'; ms: number }
  | { kind: 'link-down' }
  | { kind: 'link-delay'; ms: number; jitterMs: number; distribution: 'fixed' | 'uniform' | 'lognormal' }
  | { kind: 'link-rate'; mibs: number }
  | { kind: 'link-loss' };

export { FAULT_KINDS, type FaultKind } from './kinds.js';
// The action union and the kinds list must agree: a kind without an action (or the reverse) fails here.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : never) : never;
const kindsAgree: Same<ActionSpec['kind'], FaultKind> = true;
void kindsAgree;

export interface FaultSpec {
  target: FaultTarget;
  /** Operations it applies to (API faults: RPC names, or '*'). */
  ops: string[];
  /** Logical blocks [first, last] the fault applies to (--lba FIRST-LAST); undefined: all. */
  lba?: { first: number; last: number } | undefined;
  trigger: TriggerSpec;
  /** The fault applies only while this flag is set (`arraylab fault flag set NAME`). */
  flag?: string | undefined;
  action: ActionSpec;
  /**
   * Seeds all of the fault's randomness (probability draws, delay jitter, corrupted bit
   * positions): given, derived from a plan's seed, or drawn at add and shown, for replay.
   */
  seed: number;
  /** Not kept in the array's metadata: gone at restart. */
  transient: boolean;
  /** Free text shown in lists, e.g. the plan that added it. */
  label?: string | undefined;
}

/** A fault as the array holds it. */
export interface Fault extends FaultSpec {
  id: string;
  createdAt: string;
}

/** What a bad spec raises: one line naming the problem, and an example. */
export class FaultSpecError extends StatusError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', message);
    this.name = 'FaultSpecError';
  }
}

/** Default operations per kind when none are given. */
const DEFAULT_OPS: Record<FaultKind, string[]> = {
  error: ['read', 'write'],
  'bad-blocks': ['read', 'write'],
  delay: ['read', 'write', 'flush', 'trim', 'zero'],
  rate: ['read', 'write', 'trim', 'zero'],
  pause: ['read', 'write', 'flush', 'trim', 'zero', 'block-status'],
  corrupt: ['read'],
  'lying-flush': ['flush', 'write'],
  disconnect: [],
  reset: [],
  'copy-error': ['write'],
  'tape-error': ['read', 'write'],
  'api-error': ['*'],
  'api-delay': ['*'],
  'link-down': [...LINK_OPS],
  'link-delay': [...LINK_OPS],
  'link-rate': [...LINK_OPS],
  'link-loss': [...LINK_OPS],
};

/** Which targets each kind takes. */
const TARGETS: Record<FaultKind, ReadonlyArray<FaultTarget['kind']>> = {
  error: ['volume', 'export'],
  'bad-blocks': ['volume'],
  delay: ['volume', 'export'],
  rate: ['volume', 'export'],
  pause: ['volume', 'export'],
  corrupt: ['volume', 'export'],
  'lying-flush': ['volume', 'export'],
  disconnect: ['export', 'volume'],
  reset: ['export', 'volume'],
  'copy-error': ['session', 'volume'],
  'tape-error': ['tape'],
  'api-error': ['api'],
  'api-delay': ['api'],
  'link-down': ['remote'],
  'link-delay': ['remote'],
  'link-rate': ['remote'],
  'link-loss': ['remote'],
};

const EXAMPLES: Record<FaultKind, string> = {
  error: 'arraylab fault add error --volume vol1 --ops read --lba 1000-2000 --errno EIO --probability 0.1 --seed 7',
  'bad-blocks': 'arraylab fault add bad-blocks --volume vol1 --lba 4096,4097',
  delay: 'arraylab fault add delay --volume vol1 --ms 50 --jitter-ms 10',
  rate: 'arraylab fault add rate --volume vol1 --mibs 5',
  pause: 'arraylab fault add pause --volume vol1',
  corrupt: 'arraylab fault add corrupt --volume vol1 --ops read --probability 0.01 --seed 3',
  'lying-flush': 'arraylab fault add lying-flush --volume vol1',
  disconnect: 'arraylab fault add disconnect --export vol1 --refuse-ms 5000',
  reset: 'arraylab fault add reset --export vol1 --scope lun',
  'copy-error': 'arraylab fault add copy-error --session 3',
  'tape-error': 'arraylab fault add tape-error --tape TAPE01 --ops write',
  'api-error': 'arraylab fault add api-error --ops StartCopy --code UNAVAILABLE --once',
  'api-delay': 'arraylab fault add api-delay --ops ListVolumes --ms 2000',
  'link-down': 'arraylab fault add link-down --remote site-b --window 5s-20s',
  'link-delay': 'arraylab fault add link-delay --remote site-b --ms 20 --jitter-ms 5',
  'link-rate': 'arraylab fault add link-rate --remote site-b --mibs 5',
  'link-loss': 'arraylab fault add link-loss --remote site-b --probability 0.01 --seed 7',
};

export function exampleOf(kind: FaultKind): string {
  return EXAMPLES[kind];
}

/** gRPC status names an api-error fault may return: all but OK. */
export const API_ERROR_CODES = STATUS_CODES;

/**
 * The loose form a fault arrives in: the API request, a plan's entry or a lab file's entry.
 * Strings where a user types strings (`lba: "1000-2000"`, `sense: "03/11/00"`, `target:
 * "volume:vol1"`), numbers where they type numbers; validated by parseFaultSpec.
 */
export interface LooseFaultSpec {
  kind?: string | undefined;
  target?: string | undefined;
  ops?: string[] | string | undefined;
  lba?: string | undefined;
  /** Trigger: at most one of these. */
  probability?: number | undefined;
  seed?: number | undefined;
  every?: number | undefined;
  after?: number | undefined;
  once?: boolean | undefined;
  /** Time window, "START-END" or "START-" in ms (or with s/ms suffix) after the fault is added. */
  window?: string | undefined;
  flag?: string | undefined;
  errno?: string | undefined;
  sense?: string | undefined;
  ms?: number | undefined;
  jitterMs?: number | undefined;
  distribution?: string | undefined;
  mibs?: number | undefined;
  iops?: number | undefined;
  perConnection?: boolean | undefined;
  bits?: number | undefined;
  permanent?: boolean | undefined;
  refuseMs?: number | undefined;
  scope?: string | undefined;
  code?: string | undefined;
  transient?: boolean | undefined;
  label?: string | undefined;
}

const LOOSE_KEYS = new Set<string>([
  'kind',
  'target',
  'ops',
  'lba',
  'probability',
  'seed',
  'every',
  'after',
  'once',
  'window',
  'flag',
  'errno',
  'sense',
  'ms',
  'jitterMs',
  'distribution',
  'mibs',
  'iops',
  'perConnection',
  'bits',
  'permanent',
  'refuseMs',
  'scope',
  'code',
  'transient',
  'label',
]);

/** Which action options belong to which kind (anything else given is an error, not ignored). */
const ACTION_KEYS: Record<FaultKind, readonly string[]> = {
  error: ['errno', 'sense'],
  'bad-blocks': ['permanent'],
  delay: ['ms', 'jitterMs', 'distribution'],
  rate: ['mibs', 'iops', 'perConnection'],
  pause: [],
  corrupt: ['bits'],
  'lying-flush': [],
  disconnect: ['refuseMs'],
  reset: ['scope'],
  'copy-error': [],
  'tape-error': [],
  'api-error': ['code'],
  'api-delay': ['ms'],
  'link-down': [],
  'link-delay': ['ms', 'jitterMs', 'distribution'],
  'link-rate': ['mibs'],
  'link-loss': [],
};
const ALL_ACTION_KEYS = new Set(Object.values(ACTION_KEYS).flat());

/** Random seed for a probability trigger given none: shown with the fault so a run can be replayed. */
export type SeedSource = () => number;

/**
 * Validates a loose spec (the names it targets are checked by the engine, which knows them).
 * `defaultSeed` seeds a fault given no seed (a plan passes its own, derived from its seed).
 */
export function parseFaultSpec(loose: LooseFaultSpec, defaultSeed: SeedSource): FaultSpec {
  for (const k of Object.keys(loose)) {
    if (!LOOSE_KEYS.has(k)) throw new FaultSpecError(`unknown fault option '${k}'; the options are ${[...LOOSE_KEYS].join(', ')}`);
  }
  const kindName = loose.kind;
  if (kindName === undefined || kindName === '') throw new FaultSpecError(`a fault needs a kind, one of ${FAULT_KINDS.join(', ')}`);
  if (!(FAULT_KINDS as readonly string[]).includes(kindName)) {
    throw new FaultSpecError(`unknown fault kind '${kindName}'; the kinds are ${FAULT_KINDS.join(', ')}`);
  }
  const kind = kindName as FaultKind;
  const bad = (what: string): FaultSpecError => new FaultSpecError(`${kind} fault: ${what}; for example: ${EXAMPLES[kind]}`);

  for (const k of Object.keys(loose)) {
    if (ALL_ACTION_KEYS.has(k) && !ACTION_KEYS[kind].includes(k) && loose[k as keyof LooseFaultSpec] !== undefined) {
      throw bad(`option '${k}' does not apply to this kind (it takes ${ACTION_KEYS[kind].join(', ') || 'no options of its own'})`);
    }
  }

  const target = parseTarget(loose.target, kind, bad);
  const ops = parseOps(loose.ops, kind, bad);
  const lba = loose.lba === undefined ? undefined : parseLbaRange(loose.lba, kind, bad);
  const trigger = parseTrigger(loose, kind, bad);
  const seed = loose.seed === undefined ? defaultSeed() : checkInt(loose.seed, 'seed', 0, 2 ** 32 - 1, bad);
  const flag = loose.flag === undefined ? undefined : parseFlagName(loose.flag, bad);
  const action = parseAction(loose, kind, bad);
  if (action.kind === 'bad-blocks' && lba !== undefined) throw bad('bad blocks are listed with --lba once, not as a range and a list');
  // disconnect and reset act at once on every connection, or with --ops on the connection of each
  // matching request: a trigger or a range has nothing to count or match without operations.
  if ((action.kind === 'disconnect' || action.kind === 'reset') && ops.length === 0 && (trigger.kind !== 'always' || lba !== undefined)) {
    throw bad(`a trigger or --lba needs --ops (e.g. --ops write --once); without --ops the ${kind} acts at once on every connection`);
  }
  if (target.kind === 'remote') checkLinkFault(kind, loose, trigger, bad);
  if (loose.label !== undefined && typeof loose.label !== 'string') throw bad('label must be text');
  return {
    target,
    ops,
    lba,
    trigger,
    flag,
    action,
    seed,
    transient: loose.transient === true,
    label: loose.label,
  };
}

/**
 * What link faults take beyond the common checks. A link carries transfers, not blocks: no
 * --lba. link-down and link-rate are states of the link in time (the link is down, the link is
 * slow), so of the triggers only --window makes sense for them (and --flag, which any fault
 * takes); per-transfer counting belongs to link-loss and link-delay. link-loss with no trigger
 * would drop every transfer's connection: link-down says that better, so it needs one.
 */
function checkLinkFault(kind: FaultKind, loose: LooseFaultSpec, trigger: TriggerSpec, bad: (w: string) => FaultSpecError): void {
  if (loose.lba !== undefined) throw bad('--lba does not apply to a link (it carries transfers, not blocks)');
  if (kind === 'link-down' && loose.ops !== undefined && (Array.isArray(loose.ops) ? loose.ops.length > 0 : loose.ops !== '')) {
    throw bad('a down link fails every transfer, so it takes no --ops; to fail some transfers use link-loss --ops write --probability P');
  }
  if ((kind === 'link-down' || kind === 'link-rate') && trigger.kind !== 'always' && trigger.kind !== 'window') {
    const what = kind === 'link-down' ? 'a down link is a state in time' : 'a rate cap applies to every transfer';
    throw bad(`${what}: it takes --window START-END and --flag NAME, not --${trigger.kind}; to fail some transfers use link-loss`);
  }
  if (kind === 'link-loss' && trigger.kind === 'always') {
    throw bad('give a trigger (--probability P, --every N, --after N, --once or --window); to fail every transfer use link-down');
  }
}

export function parseFlagName(name: unknown, bad: (what: string) => Error = (w) => new FaultSpecError(w)): string {
  if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name)) {
    throw bad(`flag name ${JSON.stringify(name)} must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit`);
  }
  return name;
}

function parseTarget(text: string | undefined, kind: FaultKind, bad: (w: string) => FaultSpecError): FaultTarget {
  const allowed = TARGETS[kind];
  const want = allowed.map((k) => (k === 'api' ? 'api' : `${k}:NAME`)).join(' or ');
  if (text === undefined || text === '') {
    if (allowed.includes('api')) return { kind: 'api' };
    throw bad(`it needs a target (${want})`);
  }
  const colon = text.indexOf(':');
  const tk = colon < 0 ? text : text.slice(0, colon);
  const name = colon < 0 ? '' : text.slice(colon + 1);
  if (!(allowed as readonly string[]).includes(tk)) throw bad(`target '${text}' is not one it takes (${want})`);
  if (tk === 'api') {
    if (name !== '') throw bad(`target 'api' takes no name`);
    return { kind: 'api' };
  }
  if (name === '') throw bad(`target '${text}' needs a name after the colon`);
  switch (tk) {
    case 'volume':
      return { kind: 'volume', name };
    case 'export':
      return { kind: 'export', name };
    case 'session':
      return { kind: 'session', id: name };
    case 'remote':
      if (!REMOTE_NAME.test(name)) {
        throw bad(`remote name ${JSON.stringify(name)} must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
      }
      return { kind: 'remote', name };
    default:
      return { kind: 'tape', label: name };
  }
}

export function formatTarget(t: FaultTarget): string {
  switch (t.kind) {
    case 'volume':
    case 'export':
      return `${t.kind}:${t.name}`;
    case 'session':
      return `session:${t.id}`;
    case 'tape':
      return `tape:${t.label}`;
    case 'remote':
      return `remote:${t.name}`;
    case 'api':
      return 'api';
  }
}

function parseOps(raw: string[] | string | undefined, kind: FaultKind, bad: (w: string) => FaultSpecError): string[] {
  const list = raw === undefined ? [] : (Array.isArray(raw) ? raw : raw.split(',')).map((s) => s.trim()).filter((s) => s !== '');
  if (list.length === 0) return [...DEFAULT_OPS[kind]];
  if (kind === 'api-error' || kind === 'api-delay') {
    for (const op of list) if (op !== '*' && !/^[A-Z][A-Za-z]{1,63}$/.test(op)) throw bad(`'${op}' is not an RPC name such as StartCopy, or '*'`);
    return [...new Set(list)];
  }
  if (kind === 'tape-error') {
    for (const op of list) if (op !== 'read' && op !== 'write') throw bad(`tape faults apply to read or write, not '${op}'`);
    return [...new Set(list)];
  }
  if (kind === 'copy-error') {
    for (const op of list) if (op !== 'read' && op !== 'write') throw bad(`copy faults apply to the session's read or write, not '${op}'`);
    return [...new Set(list)];
  }
  if (kind.startsWith('link-')) {
    for (const op of list) {
      if (!(LINK_OPS as readonly string[]).includes(op)) throw bad(`link faults apply to transfers: ${LINK_OPS.join(', ')}, not '${op}'`);
    }
    return [...new Set(list)];
  }
  for (const op of list) {
    if (!(FAULT_OPS as readonly string[]).includes(op)) throw bad(`unknown operation '${op}'; the operations are ${FAULT_OPS.join(', ')}`);
  }
  return [...new Set(list)];
}

/** Block numbers: "N", "N-M" (inclusive), or a comma list of those. */
function parseBlockList(text: string, bad: (w: string) => FaultSpecError): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const part of text.split(',')) {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
    if (m === null) throw bad(`LBA '${part.trim()}' is not a block number or a range FIRST-LAST`);
    const first = Number(m[1]);
    const last = m[2] === undefined ? first : Number(m[2]);
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last)) throw bad(`LBA '${part.trim()}' is too large`);
    if (last < first) throw bad(`LBA range '${part.trim()}' ends before it starts`);
    out.push([first, last]);
  }
  if (out.length > 4096) throw bad(`at most 4096 LBA ranges per fault, not ${out.length}`);
  return out;
}

function parseLbaRange(text: string, kind: FaultKind, bad: (w: string) => FaultSpecError): { first: number; last: number } | undefined {
  if (kind === 'bad-blocks') return undefined; // the list is the action's
  const list = parseBlockList(text, bad);
  if (list.length !== 1) throw bad(`--lba takes one range FIRST-LAST for this kind, not a list`);
  const [first, last] = list[0]!;
  return { first, last };
}

function checkInt(v: unknown, name: string, min: number, max: number, bad: (w: string) => FaultSpecError): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max)
    throw bad(`${name} must be a whole number from ${min} to ${max}, not ${String(v)}`);
  return v;
}

function checkNumber(v: unknown, name: string, min: number, max: number, bad: (w: string) => FaultSpecError): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw bad(`${name} must be a number from ${min} to ${max}, not ${String(v)}`);
  return v;
}

function parseTrigger(l: LooseFaultSpec, kind: FaultKind, bad: (w: string) => FaultSpecError): TriggerSpec {
  const given = (['probability', 'every', 'after', 'once', 'window'] as const).filter((k) => l[k] !== undefined && l[k] !== false);
  if (given.length > 1) throw bad(`give at most one trigger, not ${given.map((g) => `--${g}`).join(' and ')}`);
  if (kind === 'bad-blocks' && given.length > 0) throw bad('bad blocks fail every read of a listed block; they take no trigger');
  switch (given[0]) {
    case 'probability':
      return { kind: 'probability', probability: checkNumber(l.probability, 'probability', 0, 1, bad) };
    case 'every':
      return { kind: 'every', n: checkInt(l.every, 'every', 1, 2 ** 31, bad) };
    case 'after':
      return { kind: 'after', n: checkInt(l.after, 'after', 0, 2 ** 31, bad) };
    case 'once':
      return { kind: 'once' };
    case 'window':
      return parseWindow(l.window ?? '', bad);
    default:
      return { kind: 'always' };
  }
}

/** "5s-20s", "500-1500" (ms), "10s-" (from 10 s on). */
function parseWindow(text: string, bad: (w: string) => FaultSpecError): TriggerSpec {
  const m = /^\s*(\d+(?:\.\d+)?)(ms|s)?\s*-\s*(?:(\d+(?:\.\d+)?)(ms|s)?)?\s*$/.exec(text);
  if (m === null) throw bad(`window '${text}' is not START-END (e.g. 5s-20s, or 10s- for no end)`);
  const ms = (n: string, unit: string | undefined): number => Math.round(Number(n) * (unit === 's' ? 1000 : 1));
  const startMs = ms(m[1]!, m[2]);
  const endMs = m[3] === undefined ? undefined : ms(m[3], m[4]);
  if (endMs !== undefined && endMs <= startMs) throw bad(`window '${text}' ends before it starts`);
  return { kind: 'window', startMs, endMs };
}

/** "03/11/00" (hex, as SCSI documents write them). */
export function parseSense(text: string, bad: (w: string) => Error = (w) => new FaultSpecError(w)): SenseSpec {
  const m = /^\s*([0-9a-fA-F]{1,2})\/([0-9a-fA-F]{1,2})\/([0-9a-fA-F]{1,2})\s*$/.exec(text);
  if (m === null) throw bad(`sense '${text}' is not KEY/ASC/ASCQ in hex, e.g. 03/11/00`);
  const key = Number.parseInt(m[1]!, 16);
  if (key > 0xf) throw bad(`sense key ${m[1]} is above 0F`);
  return { key, asc: Number.parseInt(m[2]!, 16), ascq: Number.parseInt(m[3]!, 16) };
}

export function formatSense(s: SenseSpec): string {
  const h = (n: number): string => n.toString(16).padStart(2, '0').toUpperCase();
  return `${h(s.key)}/${h(s.asc)}/${h(s.ascq)}`;
}

function parseAction(l: LooseFaultSpec, kind: FaultKind, bad: (w: string) => FaultSpecError): ActionSpec {
  switch (kind) {
    case 'error': {
      const errno = l.errno ?? 'EIO';
      if (!(FAULT_ERRNOS as readonly string[]).includes(errno)) throw bad(`errno '${errno}' is not one of ${FAULT_ERRNOS.join(', ')}`);
      const sense = l.sense === undefined ? undefined : parseSense(l.sense, bad);
      return { kind, errno: errno as FaultErrno, sense };
    }
    case 'bad-blocks': {
      if (l.lba === undefined || l.lba === '') throw bad('list the bad blocks with --lba');
      const lbas = parseBlockList(l.lba, bad);
      const count = lbas.reduce((n, [a, b]) => n + (b - a + 1), 0);
      if (count > 1_000_000) throw bad(`at most 1,000,000 bad blocks per fault, not ${count}`);
      return { kind, lbas, permanent: l.permanent === true };
    }
    case 'delay':
    case 'link-delay': {
      const ms = checkNumber(l.ms, 'ms', 0, 600_000, bad);
      const jitterMs = l.jitterMs === undefined ? 0 : checkNumber(l.jitterMs, 'jitter-ms', 0, 600_000, bad);
      const distribution = l.distribution ?? (jitterMs > 0 ? 'uniform' : 'fixed');
      if (distribution !== 'fixed' && distribution !== 'uniform' && distribution !== 'lognormal') {
        throw bad(`distribution '${distribution}' is not fixed, uniform or lognormal`);
      }
      if (distribution === 'lognormal' && ms === 0) throw bad('a log-normal delay needs --ms above 0 (its median)');
      return { kind, ms, jitterMs, distribution };
    }
    case 'rate': {
      if (l.mibs === undefined && l.iops === undefined) throw bad('give --mibs or --iops (or both)');
      const mibs = l.mibs === undefined ? undefined : checkNumber(l.mibs, 'mibs', 0.001, 1_000_000, bad);
      const iops = l.iops === undefined ? undefined : checkNumber(l.iops, 'iops', 0.001, 10_000_000, bad);
      return { kind, mibs, iops, perConnection: l.perConnection === true };
    }
    case 'corrupt':
      return { kind, bits: l.bits === undefined ? 1 : checkInt(l.bits, 'bits', 1, 4096, bad) };
    case 'disconnect':
      return { kind, refuseMs: l.refuseMs === undefined ? 0 : checkInt(l.refuseMs, 'refuse-ms', 0, 3_600_000, bad) };
    case 'reset': {
      const scope = l.scope ?? 'lun';
      if (scope !== 'lun' && scope !== 'target') throw bad(`scope '${scope}' is not lun or target`);
      return { kind, scope };
    }
    case 'api-error': {
      const code = l.code ?? 'UNAVAILABLE';
      if (!(API_ERROR_CODES as readonly string[]).includes(code)) throw bad(`code '${code}' is not a gRPC status name (${API_ERROR_CODES.join(', ')})`);
      return { kind, code };
    }
    case 'api-delay':
      return { kind, ms: checkNumber(l.ms, 'ms', 0, 600_000, bad) };
    case 'link-rate':
      return { kind, mibs: checkNumber(l.mibs, 'mibs', 0.001, 1_000_000, bad) };
    case 'link-down':
    case 'link-loss':
    case 'pause':
    case 'lying-flush':
    case 'copy-error':
    case 'tape-error':
      return { kind };
  }
}

/** One line describing a fault's action and trigger, for lists and logs. */
export function describeFault(f: FaultSpec): string {
  const a = f.action;
  let what: string;
  switch (a.kind) {
    case 'error':
      what = `error ${a.errno}${a.sense ? ` sense ${formatSense(a.sense)}` : ''}`;
      break;
    case 'bad-blocks':
      what = `bad blocks ${a.lbas.map(([x, y]) => (x === y ? `${x}` : `${x}-${y}`)).join(',')}${a.permanent ? ' (permanent)' : ''}`;
      break;
    case 'delay':
      what = `delay ${a.ms} ms${a.jitterMs ? ` ±${a.jitterMs} ms` : ''}${a.distribution === 'fixed' ? '' : ` (${a.distribution})`}`;
      break;
    case 'rate':
      what = `rate ${[a.mibs !== undefined ? `${a.mibs} MiB/s` : '', a.iops !== undefined ? `${a.iops} IOPS` : ''].filter(Boolean).join(' and ')}${a.perConnection ? ' per connection' : ''}`;
      break;
    case 'corrupt':
      what = `corrupt ${a.bits} bit${a.bits === 1 ? '' : 's'}`;
      break;
    case 'disconnect':
      what = `disconnect${a.refuseMs ? `, refuse reconnects for ${a.refuseMs} ms` : ''}`;
      break;
    case 'reset':
      what = `${a.scope} reset`;
      break;
    case 'api-error':
      what = `api error ${a.code}`;
      break;
    case 'api-delay':
      what = `api delay ${a.ms} ms`;
      break;
    case 'link-down':
      what = 'link down';
      break;
    case 'link-delay':
      what = `link delay ${a.ms} ms${a.jitterMs ? ` ±${a.jitterMs} ms` : ''}${a.distribution === 'fixed' ? '' : ` (${a.distribution})`}`;
      break;
    case 'link-rate':
      what = `link rate ${a.mibs} MiB/s`;
      break;
    case 'link-loss':
      what = 'link loss (drops the connection)';
      break;
    default:
      what = a.kind;
  }
  const t = f.trigger;
  const link = f.target.kind === 'remote';
  const unit = link ? 'transfer' : 'op';
  const when =
    t.kind === 'always'
      ? ''
      : t.kind === 'probability'
        ? ` with probability ${t.probability}`
        : t.kind === 'every'
          ? ` every ${t.n}th ${unit}`
          : t.kind === 'after'
            ? ` after ${t.n} ${unit}s`
            : t.kind === 'once'
              ? ' once'
              : ` from ${t.startMs} ms${t.endMs === undefined ? '' : ` to ${t.endMs} ms`}`;
  const range = f.lba ? ` on LBA ${f.lba.first}-${f.lba.last}` : '';
  // A link fault on every kind of transfer (the default) says nothing of them.
  const allOps = a.kind === 'bad-blocks' || (link && f.ops.length === LINK_OPS.length);
  const ops = f.ops.length > 0 && !allOps ? ` on ${f.ops.join(',')}` : '';
  const seeded =
    t.kind === 'probability' || a.kind === 'corrupt' || ((a.kind === 'delay' || a.kind === 'link-delay') && a.distribution !== 'fixed')
      ? ` (seed ${f.seed})`
      : '';
  return `${what}${ops}${range}${when}${seeded}${f.flag ? ` while flag ${f.flag} is set` : ''}`;
}
