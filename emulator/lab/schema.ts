/**
 * The lab file: the arrays of a lab, each with its volumes, hosts, faults, the other arrays it
 * knows (remotes) and the REC pairs it sends, and the lab's VMs (`arraylab lab up|down|status`).
 * A lab with one array may declare that array's volumes, hosts and faults at the top level (the
 * first lab files did); a lab with several declares them under each array.
 * Validation is strict like emulator/config.ts: unknown keys are errors and every message is
 * one line naming the file, the key path and the fix:
 *   lab labs/backup.yaml: vms[0].attach[1].via: "scsi" is not a transport; use nbd or iscsi
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { formatHostPort, parseHostPort } from '../../proto/util/address.js';
import { checkIscsiName, IscsiNameError } from '../array/iscsiNames.js';
import { MAX_LUN, VOLUME_NAME_PATTERN } from '../array/types.js';
import { parseSize, SizeError } from '../../proto/util/units.js';
import { ACCESS_NAME_PATTERN, TENANT_ROLES } from '../auth/AccessControl.js';
import { parseScenario, type ScenarioPart } from './scenario/schema.js';

export interface LabVolume {
  name: string;
  sizeBytes: number;
  blockSize: 512 | 4096;
  provisioning: 'thin' | 'thick';
  /** The seat (tenant) it is given to (`arraylab tenant assign`). */
  seat?: string;
}

export interface LabHost {
  name: string;
  /** Initiator names, with those of the VMs listed (their default initiator names). */
  initiators: string[];
  vms: string[];
  luns: Array<{ volume: string; lun?: number }>;
  /** The seat (tenant) it is given to. */
  seat?: string;
}

/** A seat's role: one that can belong to a tenant. */
export type SeatRole = 'monitor' | 'backup-operator' | 'operator';

/**
 * Trainee seats: on each array, a tenant and a user (role, that tenant) per name, with the
 * tenant's quotas (absent: none).
 */
export interface LabSeats {
  names: string[];
  role: SeatRole;
  maxCapacityBytes?: number;
  maxVolumes?: number;
  maxSessions?: number;
}

/** Another array this one knows as `name` (`arraylab remote add NAME --api ...`). */
export interface LabRemote {
  name: string;
  /** The lab's array it is (lab up adds it with that array's API address once it runs)... */
  array?: string;
  /** ...or HOST:PORT of an array outside the lab. */
  api?: string;
}

/** A REC pair this array sends: `arraylab copy start --type rec --src SRC --dst REMOTE:VOLUME`. */
export interface LabCopy {
  type: 'rec';
  src: string;
  /** REMOTE:VOLUME as written; remote is one of the array's remotes. */
  dst: string;
  remote: string;
  volume: string;
  mode: (typeof REC_MODES)[number];
  split: 'auto' | 'manual';
  recovery: 'auto' | 'manual';
}

export interface LabArray {
  name: string;
  /** Key path in the lab file, for messages: arrays[1]. */
  at: string;
  /**
   * HOST:PORT of its control API. Port 0 (only with start): a free port lab up picks at the
   * first start and keeps (in the data directory) for the next ones, so remotes stay valid.
   */
  api: string;
  /** Start `arraylab serve` (detached) when nothing answers at api; lab down stops it. */
  start: boolean;
  /** Absolute; where a started array keeps its data. */
  dataDir: string;
  /**
   * Listen addresses of a started array: NBD (the VMs' via: nbd disks) and the iSCSI portal
   * (via: iscsi). Default: in a one-array lab the built-in config's, 127.0.0.1:10809 and
   * 127.0.0.1:3260; with several arrays 127.0.0.1:0 (free ports). Unused when an array already
   * answers at api.
   */
  nbd?: string;
  iscsi?: string;
  volumes: LabVolume[];
  hosts: LabHost[];
  remotes: LabRemote[];
  copies: LabCopy[];
  /**
   * Faults set once the lab is up, as one plan named "lab" (emulator/fault/README.md); each
   * entry as in a plan file, checked by the array when it is applied.
   */
  faults: Array<Record<string, unknown>>;
  /** Where its volumes, hosts and faults are in the lab file: `volumes` (top level) or `arrays[0].volumes`. */
  keys: { volumes: string; hosts: string; faults: string };
}

export interface LabVm {
  name: string;
  /** The lab array whose volumes it attaches. */
  array: string;
  memoryMiB: number;
  attach: Array<{ volume: string; via: 'nbd' | 'iscsi' }>;
}

export interface Lab {
  /** Absolute path of the lab file. */
  file: string;
  arrays: LabArray[];
  vms: LabVm[];
  /** Seeds the lab's randomness (its faults); default 0. */
  seed: number;
  /** Trainee seats (none: names is empty). */
  seats: LabSeats;
  /** A lab with steps is a scenario: its title, description and steps (scenario/schema.ts). */
  scenario?: ScenarioPart;
}

export class LabError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LabError';
  }
}

type Fail = (path: string, message: string) => never;
type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown): string => (v === undefined ? 'nothing' : JSON.stringify(v));

/** REC modes (emulator/copy/CopySession.ts REC_MODES; the array refuses one it does not support). */
const REC_MODES = ['sync', 'stack', 'consistency', 'through'] as const;

const ARRAY_KEYS = ['name', 'api', 'start', 'dataDir', 'nbd', 'iscsi', 'volumes', 'hosts', 'remotes', 'copies', 'faults'];
const ARRAY_EXAMPLE = '{name: array0, api: 127.0.0.1:7390, start: true, dataDir: ./lab-data}';
const SEATS_EXAMPLE = '{count: 3, role: operator, prefix: seat} or {names: [alice, bob], role: operator}';
const SEAT_ROLES = [...TENANT_ROLES] as SeatRole[];
/** At most this many seats (each is a tenant and a user on every array). */
const MAX_SEATS = 100;

function parseSeats(v: unknown, fail: Fail): LabSeats {
  if (v === undefined || v === null) return { names: [], role: 'operator' };
  const raw: Obj = Array.isArray(v) ? { names: v } : isObj(v) ? v : fail('seats', `must be a mapping or a list of names, e.g. ${SEATS_EXAMPLE}`);
  checkKeys(raw, ['count', 'prefix', 'names', 'role', 'maxCapacity', 'maxVolumes', 'maxSessions'], 'seats', fail);
  if ((raw.count === undefined) === (raw.names === undefined))
    fail('seats', `give either count (seats prefix1..prefixN) or names, not ${raw.count === undefined ? 'neither' : 'both'}; e.g. ${SEATS_EXAMPLE}`);
  const seatName = (n: unknown, at: string): string => {
    if (typeof n !== 'string' || !ACCESS_NAME_PATTERN.test(n))
      fail(at, `${show(n)} is not a seat name; use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it names a tenant and a user)`);
    return n as string;
  };
  let names: string[];
  if (raw.count !== undefined) {
    const count = raw.count;
    if (typeof count !== 'number' || !Number.isInteger(count) || count < 1 || count > MAX_SEATS)
      fail('seats.count', `${show(count)} is not a number of seats; give a whole number from 1 to ${MAX_SEATS}`);
    if (raw.prefix !== undefined) seatName(raw.prefix, 'seats.prefix');
    const prefix = (raw.prefix as string | undefined) ?? 'seat';
    names = Array.from({ length: count as number }, (_, i) => seatName(`${prefix}${i + 1}`, 'seats.prefix'));
  } else {
    if (raw.prefix !== undefined) fail('seats.prefix', 'goes with count (prefix1..prefixN); with names, leave it out');
    names = list(raw.names, 'seats.names', '[alice, bob]', fail).map((n, i) => seatName(n, `seats.names[${i}]`));
    if (names.length === 0) fail('seats.names', 'is empty; name at least one seat, or leave seats out');
    if (names.length > MAX_SEATS) fail('seats.names', `has ${names.length} seats; a lab has at most ${MAX_SEATS}`);
    const dup = names.find((n, i) => names.indexOf(n) !== i);
    if (dup !== undefined) fail(`seats.names[${names.lastIndexOf(dup)}]`, `seat ${dup} is named twice; remove one`);
  }
  const role = choice(raw.role, 'operator', SEAT_ROLES, 'seats.role', 'a role a tenant user can have', fail);
  const seats: LabSeats = { names, role };
  if (raw.maxCapacity !== undefined) {
    const c = raw.maxCapacity;
    let bytes = 0;
    try {
      if (typeof c !== 'string' && typeof c !== 'number') throw new SizeError(`${show(c)} is not a size`);
      bytes = parseSize(c);
    } catch (err) {
      if (!(err instanceof SizeError)) throw err;
      fail('seats.maxCapacity', `${err.message}; give a size such as 1GiB (what each seat's volumes may hold in all)`);
    }
    if (bytes <= 0) fail('seats.maxCapacity', `${show(c)} is no capacity; give a size such as 1GiB, or leave it out for no limit`);
    seats.maxCapacityBytes = bytes;
  }
  for (const [key, field] of [
    ['maxVolumes', 'maxVolumes'],
    ['maxSessions', 'maxSessions'],
  ] as const) {
    const n = raw[key];
    if (n === undefined) continue;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1) fail(`seats.${key}`, `${show(n)} is not a limit; give a whole number of at least 1`);
    seats[field] = n as number;
  }
  return seats;
}

function checkKeys(o: Obj, allowed: string[], at: string, fail: Fail): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) fail(at ? `${at}.${k}` : k, `unknown key; use one of ${allowed.join(', ')}`);
  }
}

function name(v: unknown, at: string, what: string, fail: Fail): string {
  if (v === undefined) fail(at, `is missing; every ${what} needs a name`);
  if (typeof v !== 'string' || !VOLUME_NAME_PATTERN.test(v))
    fail(at, `${show(v)} is not a ${what} name; use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  return v as string;
}

function list(v: unknown, at: string, example: string, fail: Fail): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) fail(at, `must be a list, e.g. ${example}`);
  return v as unknown[];
}

function choice<T extends string>(v: unknown, dflt: T, allowed: readonly T[], at: string, what: string, fail: Fail): T {
  const x = v ?? dflt;
  if (typeof x !== 'string' || !allowed.includes(x as T)) fail(at, `${show(x)} is not ${what}; use ${allowed.join(', ')}`);
  return x as T;
}

export function loadLab(path: string): Lab {
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
    throw new LabError(`lab ${file}: cannot read it: ${reason}; check the path (an example: vm-images/labs/backup-restore.yaml)`);
  }
  return parseLab(text, file);
}

/** A volume's or host's `seat:`: one of the lab's seats. */
function seatRef(v: unknown, at: string, seats: LabSeats, fail: Fail): string {
  if (typeof v !== 'string' || !seats.names.includes(v))
    fail(
      at,
      `${show(v)} is not one of the lab's seats (${seats.names.length ? seats.names.join(', ') : 'it declares none'}); use one of them${seats.names.length ? '' : `, after declaring seats: ${SEATS_EXAMPLE}`}`,
    );
  return v as string;
}

function parseVolumes(raws: unknown[], key: string, seats: LabSeats, fail: Fail): LabVolume[] {
  const volumes: LabVolume[] = [];
  raws.forEach((raw, i) => {
    const at = `${key}[${i}]`;
    if (!isObj(raw)) return fail(at, 'must be a mapping with at least name and size, e.g. {name: tv1, size: 256MiB}');
    checkKeys(raw, ['name', 'size', 'blockSize', 'provisioning', 'seat'], at, fail);
    const n = name(raw.name, `${at}.name`, 'volume', fail);
    const dup = volumes.findIndex((v) => v.name === n);
    if (dup >= 0) fail(`${at}.name`, `volume ${n} is declared twice (also ${key}[${dup}]); remove one`);
    if (raw.size === undefined) fail(`${at}.size`, 'is missing; give a size such as 256MiB or 1GiB');
    if (typeof raw.size !== 'string' && typeof raw.size !== 'number')
      fail(`${at}.size`, `${show(raw.size)} is not a size; use a number with a unit such as 256MiB`);
    let sizeBytes = 0;
    try {
      sizeBytes = parseSize(raw.size as string | number);
    } catch (err) {
      if (err instanceof SizeError) fail(`${at}.size`, err.message);
      throw err;
    }
    const blockSize = raw.blockSize ?? 512;
    if (blockSize !== 512 && blockSize !== 4096) fail(`${at}.blockSize`, `${show(blockSize)} is not a block size; use 512 or 4096`);
    if (sizeBytes === 0 || sizeBytes % (blockSize as number) !== 0)
      fail(`${at}.size`, `${sizeBytes} bytes is not a positive multiple of the block size ${blockSize}; round it, e.g. 256MiB`);
    const provisioning = raw.provisioning ?? 'thin';
    if (provisioning !== 'thin' && provisioning !== 'thick') fail(`${at}.provisioning`, `${show(provisioning)} is not a provisioning type; use thin or thick`);
    volumes.push({
      name: n,
      sizeBytes,
      blockSize: blockSize as 512 | 4096,
      provisioning: provisioning as 'thin' | 'thick',
      ...(raw.seat !== undefined ? { seat: seatRef(raw.seat, `${at}.seat`, seats, fail) } : {}),
    });
  });
  return volumes;
}

export function parseLab(text: string, file: string): Lab {
  const fail: Fail = (path, message) => {
    throw new LabError(`lab ${file}: ${path ? `${path}: ` : ''}${message}`);
  };
  const doc = parseDocument(text, { uniqueKeys: true });
  const syntax = doc.errors[0];
  if (syntax) {
    const pos = syntax.linePos?.[0];
    const what = syntax.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    fail('', `YAML syntax error at ${pos ? `line ${pos.line}, column ${pos.col}` : 'unknown position'}: ${what}; fix the YAML`);
  }
  const root: unknown = doc.toJS();
  if (!isObj(root)) return fail('', 'the top level must be a mapping with arrays, volumes, hosts, vms and optionally faults and seed');
  checkKeys(root, ['arrays', 'volumes', 'hosts', 'vms', 'faults', 'seed', 'seats', 'title', 'description', 'steps'], '', fail);
  const baseDir = dirname(file);
  const seats = parseSeats(root.seats, fail);

  const arraysRaw = list(root.arrays, 'arrays', `[${ARRAY_EXAMPLE}]`, fail);
  if (arraysRaw.length === 0) fail('arrays', `declares no array; a lab needs at least one, e.g. [${ARRAY_EXAMPLE}]`);
  const several = arraysRaw.length > 1;
  // With several arrays, top-level volumes, hosts and faults would belong to none in particular.
  if (several) {
    for (const key of ['volumes', 'hosts', 'faults'] as const) {
      if (root[key] !== undefined && root[key] !== null)
        fail(key, `a lab with several arrays declares ${key} under each array; move them to arrays[N].${key} of the array they belong to`);
    }
  }

  // First each array's own keys and volumes: remotes, copies, VMs and hosts refer to them.
  const arrays = arraysRaw.map((raw, i): LabArray => {
    const at = `arrays[${i}]`;
    if (!isObj(raw)) return fail(at, `must be a mapping, e.g. ${ARRAY_EXAMPLE}`);
    checkKeys(raw, ARRAY_KEYS, at, fail);
    const n = name(raw.name, `${at}.name`, 'array', fail);
    const start = raw.start ?? false;
    if (typeof start !== 'boolean') fail(`${at}.start`, `${show(start)} is not true or false`);
    const addr = (key: string): string | undefined => {
      const v = raw[key];
      if (v === undefined || v === null) return undefined;
      if (typeof v !== 'string') return fail(`${at}.${key}`, `${show(v)} is not an address; use HOST:PORT such as 127.0.0.1:7390`);
      try {
        return formatHostPort(parseHostPort(v));
      } catch (err) {
        return fail(`${at}.${key}`, (err as Error).message);
      }
    };
    let api = addr('api');
    if (api === undefined) {
      if (!start)
        fail(`${at}.api`, 'is missing; give HOST:PORT of a running array such as 127.0.0.1:7390, or set start: true (lab up then starts one on a free port)');
      api = '127.0.0.1:0';
    } else if (parseHostPort(api).port === 0 && !start) {
      fail(`${at}.api`, `${api}: port 0 is a free port lab up picks for an array it starts; set start: true, or give the address of a running array`);
    }
    const dataDir = raw.dataDir ?? (several ? `./lab-data/${n}` : './lab-data');
    if (typeof dataDir !== 'string' || dataDir === '')
      fail(`${at}.dataDir`, `${show(dataDir)} is not a directory path; use a path such as ./lab-data (relative to the lab file)`);
    // Two arrays cannot share the built-in config's ports: with several, free ports by default.
    const nbd = addr('nbd') ?? (several ? '127.0.0.1:0' : undefined);
    const iscsi = addr('iscsi') ?? (several ? '127.0.0.1:0' : undefined);
    const keys = several
      ? { volumes: `${at}.volumes`, hosts: `${at}.hosts`, faults: `${at}.faults` }
      : {
          volumes: raw.volumes !== undefined ? `${at}.volumes` : 'volumes',
          hosts: raw.hosts !== undefined ? `${at}.hosts` : 'hosts',
          faults: raw.faults !== undefined ? `${at}.faults` : 'faults',
        };
    if (!several) {
      for (const key of ['volumes', 'hosts', 'faults'] as const) {
        if (raw[key] !== undefined && root[key] !== undefined)
          fail(`${at}.${key}`, `the lab declares ${key} at the top level too; declare them in one place (the top-level ones are this array's)`);
      }
    }
    const from = (key: 'volumes' | 'hosts' | 'faults') => (keys[key] === key ? root[key] : raw[key]);
    return {
      name: n,
      at,
      api,
      start: start as boolean,
      dataDir: resolve(baseDir, dataDir as string),
      ...(nbd ? { nbd } : {}),
      ...(iscsi ? { iscsi } : {}),
      volumes: parseVolumes(list(from('volumes'), keys.volumes, '[{name: tv1, size: 256MiB}]', fail), keys.volumes, seats, fail),
      hosts: [],
      remotes: [],
      copies: [],
      faults: [],
      keys,
    };
  });
  const rawOf = (a: LabArray) => arraysRaw[Number(/\d+/.exec(a.at)![0])] as Obj;
  const fromKey = (a: LabArray, key: 'hosts' | 'faults'): unknown => (a.keys[key] === key ? root[key] : rawOf(a)[key]);

  // Arrays are told apart by name, and a started one needs addresses and a data directory of its own.
  const seen = new Map<string, string>();
  for (const a of arrays) {
    const dup = arrays.find((b) => b !== a && b.name === a.name);
    if (dup && arrays.indexOf(dup) < arrays.indexOf(a))
      fail(`${a.at}.name`, `array ${a.name} is declared twice (also ${dup.at}); give each array its own name`);
    for (const key of ['api', 'nbd', 'iscsi'] as const) {
      const v = a[key];
      if (v === undefined || parseHostPort(v).port === 0 || (key !== 'api' && !a.start)) continue;
      const other = seen.get(v);
      if (other) fail(`${a.at}.${key}`, `${v} is also ${other}; give each array its own port (0: a free port)`);
      seen.set(v, `${a.at}.${key}`);
    }
    const sameDir = arrays.find((b) => b !== a && b.dataDir === a.dataDir);
    if (sameDir && a.start && sameDir.start && arrays.indexOf(sameDir) < arrays.indexOf(a))
      fail(`${a.at}.dataDir`, `${a.dataDir} is also the data directory of ${sameDir.at}; give each array its own, e.g. ./lab-data/${a.name}`);
  }
  const arrayByName = new Map(arrays.map((a) => [a.name, a]));
  const first = arrays[0]!;

  const volumeRef = (a: LabArray, v: unknown, at: string): string => {
    const n = name(v, at, 'volume', fail);
    if (!a.volumes.some((x) => x.name === n))
      fail(at, `volume ${n} is not declared in ${a.keys.volumes} (${a.volumes.map((x) => x.name).join(', ') || 'there are none'}); declare it there`);
    return n;
  };

  const vms: LabVm[] = [];
  list(root.vms, 'vms', '[{name: lab1, attach: [{volume: tv1, via: nbd}]}]', fail).forEach((raw, i) => {
    const at = `vms[${i}]`;
    if (!isObj(raw)) return fail(at, 'must be a mapping, e.g. {name: lab1, memory: 1024, attach: [{volume: tv1, via: nbd}]}');
    checkKeys(raw, ['name', 'array', 'memory', 'attach'], at, fail);
    const n = name(raw.name, `${at}.name`, 'VM', fail);
    const dup = vms.findIndex((v) => v.name === n);
    if (dup >= 0) fail(`${at}.name`, `VM ${n} is declared twice (also vms[${dup}]); remove one`);
    let a = first;
    if (raw.array !== undefined) {
      const an = name(raw.array, `${at}.array`, 'array', fail);
      a = arrayByName.get(an) ?? fail(`${at}.array`, `array ${an} is not declared in arrays (${arrays.map((x) => x.name).join(', ')}); use one of them`);
    }
    const memory = raw.memory ?? 1024;
    if (typeof memory !== 'number' || !Number.isInteger(memory) || memory < 512)
      fail(`${at}.memory`, `${show(memory)} is not a memory size; give MiB as a whole number of at least 512, e.g. 1024`);
    const attach = list(raw.attach, `${at}.attach`, '[{volume: tv1, via: nbd}]', fail).map((x, j) => {
      const aat = `${at}.attach[${j}]`;
      if (typeof x === 'string') return { volume: volumeRef(a, x, aat), via: 'nbd' as const };
      if (!isObj(x)) return fail(aat, 'must be a volume name or a mapping {volume: tv1, via: nbd}');
      checkKeys(x, ['volume', 'via'], aat, fail);
      const via = x.via ?? 'nbd';
      if (via !== 'nbd' && via !== 'iscsi') fail(`${aat}.via`, `${show(via)} is not a transport; use nbd or iscsi`);
      return { volume: volumeRef(a, x.volume, `${aat}.volume`), via: via as 'nbd' | 'iscsi' };
    });
    const twice = attach.find((x, j) => attach.findIndex((b) => b.volume === x.volume) !== j);
    if (twice) fail(`${at}.attach`, `volume ${twice.volume} is attached twice; attach each volume once`);
    vms.push({ name: n, array: a.name, memoryMiB: memory as number, attach });
  });

  for (const a of arrays) {
    const key = a.keys.hosts;
    list(fromKey(a, 'hosts'), key, '[{name: lab1, vms: [lab1], luns: [{volume: tv1, lun: 0}]}]', fail).forEach((raw, i) => {
      const at = `${key}[${i}]`;
      if (!isObj(raw)) return fail(at, 'must be a mapping, e.g. {name: lab1, vms: [lab1], luns: [{volume: tv1, lun: 0}]}');
      checkKeys(raw, ['name', 'initiators', 'vms', 'luns', 'seat'], at, fail);
      const n = name(raw.name, `${at}.name`, 'host', fail);
      if (a.hosts.some((h) => h.name === n)) fail(`${at}.name`, `host ${n} is declared twice; remove one`);
      const initiators = list(raw.initiators, `${at}.initiators`, '[iqn.1994-05.com.redhat:web1]', fail).map((v, j) => {
        try {
          return checkIscsiName(v);
        } catch (err) {
          if (err instanceof IscsiNameError) fail(`${at}.initiators[${j}]`, err.message);
          throw err;
        }
      });
      const hvms = list(raw.vms, `${at}.vms`, '[lab1]', fail).map((v, j) => {
        const vn = name(v, `${at}.vms[${j}]`, 'VM', fail);
        if (!vms.some((x) => x.name === vn)) fail(`${at}.vms[${j}]`, `VM ${vn} is not declared in vms; declare it there`);
        // Its initiator name and its NBD identity belong to one host.
        const other = a.hosts.findIndex((x) => x.vms.includes(vn));
        if (other >= 0) fail(`${at}.vms[${j}]`, `VM ${vn} is also in ${key}[${other}] (host ${a.hosts[other]!.name}); a VM belongs to one host`);
        return vn;
      });
      if (initiators.length === 0 && hvms.length === 0)
        fail(at, "has no initiators and no vms; a host needs at least one (vms: [NAME] uses the VM's initiator name)");
      const luns = list(raw.luns, `${at}.luns`, '[{volume: tv1, lun: 0}]', fail).map((l, j) => {
        const lat = `${at}.luns[${j}]`;
        if (typeof l === 'string') return { volume: volumeRef(a, l, lat) };
        if (!isObj(l)) return fail(lat, 'must be a volume name or a mapping {volume: tv1, lun: 0}');
        checkKeys(l, ['volume', 'lun'], lat, fail);
        if (l.lun !== undefined && (typeof l.lun !== 'number' || !Number.isInteger(l.lun) || l.lun < 0 || l.lun > MAX_LUN))
          fail(`${lat}.lun`, `${show(l.lun)} is not a LUN; give a whole number from 0 to ${MAX_LUN}, or leave it out for the lowest free one`);
        return { volume: volumeRef(a, l.volume, `${lat}.volume`), ...(l.lun !== undefined ? { lun: l.lun as number } : {}) };
      });
      a.hosts.push({ name: n, initiators, vms: hvms, luns, ...(raw.seat !== undefined ? { seat: seatRef(raw.seat, `${at}.seat`, seats, fail) } : {}) });
    });
  }

  // NBD under host affinity (an array with hosts): a client sees only the volumes of the host its
  // TLS identity belongs to, so a VM's NBD disks must be mapped to the one host it is in.
  for (const [i, vm] of vms.entries()) {
    const a = arrayByName.get(vm.array)!;
    if (a.hosts.length === 0) continue;
    for (const [j, d] of vm.attach.entries()) {
      if (d.via !== 'nbd') continue;
      const at = `vms[${i}].attach[${j}]`;
      const hi = a.hosts.findIndex((h) => h.vms.includes(vm.name));
      if (hi < 0)
        fail(
          at,
          `VM ${vm.name} attaches ${d.volume} via nbd, and array ${a.name} has hosts (${a.keys.hosts}), so NBD clients see only their host's volumes; list ${vm.name} in the vms of one of them and map ${d.volume} to it (luns)`,
        );
      const h = a.hosts[hi]!;
      if (!h.luns.some((l) => l.volume === d.volume))
        fail(
          at,
          `volume ${d.volume} is not mapped to host ${h.name} (${a.keys.hosts}[${hi}]), VM ${vm.name}'s host, and over NBD a VM sees only its host's volumes; add ${d.volume} to ${a.keys.hosts}[${hi}].luns`,
        );
    }
  }

  // Remotes: each array's view of the others (array X knows array Y as NAME).
  for (const a of arrays) {
    const key = `${a.at}.remotes`;
    list(rawOf(a).remotes, key, '[{name: site-b, array: site-b}]', fail).forEach((raw, i) => {
      const at = `${key}[${i}]`;
      // A bare name is the lab's array of that name, known by its own name.
      const r = typeof raw === 'string' ? { name: raw, array: raw } : raw;
      if (!isObj(r)) return fail(at, 'must be an array name or a mapping, e.g. {name: site-b, array: site-b} or {name: far, api: 10.0.0.5:7390}');
      checkKeys(r, ['name', 'array', 'api'], at, fail);
      const n = name(r.name, `${at}.name`, 'remote', fail);
      if (a.remotes.some((x) => x.name === n)) fail(`${at}.name`, `remote ${n} is declared twice on array ${a.name}; remove one`);
      if ((r.array === undefined) === (r.api === undefined))
        fail(
          at,
          `give either array (one of the lab's arrays: ${arrays.map((x) => x.name).join(', ')}) or api (HOST:PORT of an array outside the lab), not ${r.array === undefined ? 'neither' : 'both'}`,
        );
      if (r.array !== undefined) {
        const an = name(r.array, `${at}.array`, 'array', fail);
        const other = arrayByName.get(an);
        if (!other)
          fail(
            `${at}.array`,
            `array ${an} is not declared in arrays (${arrays.map((x) => x.name).join(', ')}); declare it there, or give api: HOST:PORT for an array outside the lab`,
          );
        if (other === a)
          fail(
            `${at}.array`,
            `array ${an} is this array; a remote is another array, e.g. one of ${
              arrays
                .filter((x) => x !== a)
                .map((x) => x.name)
                .join(', ') || '(declare a second array)'
            }`,
          );
        a.remotes.push({ name: n, array: an });
      } else {
        let api: string;
        try {
          api =
            typeof r.api === 'string'
              ? formatHostPort(parseHostPort(r.api))
              : fail(`${at}.api`, `${show(r.api)} is not an address; use HOST:PORT such as 10.0.0.5:7390`);
        } catch (err) {
          if (err instanceof LabError) throw err;
          return fail(`${at}.api`, (err as Error).message);
        }
        if (parseHostPort(api).port === 0)
          fail(`${at}.api`, `${api}: a remote's port cannot be 0; give the port its array listens on, or array: NAME for one of the lab's arrays`);
        const lab = arrays.find((x) => x.api === api && x !== a);
        if (lab) fail(`${at}.api`, `${api} is the lab's array ${lab.name}; write array: ${lab.name} instead`);
        a.remotes.push({ name: n, api });
      }
    });
  }

  // REC pairs: each on the array that holds its source.
  for (const a of arrays) {
    const key = `${a.at}.copies`;
    list(rawOf(a).copies, key, '[{type: rec, src: vol1, dst: site-b:vol1, mode: sync}]', fail).forEach((raw, i) => {
      const at = `${key}[${i}]`;
      if (!isObj(raw)) return fail(at, 'must be a mapping, e.g. {type: rec, src: vol1, dst: site-b:vol1, mode: sync}');
      checkKeys(raw, ['type', 'src', 'dst', 'mode', 'split', 'recovery'], at, fail);
      if ((raw.type ?? 'rec') !== 'rec')
        fail(`${at}.type`, `${show(raw.type)} is not a copy type a lab starts; use rec (start local copies with arraylab copy start)`);
      const src = volumeRef(a, raw.src, `${at}.src`);
      const dst = raw.dst;
      const m = typeof dst === 'string' ? /^([^:]+):([^:]+)$/.exec(dst) : null;
      if (!m) return fail(`${at}.dst`, `${show(dst)} is not a remote volume; use REMOTE:VOLUME with REMOTE one of ${a.at}.remotes, e.g. site-b:${src}`);
      const [, rn, vn] = m as unknown as [string, string, string];
      const remote = a.remotes.find((x) => x.name === rn);
      if (!remote)
        fail(
          `${at}.dst`,
          `remote ${rn} is not declared in ${a.at}.remotes (${a.remotes.map((x) => x.name).join(', ') || 'there are none'}); declare it there, e.g. {name: ${rn}, array: ${rn}}`,
        );
      name(vn, `${at}.dst`, 'volume', fail);
      const other = remote.array !== undefined ? arrayByName.get(remote.array)! : undefined;
      if (other) {
        const d = other.volumes.find((x) => x.name === vn);
        if (!d) fail(`${at}.dst`, `volume ${vn} is not declared in ${other.keys.volumes} (array ${other.name}); declare it there`);
        const s = a.volumes.find((x) => x.name === src)!;
        if (d.blockSize !== s.blockSize)
          fail(`${at}.dst`, `${other.name}'s ${vn} has ${d.blockSize}-byte blocks and ${src} ${s.blockSize}-byte blocks; declare them with one block size`);
        if (d.sizeBytes < s.sizeBytes)
          fail(`${at}.dst`, `${other.name}'s ${vn} (${d.sizeBytes} bytes) is smaller than ${src} (${s.sizeBytes} bytes); declare it at least as large`);
        const twice = arrays
          .flatMap((x) => x.copies.map((c) => ({ x, c })))
          .find(({ x, c }) => x.remotes.find((r) => r.name === c.remote)?.array === other.name && c.volume === vn);
        if (twice)
          fail(
            `${at}.dst`,
            `${other.name}'s ${vn} is already the destination of a pair of ${twice.x.name} (${twice.c.src} -> ${twice.c.dst}); a volume is the destination of one pair`,
          );
      }
      if (a.copies.some((c) => c.src === src && c.dst === dst)) fail(at, `the pair ${src} -> ${dst} is declared twice; remove one`);
      a.copies.push({
        type: 'rec',
        src,
        dst: dst as string,
        remote: rn,
        volume: vn,
        mode: choice(raw.mode, 'sync', REC_MODES, `${at}.mode`, 'a REC mode', fail),
        split: choice(raw.split, 'auto', ['auto', 'manual'] as const, `${at}.split`, 'a split mode', fail),
        recovery: choice(raw.recovery, 'auto', ['auto', 'manual'] as const, `${at}.recovery`, 'a recovery mode', fail),
      });
    });
  }

  for (const a of arrays) {
    const key = a.keys.faults;
    a.faults = list(fromKey(a, 'faults'), key, '[{kind: error, target: volume:tv1, ops: [read], probability: 0.01}]', fail).map((raw, i) => {
      const at = `${key}[${i}]`;
      if (!isObj(raw)) return fail(at, 'must be a mapping, e.g. {kind: error, target: volume:tv1, ops: [read], probability: 0.01}');
      if (typeof raw.kind !== 'string')
        fail(`${at}.kind`, `${show(raw.kind)} is not a fault kind; use error, bad-blocks, delay, rate, pause, ... (arraylab fault add --help)`);
      const t = raw.target;
      if (typeof t === 'string' && /^(volume|export):/.test(t) && !a.volumes.some((v) => `${t}`.endsWith(`:${v.name}`))) {
        const which = several ? `of array ${a.name}` : 'of this lab';
        fail(`${at}.target`, `${t} names no volume ${which}; use one of ${a.volumes.map((v) => `volume:${v.name}`).join(', ') || '(none declared)'}`);
      }
      // A link fault names a remote of this array: target remote:NAME.
      const remote = typeof t === 'string' && t.startsWith('remote:') ? t.slice('remote:'.length) : undefined;
      if (remote !== undefined && !a.remotes.some((r) => r.name === remote))
        fail(
          `${at}.target`,
          `${t} names no remote of array ${a.name}; use one of ${a.remotes.map((r) => `remote:${r.name}`).join(', ') || '(none declared)'}, declared in ${a.at}.remotes`,
        );
      return raw;
    });
  }

  const seed = root.seed ?? 0;
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0 || seed > 0xffffffff)
    fail('seed', `${show(seed)} is not a seed; use a whole number from 0 to 4294967295`);

  const names = arrays.map((a) => a.name);
  const scenario = parseScenario(root, names, fail);
  return { file, arrays, vms, seed: seed as number, seats, ...(scenario ? { scenario } : {}) };
}
