/**
 * The lab file: the arrays, volumes, hosts and VMs of a lab (`arraylab lab up|down|status`).
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

export interface LabArray {
  name: string;
  /** HOST:PORT of its control API. */
  api: string;
  /** Start `arraylab serve` (detached) when nothing answers at api; lab down stops it. */
  start: boolean;
  /** Absolute; where a started array keeps its data. */
  dataDir: string;
  /**
   * Listen addresses of a started array: NBD (the VMs' via: nbd disks) and the iSCSI portal
   * (via: iscsi). Default: the built-in config's, 127.0.0.1:10809 and 127.0.0.1:3260. Unused
   * when an array already answers at api.
   */
  nbd?: string;
  iscsi?: string;
}

export interface LabVolume {
  name: string;
  sizeBytes: number;
  blockSize: 512 | 4096;
  provisioning: 'thin' | 'thick';
}

export interface LabHost {
  name: string;
  /** Initiator names, with those of the VMs listed (their default initiator names). */
  initiators: string[];
  vms: string[];
  luns: Array<{ volume: string; lun?: number }>;
}

export interface LabVm {
  name: string;
  memoryMiB: number;
  attach: Array<{ volume: string; via: 'nbd' | 'iscsi' }>;
}

export interface Lab {
  /** Absolute path of the lab file. */
  file: string;
  arrays: LabArray[];
  volumes: LabVolume[];
  hosts: LabHost[];
  vms: LabVm[];
  /**
   * Faults set once the lab is up, as one plan named "lab" (emulator/fault/README.md); each
   * entry as in a plan file, checked by the array when it is applied.
   */
  faults: Array<Record<string, unknown>>;
  /** Seeds the lab's randomness (its faults); default 0. */
  seed: number;
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
  checkKeys(root, ['arrays', 'volumes', 'hosts', 'vms', 'faults', 'seed'], '', fail);
  const baseDir = dirname(file);

  const arraysRaw = list(root.arrays, 'arrays', '[{name: array0, api: 127.0.0.1:7390, start: true, dataDir: ./lab-data}]', fail);
  if (arraysRaw.length !== 1)
    fail(
      'arrays',
      `declares ${arraysRaw.length} arrays; a lab has exactly one for now, e.g. [{name: array0, api: 127.0.0.1:7390, start: true, dataDir: ./lab-data}]`,
    );
  const arrays = arraysRaw.map((raw, i): LabArray => {
    const at = `arrays[${i}]`;
    if (!isObj(raw)) return fail(at, 'must be a mapping, e.g. {name: array0, api: 127.0.0.1:7390, start: true, dataDir: ./lab-data}');
    checkKeys(raw, ['name', 'api', 'start', 'dataDir', 'nbd', 'iscsi'], at, fail);
    const addr = (key: string, required: boolean): string | undefined => {
      const v = raw[key];
      if (v === undefined || v === null) return required ? fail(`${at}.${key}`, 'is missing; give HOST:PORT such as 127.0.0.1:7390') : undefined;
      if (typeof v !== 'string') return fail(`${at}.${key}`, `${show(v)} is not an address; use HOST:PORT such as 127.0.0.1:7390`);
      try {
        return formatHostPort(parseHostPort(v));
      } catch (err) {
        return fail(`${at}.${key}`, (err as Error).message);
      }
    };
    const start = raw.start ?? false;
    if (typeof start !== 'boolean') fail(`${at}.start`, `${show(start)} is not true or false`);
    const dataDir = raw.dataDir ?? './lab-data';
    if (typeof dataDir !== 'string' || dataDir === '')
      fail(`${at}.dataDir`, `${show(dataDir)} is not a directory path; use a path such as ./lab-data (relative to the lab file)`);
    const nbd = addr('nbd', false);
    const iscsi = addr('iscsi', false);
    return {
      name: name(raw.name, `${at}.name`, 'array', fail),
      api: addr('api', true)!,
      start: start as boolean,
      dataDir: resolve(baseDir, dataDir as string),
      ...(nbd ? { nbd } : {}),
      ...(iscsi ? { iscsi } : {}),
    };
  });

  const volumes: LabVolume[] = [];
  list(root.volumes, 'volumes', '[{name: tv1, size: 256MiB}]', fail).forEach((raw, i) => {
    const at = `volumes[${i}]`;
    if (!isObj(raw)) return fail(at, 'must be a mapping with at least name and size, e.g. {name: tv1, size: 256MiB}');
    checkKeys(raw, ['name', 'size', 'blockSize', 'provisioning'], at, fail);
    const n = name(raw.name, `${at}.name`, 'volume', fail);
    const dup = volumes.findIndex((v) => v.name === n);
    if (dup >= 0) fail(`${at}.name`, `volume ${n} is declared twice (also volumes[${dup}]); remove one`);
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
    volumes.push({ name: n, sizeBytes, blockSize: blockSize as 512 | 4096, provisioning: provisioning as 'thin' | 'thick' });
  });
  const volumeRef = (v: unknown, at: string): string => {
    const n = name(v, at, 'volume', fail);
    if (!volumes.some((x) => x.name === n))
      fail(at, `volume ${n} is not declared in volumes (${volumes.map((x) => x.name).join(', ') || 'there are none'}); declare it there`);
    return n;
  };

  const vms: LabVm[] = [];
  list(root.vms, 'vms', '[{name: lab1, attach: [{volume: tv1, via: nbd}]}]', fail).forEach((raw, i) => {
    const at = `vms[${i}]`;
    if (!isObj(raw)) return fail(at, 'must be a mapping, e.g. {name: lab1, memory: 1024, attach: [{volume: tv1, via: nbd}]}');
    checkKeys(raw, ['name', 'memory', 'attach'], at, fail);
    const n = name(raw.name, `${at}.name`, 'VM', fail);
    const dup = vms.findIndex((v) => v.name === n);
    if (dup >= 0) fail(`${at}.name`, `VM ${n} is declared twice (also vms[${dup}]); remove one`);
    const memory = raw.memory ?? 1024;
    if (typeof memory !== 'number' || !Number.isInteger(memory) || memory < 512)
      fail(`${at}.memory`, `${show(memory)} is not a memory size; give MiB as a whole number of at least 512, e.g. 1024`);
    const attach = list(raw.attach, `${at}.attach`, '[{volume: tv1, via: nbd}]', fail).map((a, j) => {
      const aat = `${at}.attach[${j}]`;
      if (typeof a === 'string') return { volume: volumeRef(a, aat), via: 'nbd' as const };
      if (!isObj(a)) return fail(aat, 'must be a volume name or a mapping {volume: tv1, via: nbd}');
      checkKeys(a, ['volume', 'via'], aat, fail);
      const via = a.via ?? 'nbd';
      if (via !== 'nbd' && via !== 'iscsi') fail(`${aat}.via`, `${show(via)} is not a transport; use nbd or iscsi`);
      return { volume: volumeRef(a.volume, `${aat}.volume`), via: via as 'nbd' | 'iscsi' };
    });
    const twice = attach.find((a, j) => attach.findIndex((b) => b.volume === a.volume) !== j);
    if (twice) fail(`${at}.attach`, `volume ${twice.volume} is attached twice; attach each volume once`);
    vms.push({ name: n, memoryMiB: memory as number, attach });
  });

  const hosts: LabHost[] = [];
  list(root.hosts, 'hosts', '[{name: lab1, vms: [lab1], luns: [{volume: tv1, lun: 0}]}]', fail).forEach((raw, i) => {
    const at = `hosts[${i}]`;
    if (!isObj(raw)) return fail(at, 'must be a mapping, e.g. {name: lab1, vms: [lab1], luns: [{volume: tv1, lun: 0}]}');
    checkKeys(raw, ['name', 'initiators', 'vms', 'luns'], at, fail);
    const n = name(raw.name, `${at}.name`, 'host', fail);
    if (hosts.some((h) => h.name === n)) fail(`${at}.name`, `host ${n} is declared twice; remove one`);
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
      return vn;
    });
    if (initiators.length === 0 && hvms.length === 0)
      fail(at, "has no initiators and no vms; a host needs at least one (vms: [NAME] uses the VM's initiator name)");
    const luns = list(raw.luns, `${at}.luns`, '[{volume: tv1, lun: 0}]', fail).map((l, j) => {
      const lat = `${at}.luns[${j}]`;
      if (typeof l === 'string') return { volume: volumeRef(l, lat) };
      if (!isObj(l)) return fail(lat, 'must be a volume name or a mapping {volume: tv1, lun: 0}');
      checkKeys(l, ['volume', 'lun'], lat, fail);
      if (l.lun !== undefined && (typeof l.lun !== 'number' || !Number.isInteger(l.lun) || l.lun < 0 || l.lun > MAX_LUN))
        fail(`${lat}.lun`, `${show(l.lun)} is not a LUN; give a whole number from 0 to ${MAX_LUN}, or leave it out for the lowest free one`);
      return { volume: volumeRef(l.volume, `${lat}.volume`), ...(l.lun !== undefined ? { lun: l.lun as number } : {}) };
    });
    hosts.push({ name: n, initiators, vms: hvms, luns });
  });

  const faults = list(root.faults, 'faults', '[{kind: error, target: volume:tv1, ops: [read], probability: 0.01}]', fail).map((raw, i) => {
    const at = `faults[${i}]`;
    if (!isObj(raw)) return fail(at, 'must be a mapping, e.g. {kind: error, target: volume:tv1, ops: [read], probability: 0.01}');
    if (typeof raw.kind !== 'string')
      fail(`${at}.kind`, `${show(raw.kind)} is not a fault kind; use error, bad-blocks, delay, rate, pause, ... (arraylab fault add --help)`);
    const t = raw.target;
    if (typeof t === 'string' && /^(volume|export):/.test(t) && !volumes.some((v) => `${t}`.endsWith(`:${v.name}`))) {
      fail(`${at}.target`, `${t} names no volume of this lab; use one of ${volumes.map((v) => `volume:${v.name}`).join(', ') || '(none declared)'}`);
    }
    return raw;
  });
  const seed = root.seed ?? 0;
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0 || seed > 0xffffffff)
    fail('seed', `${show(seed)} is not a seed; use a whole number from 0 to 4294967295`);

  return { file, arrays, volumes, hosts, vms, faults, seed: seed as number };
}
