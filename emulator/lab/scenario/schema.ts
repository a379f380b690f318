/**
 * The scenario keys of a lab file (title, description, steps): a lab with `steps` is a scenario
 * (emulator/lab/README.md, "Scenarios"). parseLab calls parseScenario with its own fail, so the
 * messages are the lab file's: `lab FILE: steps[2].check[0].session.state: ...; fix`.
 * This file imports nothing at run time from ../schema.ts (which imports it).
 */
import { parseSize, SizeError } from '../../../proto/util/units.js';

export type CheckSpec =
  | { kind: 'volume'; array?: string; name: string; sizeAtLeast?: number; allocatedAtLeast?: number }
  | { kind: 'absent'; array?: string; volume?: string; session?: { source: string; destination: string }; fault?: { kind: string; target?: string } }
  | { kind: 'session'; array?: string; source: string; destination: string; type?: string; state?: string[]; progressAtLeast?: number }
  | { kind: 'fault'; array?: string; faultKind: string; target?: string }
  | { kind: 'event'; array?: string; eventKind: string; subject?: string }
  | { kind: 'data'; array?: string; volume: string; sameAs?: string; sha256?: string; offset: number; length?: number }
  | { kind: 'shell'; command: string };

export type CheckKind = CheckSpec['kind'];
export const CHECK_KINDS: readonly CheckKind[] = ['volume', 'absent', 'session', 'fault', 'event', 'data', 'shell'];

export interface ScenarioCheck {
  spec: CheckSpec;
  /** Shown when the check fails; else a generated message. */
  message?: string;
  /** Poll until it passes this long; 0: once. */
  timeoutMs: number;
  /** Key path, for messages: steps[0].check[1]. */
  at: string;
}

export interface ScenarioStep {
  title: string;
  instructions: string;
  setup: string[];
  check: ScenarioCheck[];
  hints: string[];
  solve: string[];
}

export interface ScenarioPart {
  title: string;
  description: string;
  steps: ScenarioStep[];
}

type Fail = (path: string, message: string) => never;
type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown): string => (v === undefined ? 'nothing' : JSON.stringify(v));

const COPY_TYPES = ['opc', 'quickopc', 'snapopcplus', 'ec', 'rec', 'ropc'];
const COPY_STATES = ['copying', 'equivalent', 'suspended', 'tracking', 'snap', 'split', 'error-suspended', 'halt'];
const STEP_KEYS = ['title', 'instructions', 'setup', 'check', 'hints', 'solve'];
const STEP_EXAMPLE = '{title: ..., instructions: ..., check: [{volume: {name: bv1}}], solve: [arraylab volume create bv1 --size 64MiB]}';

/** A duration: 30s, 2m, 500ms, 1h, or a number of seconds. Returns milliseconds. */
export function parseDurationMs(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? Math.round(v * 1000) : undefined;
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(v.trim());
  if (!m) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * unit);
}

function checkKeys(o: Obj, allowed: string[], at: string, fail: Fail): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) fail(`${at}.${k}`, `unknown key; use one of ${allowed.join(', ')}`);
}

function text(v: unknown, at: string, what: string, fail: Fail, required = true): string {
  if (v === undefined || v === null) {
    if (required) fail(at, `is missing; give ${what}`);
    return '';
  }
  if (typeof v !== 'string' || v.trim() === '') fail(at, `${show(v)} is not ${what}; give text`);
  return v as string;
}

function lines(v: unknown, at: string, fail: Fail): string[] {
  if (v === undefined || v === null) return [];
  if (typeof v === 'string') return [v];
  if (!Array.isArray(v)) fail(at, 'must be a list of shell lines, e.g. [arraylab volume create scratch --size 16MiB]');
  return (v as unknown[]).map((x, i) => text(x, `${at}[${i}]`, 'a shell line', fail));
}

function size(v: unknown, at: string, fail: Fail): number | undefined {
  if (v === undefined) return undefined;
  try {
    if (typeof v !== 'string' && typeof v !== 'number') throw new SizeError(`${show(v)} is not a size`);
    return parseSize(v);
  } catch (err) {
    if (err instanceof SizeError) fail(at, `${err.message}; give a size such as 64MiB`);
    throw err;
  }
}

function objName(v: unknown, at: string, what: string, fail: Fail): string {
  if (typeof v !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(v))
    fail(at, `${v === undefined ? 'is missing' : `${show(v)} is not a ${what} name`}; give the ${what}'s name, e.g. tv1`);
  return v as string;
}

function arrayRef(v: unknown, at: string, arrays: string[], fail: Fail): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !arrays.includes(v))
    fail(at, `${show(v)} is not one of the lab's arrays (${arrays.join(', ')}); use one of them, or leave it out for the first`);
  return v as string;
}

function parseCheckSpec(raw: Obj, key: CheckKind, at: string, arrays: string[], fail: Fail): CheckSpec {
  const v = raw[key];
  const kat = `${at}.${key}`;
  if (key === 'shell') return { kind: 'shell', command: text(v, kat, 'a shell command (exit 0 passes)', fail) };
  const examples: Record<string, string> = {
    volume: '{name: bv1, sizeAtLeast: 64MiB}',
    absent: '{volume: scratch} or {session: {source: tv1, destination: bv1}} or {fault: {kind: error, target: volume:tv1}}',
    session: '{source: tv1, destination: bv1, type: opc, state: [copying, tracking], progressAtLeast: 100}',
    fault: '{kind: error, target: volume:tv1}',
    event: '{kind: copy.state, subject: tv1}',
    data: '{volume: bv1, sameAs: tv1} or {volume: bv1, sha256: HEX}',
  };
  if (!isObj(v)) return fail(kat, `must be a mapping, e.g. ${examples[key]}`);
  const array = arrayRef(v.array, `${kat}.array`, arrays, fail);
  const arr = array !== undefined ? { array } : {};
  switch (key) {
    case 'volume': {
      checkKeys(v, ['name', 'array', 'sizeAtLeast', 'allocatedAtLeast'], kat, fail);
      const s = size(v.sizeAtLeast, `${kat}.sizeAtLeast`, fail);
      const al = size(v.allocatedAtLeast, `${kat}.allocatedAtLeast`, fail);
      return {
        kind: 'volume',
        ...arr,
        name: objName(v.name, `${kat}.name`, 'volume', fail),
        ...(s !== undefined ? { sizeAtLeast: s } : {}),
        ...(al !== undefined ? { allocatedAtLeast: al } : {}),
      };
    }
    case 'absent': {
      checkKeys(v, ['volume', 'session', 'fault', 'array'], kat, fail);
      const given = ['volume', 'session', 'fault'].filter((k) => v[k] !== undefined);
      if (given.length !== 1) fail(kat, `give one of volume, session or fault, not ${given.length ? given.join(' and ') : 'none'}; e.g. ${examples.absent}`);
      if (v.volume !== undefined) return { kind: 'absent', ...arr, volume: objName(v.volume, `${kat}.volume`, 'volume', fail) };
      if (v.session !== undefined) {
        const s = v.session;
        if (!isObj(s)) return fail(`${kat}.session`, 'must be a mapping {source: tv1, destination: bv1}');
        checkKeys(s, ['source', 'destination'], `${kat}.session`, fail);
        return {
          kind: 'absent',
          ...arr,
          session: {
            source: objName(s.source, `${kat}.session.source`, 'volume', fail),
            destination: text(s.destination, `${kat}.session.destination`, 'a volume', fail),
          },
        };
      }
      const f = v.fault;
      if (!isObj(f)) return fail(`${kat}.fault`, 'must be a mapping {kind: error, target: volume:tv1}');
      checkKeys(f, ['kind', 'target'], `${kat}.fault`, fail);
      const target = f.target === undefined ? undefined : text(f.target, `${kat}.fault.target`, 'a fault target such as volume:tv1', fail);
      return { kind: 'absent', ...arr, fault: { kind: text(f.kind, `${kat}.fault.kind`, 'a fault kind such as error', fail), ...(target ? { target } : {}) } };
    }
    case 'session': {
      checkKeys(v, ['source', 'destination', 'type', 'state', 'progressAtLeast', 'array'], kat, fail);
      if (v.type !== undefined && (typeof v.type !== 'string' || !COPY_TYPES.includes(v.type)))
        fail(`${kat}.type`, `${show(v.type)} is not a copy type; use ${COPY_TYPES.join(', ')}`);
      const states = v.state === undefined ? undefined : Array.isArray(v.state) ? v.state : [v.state];
      states?.forEach((s, i) => {
        if (typeof s !== 'string' || !COPY_STATES.includes(s))
          fail(`${kat}.state${Array.isArray(v.state) ? `[${i}]` : ''}`, `${show(s)} is not a session state; use ${COPY_STATES.join(', ')}`);
      });
      const p = v.progressAtLeast;
      if (p !== undefined && (typeof p !== 'number' || p < 0 || p > 100))
        fail(`${kat}.progressAtLeast`, `${show(p)} is not a percentage; give a number from 0 to 100`);
      return {
        kind: 'session',
        ...arr,
        source: objName(v.source, `${kat}.source`, 'volume', fail),
        destination: text(v.destination, `${kat}.destination`, 'the destination volume (REMOTE:VOLUME for REC)', fail),
        ...(v.type !== undefined ? { type: v.type as string } : {}),
        ...(states ? { state: states as string[] } : {}),
        ...(p !== undefined ? { progressAtLeast: p as number } : {}),
      };
    }
    case 'fault': {
      checkKeys(v, ['kind', 'target', 'array'], kat, fail);
      const target = v.target === undefined ? undefined : text(v.target, `${kat}.target`, 'a fault target such as volume:tv1', fail);
      return { kind: 'fault', ...arr, faultKind: text(v.kind, `${kat}.kind`, 'a fault kind such as error', fail), ...(target ? { target } : {}) };
    }
    case 'event': {
      checkKeys(v, ['kind', 'subject', 'array'], kat, fail);
      const subject = v.subject === undefined ? undefined : text(v.subject, `${kat}.subject`, "the event's subject name, e.g. tv1", fail);
      return {
        kind: 'event',
        ...arr,
        eventKind: text(v.kind, `${kat}.kind`, 'an event kind such as copy.state (arraylab events)', fail),
        ...(subject ? { subject } : {}),
      };
    }
    case 'data': {
      checkKeys(v, ['volume', 'sameAs', 'sha256', 'offset', 'length', 'array'], kat, fail);
      if ((v.sameAs === undefined) === (v.sha256 === undefined))
        fail(kat, `give either sameAs (another volume) or sha256 (of the bytes), not ${v.sameAs === undefined ? 'neither' : 'both'}; e.g. ${examples.data}`);
      if (v.sha256 !== undefined && (typeof v.sha256 !== 'string' || !/^[0-9a-fA-F]{64}$/.test(v.sha256)))
        fail(`${kat}.sha256`, `${show(v.sha256)} is not a SHA-256; give 64 hex digits (sha256sum prints them)`);
      const offset = size(v.offset ?? 0, `${kat}.offset`, fail) ?? 0;
      const length = size(v.length, `${kat}.length`, fail);
      if (length === 0) fail(`${kat}.length`, 'is 0; give a positive size, or leave it out for the rest of the volume');
      return {
        kind: 'data',
        ...arr,
        volume: objName(v.volume, `${kat}.volume`, 'volume', fail),
        ...(v.sameAs !== undefined ? { sameAs: objName(v.sameAs, `${kat}.sameAs`, 'volume', fail) } : {}),
        ...(v.sha256 !== undefined ? { sha256: (v.sha256 as string).toLowerCase() } : {}),
        offset,
        ...(length !== undefined ? { length } : {}),
      };
    }
  }
}

function parseCheck(raw: unknown, at: string, arrays: string[], fail: Fail): ScenarioCheck {
  if (!isObj(raw)) return fail(at, `must be a mapping with one check kind (${CHECK_KINDS.join(', ')}), e.g. {volume: {name: bv1}}`);
  checkKeys(raw, [...CHECK_KINDS, 'message', 'timeout'], at, fail);
  const kinds = CHECK_KINDS.filter((k) => raw[k] !== undefined);
  if (kinds.length !== 1)
    fail(
      at,
      `${kinds.length ? `has ${kinds.join(' and ')}` : 'has no check kind'}; give exactly one of ${CHECK_KINDS.join(', ')} per check (several checks: several list entries)`,
    );
  const spec = parseCheckSpec(raw, kinds[0]!, at, arrays, fail);
  const message = raw.message === undefined ? undefined : text(raw.message, `${at}.message`, 'a message shown when the check fails', fail);
  const timeoutMs = raw.timeout === undefined ? 0 : parseDurationMs(raw.timeout);
  if (timeoutMs === undefined) fail(`${at}.timeout`, `${show(raw.timeout)} is not a duration; use e.g. 30s, 2m or 500ms`);
  return { spec, ...(message !== undefined ? { message } : {}), timeoutMs: timeoutMs as number, at };
}

/**
 * The scenario keys of a lab file's top level, or undefined when it has no steps (a plain lab;
 * then title and description are refused: they would say nothing).
 */
export function parseScenario(root: Obj, arrays: string[], fail: Fail): ScenarioPart | undefined {
  if (root.steps === undefined || root.steps === null) {
    for (const k of ['title', 'description'])
      if (root[k] !== undefined) fail(k, `belongs to a scenario, and this lab has no steps; add steps: [${STEP_EXAMPLE}] or remove ${k}`);
    return undefined;
  }
  const title = text(root.title, 'title', "the scenario's title (a lab with steps is a scenario)", fail);
  const description = text(root.description, 'description', 'Markdown text', fail, false);
  if (!Array.isArray(root.steps)) return fail('steps', `must be a list of steps, e.g. [${STEP_EXAMPLE}]`);
  if (root.steps.length === 0) fail('steps', `is empty; give at least one step, e.g. ${STEP_EXAMPLE}`);
  const steps = (root.steps as unknown[]).map((raw, i): ScenarioStep => {
    const at = `steps[${i}]`;
    if (!isObj(raw)) return fail(at, `must be a mapping, e.g. ${STEP_EXAMPLE}`);
    checkKeys(raw, STEP_KEYS, at, fail);
    const stepTitle = text(raw.title, `${at}.title`, "the step's title", fail);
    const instructions = text(raw.instructions, `${at}.instructions`, 'Markdown text saying what the trainee does', fail);
    if (raw.check === undefined || raw.check === null) fail(`${at}.check`, 'is missing; give at least one check, e.g. [{volume: {name: bv1}}]');
    if (!Array.isArray(raw.check)) fail(`${at}.check`, 'must be a list of checks, e.g. [{volume: {name: bv1}}]');
    if ((raw.check as unknown[]).length === 0) fail(`${at}.check`, 'is empty; give at least one check, e.g. [{volume: {name: bv1}}]');
    const check = (raw.check as unknown[]).map((c, j) => parseCheck(c, `${at}.check[${j}]`, arrays, fail));
    const hints = (() => {
      if (raw.hints === undefined || raw.hints === null) return [];
      if (!Array.isArray(raw.hints)) return fail(`${at}.hints`, 'must be a list of hints, revealed one by one');
      return raw.hints.map((h, j) => text(h, `${at}.hints[${j}]`, 'a hint (Markdown)', fail));
    })();
    if (raw.solve === undefined || raw.solve === null)
      fail(`${at}.solve`, 'is missing; give the shell lines that make the checks pass (lab run --auto and lab solve run them)');
    const solve = lines(raw.solve, `${at}.solve`, fail);
    return { title: stepTitle, instructions, setup: lines(raw.setup, `${at}.setup`, fail), check, hints, solve };
  });
  return { title, description, steps };
}
