/**
 * The emulator's configuration: a YAML file, or the built-in default below, then CLI flags.
 *
 * Validation is strict (unknown keys are errors, so a typo does not silently fall back to a
 * default) and every error is one line naming the file, the key path and the fix:
 *   config /etc/arraylab.yaml: volumes[1].size: "10XB" is not a size; use a number with a unit such as 64MiB or 10GiB
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { formatHostPort, isLoopbackHost, parseHostPort, type HostPort } from '../proto/util/address.js';
import { checkIscsiName, IscsiNameError } from './array/iscsiNames.js';
import { CHAP_ALGORITHM_NAMES, chapValueProblem } from './iscsi/chap.js';
import { VOLUME_NAME_PATTERN, type LogicalBlockSize, type Provisioning, type VolumeSpec as ArrayVolumeSpec } from './array/types.js';
import { isLogLevel, LOG_LEVELS, type LogLevel } from '../proto/util/log.js';
import { parseSize, SizeError } from '../proto/util/units.js';

/** Used when no --config is given. Paths in it are relative to the working directory. */
export const DEFAULT_CONFIG_YAML = `# arraylab built-in default configuration
dataDir: ./arraylab-data
backend: file
listen:
  nbd: 127.0.0.1:10809
  iscsi: 127.0.0.1:3260
  api: 127.0.0.1:7390
  # Prometheus /metrics (unauthenticated: keep it on loopback); off: no metrics.
  metrics: 127.0.0.1:9390
# Target name iqn.2026-11.lab.arraylab:array-<array id>; until a host is defined
# (arraylab host add), every initiator sees every volume.
iscsi:
  requireHostAffinity: false
log:
  level: info
volumes:
  - name: demo
    size: 1GiB
    blockSize: 512
    provisioning: thin
    description: demo volume
`;

export const DEFAULT_CONFIG_SOURCE = 'built-in default';

export interface VolumeSpec extends ArrayVolumeSpec {
  /** Where it was declared, for error messages: "config F: volumes[0]". */
  origin: string;
}

export interface ApiConfig {
  /** Tokens, roles, tenants and the audit log (emulator/auth); off only on a loopback address. */
  auth: boolean;
  /** Absolute PEM paths; with ca, client certificates are required and verified (mutual TLS). */
  tls?: { cert: string; key: string; ca?: string };
  /** The event stream (EventService, arraylab events), a bounded ring in memory: on unless false (api.events: off). */
  events?: boolean;
}

export interface NbdTlsConfig {
  /** Absolute paths; cert and key both or neither (then psk is on). */
  cert?: string;
  key?: string;
  ca?: string;
  /** TLS-PSK with the keys of hosts (arraylab host set HOST --nbd-psk). */
  psk: boolean;
  /** Refuse clients that do not start TLS. */
  require: boolean;
}

/** CHAP the iSCSI target requires of every initiator; mutual: it also proves itself. */
export interface IscsiChapConfig {
  username: string;
  secret: string;
  mutualUsername?: string;
  mutualSecret?: string;
}

export interface IscsiConfig {
  /** Canonical; null: defaultTargetName(the array's id). */
  targetName: string | null;
  /** Host affinity even with no host defined: no initiator sees a volume until mapped. */
  requireHostAffinity: boolean;
  chap: IscsiChapConfig | null;
  /**
   * CHAP algorithms the target accepts (numbers of chap.ts), in its order of preference; absent:
   * all four. Leaving MD5 out refuses MD5 CHAP, which is all libiscsi (so qemu and
   * iscsi-ls) speaks: their CHAP logins then fail, with a log line that says why.
   */
  chapAlgorithms?: readonly number[];
}

/** The target name used when the config gives none: stable for a data directory. */
export const TARGET_NAME_PREFIX = 'iqn.2026-11.lab.arraylab:array-';
export function defaultTargetName(arrayId: string): string {
  return TARGET_NAME_PREFIX + arrayId;
}

export { CHAP_SECRET_MIN_BYTES, CHAP_TEXT_MAX_BYTES } from './iscsi/chap.js';

/** tape: a cartridge the config declares; created at start-up if missing. */
export interface CartridgeSpec {
  label: string;
  capacityBytes: number;
  /** Where it was declared, for error messages: "config F: tape.cartridges[0]". */
  origin: string;
}

export interface ArraylabConfig {
  /** The config file's path, or DEFAULT_CONFIG_SOURCE. */
  source: string;
  /** Absolute. Unused by the memory backend. */
  dataDir: string;
  backend: 'file' | 'memory';
  listen: {
    nbd: HostPort;
    /** The iSCSI target's portal; null: no iSCSI. */
    iscsi: HostPort | null;
    api: HostPort;
    /** The Prometheus /metrics listener; absent: none (listen.metrics, --metrics, or serve's loopback default). */
    metrics?: HostPort;
    /** The web dashboard (emulator/dashboard); absent: none (opt-in, listen.dashboard or --dashboard). */
    dashboard?: HostPort;
  };
  /**
   * Present with listen.metrics: whether per-volume series are served (off for thousands of
   * volumes). `listener`: 'default' when nobody asked for this address (serve's loopback
   * default, the built-in config), so a busy port is a warning, not a failed start; 'off' when
   * the config says listen.metrics: off (serve adds no default then).
   */
  metrics?: { perVolume: boolean; listener?: 'default' | 'off' };
  nbd: { tls?: NbdTlsConfig };
  /** The control API: authentication (on unless turned off) and TLS. */
  api: ApiConfig;
  iscsi: IscsiConfig;
  log: { level: LogLevel };
  volumes: VolumeSpec[];
  /** tape: the tape library (cartridges live in <dataDir>/tape; memory backend: a temp dir). */
  tape: { cartridges: CartridgeSpec[] };
}

/** A configuration that cannot be used; the message is the whole one-line explanation. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export { formatHostPort, parseHostPort, type HostPort };

/** Loads the config file at `path`, or the built-in default when there is none. */
export function loadConfig(path?: string): ArraylabConfig {
  if (path === undefined) return parseConfig(DEFAULT_CONFIG_YAML, DEFAULT_CONFIG_SOURCE, process.cwd());
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
    throw new ConfigError(`config ${file}: cannot read it: ${reason}; check the --config path`);
  }
  return parseConfig(text, file, dirname(file));
}

/** Parses and validates config text; relative paths in it are resolved against baseDir. */
export function parseConfig(text: string, source: string, baseDir: string): ArraylabConfig {
  const fail = (path: string, message: string): never => {
    throw new ConfigError(`config ${source}: ${path ? `${path}: ` : ''}${message}`);
  };

  const doc = parseDocument(text, { uniqueKeys: true });
  const syntax = doc.errors[0];
  if (syntax) {
    const pos = syntax.linePos?.[0];
    const where = pos ? `line ${pos.line}, column ${pos.col}` : 'unknown position';
    const what = syntax.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    fail('', `YAML syntax error at ${where}: ${what}; fix the YAML`);
  }
  const root: unknown = doc.toJS() ?? {};
  if (!isPlainObject(root)) fail('', 'the top level must be a mapping of keys such as dataDir, listen and volumes');
  const top = root as Record<string, unknown>;
  checkKeys(top, ['dataDir', 'backend', 'listen', 'nbd', 'api', 'iscsi', 'log', 'volumes', 'tape'], '', fail);

  const dataDirRaw = top.dataDir ?? './arraylab-data';
  if (typeof dataDirRaw !== 'string' || dataDirRaw === '') fail('dataDir', `${show(dataDirRaw)} is not a directory path; use a path such as ./arraylab-data`);
  const dataDir = resolve(baseDir, dataDirRaw as string);

  const backend = top.backend ?? 'file';
  if (backend !== 'file' && backend !== 'memory') fail('backend', `${show(backend)} is not a backend; use file or memory`);

  const listenRaw = top.listen ?? {};
  if (!isPlainObject(listenRaw)) fail('listen', 'must be a mapping with nbd, iscsi and api addresses');
  const listen = listenRaw as Record<string, unknown>;
  checkKeys(listen, ['nbd', 'iscsi', 'api', 'metrics', 'dashboard'], 'listen', fail);
  const address = (key: string, fallback: string | null): HostPort | null => {
    const value = listen[key] === undefined ? fallback : listen[key];
    if (value === null || value === '') return null;
    if (typeof value !== 'string') return fail(`listen.${key}`, `${show(value)} is not an address; use HOST:PORT such as 127.0.0.1:10809`);
    try {
      return parseHostPort(value);
    } catch (err) {
      return fail(`listen.${key}`, (err as Error).message);
    }
  };
  const nbdAddr = address('nbd', '127.0.0.1:10809');
  const apiAddr = address('api', '127.0.0.1:7390');
  if (!nbdAddr) fail('listen.nbd', 'is empty; the NBD server needs an address such as 127.0.0.1:10809');
  if (!apiAddr) fail('listen.api', 'is empty; the control API needs an address such as 127.0.0.1:7390');
  const iscsiAddr = address('iscsi', null);
  const metrics = parseMetricsListen(listen.metrics, fail);
  // dashboard: HOST:PORT, or off (the same as leaving it out).
  const dashboardAddr = listen.dashboard === 'off' || listen.dashboard === false ? null : address('dashboard', null);

  const nbd: ArraylabConfig['nbd'] = {};
  if (top.nbd !== undefined && top.nbd !== null) {
    if (!isPlainObject(top.nbd)) fail('nbd', 'must be a mapping, e.g. nbd: {tls: {cert: server.crt, key: server.key}}');
    const nbdRaw = top.nbd as Record<string, unknown>;
    checkKeys(nbdRaw, ['tls'], 'nbd', fail);
    if (nbdRaw.tls !== undefined && nbdRaw.tls !== null) {
      if (!isPlainObject(nbdRaw.tls)) fail('nbd.tls', 'must be a mapping with cert and key file paths, or psk: true');
      const tls = nbdRaw.tls as Record<string, unknown>;
      checkKeys(tls, ['cert', 'key', 'ca', 'psk', 'require'], 'nbd.tls', fail);
      const psk = tls.psk ?? false;
      if (typeof psk !== 'boolean') fail('nbd.tls.psk', `${show(psk)} is not true or false`);
      const path = (key: string, required: boolean) => pemPath(tls, 'nbd.tls', key, required, baseDir, fail);
      const requireTls = tls.require ?? false;
      if (typeof requireTls !== 'boolean') fail('nbd.tls.require', `${show(requireTls)} is not true or false`);
      const ca = path('ca', false);
      // Certificates, TLS-PSK, or both: without psk the certificate is required.
      const certs = !psk || tls.cert != null || tls.key != null;
      const cert = path('cert', certs);
      const key = path('key', certs);
      if (ca && !certs) fail('nbd.tls.ca', 'verifies client certificates, which need a server certificate too: give cert and key as well');
      nbd.tls = { ...(cert && key ? { cert, key } : {}), ...(ca ? { ca } : {}), psk: psk as boolean, require: requireTls as boolean };
    }
  }

  const api: ApiConfig = { auth: true };
  if (top.api !== undefined && top.api !== null) {
    if (!isPlainObject(top.api)) fail('api', 'must be a mapping, e.g. api: {tls: {cert: api.crt, key: api.key}}');
    const apiRaw = top.api as Record<string, unknown>;
    checkKeys(apiRaw, ['auth', 'tls', 'events'], 'api', fail);
    if (apiRaw.events !== undefined) {
      if (apiRaw.events !== 'on' && apiRaw.events !== 'off' && typeof apiRaw.events !== 'boolean')
        fail('api.events', `${show(apiRaw.events)} is not on or off`);
      api.events = apiRaw.events === 'on' || apiRaw.events === true;
    }
    if (apiRaw.auth !== undefined) {
      if (apiRaw.auth !== 'on' && apiRaw.auth !== 'off' && typeof apiRaw.auth !== 'boolean') fail('api.auth', `${show(apiRaw.auth)} is not on or off`);
      api.auth = apiRaw.auth === 'on' || apiRaw.auth === true;
    }
    if (apiRaw.tls !== undefined && apiRaw.tls !== null) {
      if (!isPlainObject(apiRaw.tls)) fail('api.tls', 'must be a mapping with cert and key file paths (and ca for client certificates)');
      const tls = apiRaw.tls as Record<string, unknown>;
      checkKeys(tls, ['cert', 'key', 'ca'], 'api.tls', fail);
      const path = (key: string, required: boolean) => pemPath(tls, 'api.tls', key, required, baseDir, fail);
      const ca = path('ca', false);
      api.tls = { cert: path('cert', true)!, key: path('key', true)!, ...(ca ? { ca } : {}) };
    }
  }

  const iscsi = parseIscsi(top.iscsi, fail);

  let level: LogLevel = 'info';
  if (top.log !== undefined && top.log !== null) {
    if (!isPlainObject(top.log)) fail('log', 'must be a mapping, e.g. log: {level: info}');
    const log = top.log as Record<string, unknown>;
    checkKeys(log, ['level'], 'log', fail);
    if (log.level !== undefined) {
      if (!isLogLevel(log.level)) fail('log.level', `${show(log.level)} is not a log level; use one of ${LOG_LEVELS.join(', ')}`);
      level = log.level as LogLevel;
    }
  }

  const volumes: VolumeSpec[] = [];
  const volumesRaw = top.volumes ?? [];
  if (!Array.isArray(volumesRaw)) fail('volumes', 'must be a list of volumes, each with at least a name and a size');
  (volumesRaw as unknown[]).forEach((raw, i) => {
    const at = `volumes[${i}]`;
    if (!isPlainObject(raw)) return fail(at, 'must be a mapping with at least name and size, e.g. {name: vol1, size: 1GiB}');
    const v = raw as Record<string, unknown>;
    checkKeys(v, ['name', 'size', 'blockSize', 'provisioning', 'readOnly', 'description'], at, fail);
    if (v.name === undefined) fail(`${at}.name`, 'is missing; every volume needs a name');
    if (typeof v.name !== 'string' || !VOLUME_NAME_PATTERN.test(v.name)) {
      fail(`${at}.name`, `${show(v.name)} is not a volume name; use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    }
    const name = v.name as string;
    const dup = volumes.findIndex((s) => s.name === name);
    if (dup >= 0) fail(`${at}.name`, `volume ${name} is declared twice (also volumes[${dup}]); remove one`);
    if (v.size === undefined) fail(`${at}.size`, 'is missing; give a size such as 64MiB or 10GiB');
    let sizeBytes = 0;
    if (typeof v.size !== 'string' && typeof v.size !== 'number')
      fail(`${at}.size`, `${show(v.size)} is not a size; use a number with a unit such as 64MiB or 10GiB`);
    try {
      sizeBytes = parseSize(v.size as string | number);
    } catch (err) {
      if (err instanceof SizeError) fail(`${at}.size`, err.message);
      throw err;
    }
    const blockSize = v.blockSize ?? 512;
    if (blockSize !== 512 && blockSize !== 4096) fail(`${at}.blockSize`, `${show(blockSize)} is not a block size; use 512 or 4096`);
    if (sizeBytes === 0) fail(`${at}.size`, 'is zero; a volume needs at least one block');
    if (sizeBytes % (blockSize as number) !== 0) {
      fail(
        `${at}.size`,
        `${sizeBytes} bytes is not a multiple of the block size ${blockSize}; round it to a multiple, e.g. ${Math.ceil(sizeBytes / (blockSize as number)) * (blockSize as number)}`,
      );
    }
    const provisioning = v.provisioning ?? 'thin';
    if (provisioning !== 'thin' && provisioning !== 'thick') fail(`${at}.provisioning`, `${show(provisioning)} is not a provisioning type; use thin or thick`);
    const readOnly = v.readOnly ?? false;
    if (typeof readOnly !== 'boolean') fail(`${at}.readOnly`, `${show(readOnly)} is not true or false`);
    const description = v.description ?? '';
    if (typeof description !== 'string') fail(`${at}.description`, `${show(description)} is not text; quote it`);
    volumes.push({
      name,
      sizeBytes,
      blockSize: blockSize as LogicalBlockSize,
      provisioning: provisioning as Provisioning,
      readOnly: readOnly as boolean,
      description: description as string,
      origin: `config ${source}: ${at}`,
    });
  });

  const tape = parseTape(top.tape, source, fail);

  return {
    source,
    dataDir,
    backend: backend as 'file' | 'memory',
    listen: {
      nbd: nbdAddr!,
      iscsi: iscsiAddr,
      api: apiAddr!,
      ...(metrics?.address ? { metrics: metrics.address } : {}),
      ...(dashboardAddr ? { dashboard: dashboardAddr } : {}),
    },
    ...(metrics
      ? {
          metrics: {
            perVolume: metrics.perVolume,
            ...(metrics.address === undefined ? { listener: 'off' as const } : source === DEFAULT_CONFIG_SOURCE ? { listener: 'default' as const } : {}),
          },
        }
      : {}),
    nbd,
    api,
    iscsi,
    log: { level },
    volumes,
    tape,
  };
}

/** tape: `tape: {cartridges: [{label: T0001, capacity: 1GiB}]}`. */
function parseTape(raw: unknown, source: string, fail: Fail): ArraylabConfig['tape'] {
  const out: ArraylabConfig['tape'] = { cartridges: [] };
  if (raw === undefined || raw === null) return out;
  if (!isPlainObject(raw)) return fail('tape', 'must be a mapping, e.g. tape: {cartridges: [{label: T0001, capacity: 1GiB}]}');
  checkKeys(raw, ['cartridges'], 'tape', fail);
  const list = raw.cartridges ?? [];
  if (!Array.isArray(list)) return fail('tape.cartridges', 'must be a list of cartridges, each with a label and a capacity');
  (list as unknown[]).forEach((c, i) => {
    const at = `tape.cartridges[${i}]`;
    if (!isPlainObject(c)) return fail(at, 'must be a mapping with label and capacity, e.g. {label: T0001, capacity: 1GiB}');
    checkKeys(c, ['label', 'capacity'], at, fail);
    if (typeof c.label !== 'string' || !VOLUME_NAME_PATTERN.test(c.label)) {
      fail(`${at}.label`, `${show(c.label)} is not a cartridge label; use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit, e.g. T0001`);
    }
    const label = c.label as string;
    const dup = out.cartridges.findIndex((x) => x.label === label);
    if (dup >= 0) fail(`${at}.label`, `cartridge ${label} is declared twice (also tape.cartridges[${dup}]); remove one`);
    if (typeof c.capacity !== 'string' && typeof c.capacity !== 'number')
      fail(`${at}.capacity`, `${show(c.capacity)} is not a size; give a capacity such as 1GiB`);
    let capacityBytes = 0;
    try {
      capacityBytes = parseSize(c.capacity as string | number);
    } catch (err) {
      if (err instanceof SizeError) fail(`${at}.capacity`, err.message);
      throw err;
    }
    if (capacityBytes < 64 * 1024) fail(`${at}.capacity`, `${capacityBytes} bytes is too small for a cartridge; give at least 64KiB, e.g. 1GiB`);
    out.cartridges.push({ label, capacityBytes, origin: `config ${source}: ${at}` });
  });
  return out;
}

type Fail = (path: string, message: string) => never;

/**
 * listen.metrics: `127.0.0.1:9390`, or `{address: 127.0.0.1:9390, perVolume: off}` to drop the
 * per-volume series; `off`: no metrics listener (address undefined); absent or empty: none
 * either, but serve may add its loopback default.
 */
function parseMetricsListen(raw: unknown, fail: Fail): { address: HostPort | undefined; perVolume: boolean } | undefined {
  if (raw === undefined || raw === null || raw === '') return undefined;
  if (raw === 'off' || raw === false) return { address: undefined, perVolume: true };
  let addr: unknown = raw;
  let perVolume = true;
  if (isPlainObject(raw)) {
    checkKeys(raw, ['address', 'perVolume'], 'listen.metrics', fail);
    addr = raw.address;
    const pv = raw.perVolume ?? true;
    if (pv !== 'on' && pv !== 'off' && typeof pv !== 'boolean') fail('listen.metrics.perVolume', `${show(pv)} is not on or off`);
    perVolume = pv === 'on' || pv === true;
    if (addr === 'off' || addr === false) return { address: undefined, perVolume };
  }
  if (typeof addr !== 'string' || addr === '')
    return fail('listen.metrics', `${show(addr)} is not an address; use HOST:PORT such as 127.0.0.1:9390, or {address: 127.0.0.1:9390, perVolume: off}`);
  try {
    return { address: parseHostPort(addr), perVolume };
  } catch (err) {
    return fail('listen.metrics', (err as Error).message);
  }
}

function parseIscsi(raw: unknown, fail: Fail): IscsiConfig {
  const out: IscsiConfig = { targetName: null, requireHostAffinity: false, chap: null };
  if (raw === undefined || raw === null) return out;
  if (!isPlainObject(raw)) return fail('iscsi', 'must be a mapping, e.g. iscsi: {requireHostAffinity: true}');
  checkKeys(raw, ['targetName', 'requireHostAffinity', 'chap', 'chapAlgorithms'], 'iscsi', fail);
  if (raw.targetName !== undefined && raw.targetName !== null) {
    try {
      out.targetName = checkIscsiName(raw.targetName);
    } catch (err) {
      if (err instanceof IscsiNameError) fail('iscsi.targetName', err.message);
      throw err;
    }
  }
  const require = raw.requireHostAffinity ?? false;
  if (typeof require !== 'boolean') fail('iscsi.requireHostAffinity', `${show(require)} is not true or false`);
  out.requireHostAffinity = require as boolean;
  if (raw.chap !== undefined && raw.chap !== null) out.chap = parseChap(raw.chap, fail);
  if (raw.chapAlgorithms !== undefined && raw.chapAlgorithms !== null) out.chapAlgorithms = parseChapAlgorithms(raw.chapAlgorithms, fail);
  return out;
}

/** A list of names (any case): [SHA3-256, SHA-256, SHA-1] refuses MD5. */
function parseChapAlgorithms(raw: unknown, fail: Fail): number[] {
  const known = Object.keys(CHAP_ALGORITHM_NAMES).join(', ');
  if (!Array.isArray(raw) || raw.length === 0)
    return fail('iscsi.chapAlgorithms', `must be a non-empty list of ${known}, e.g. [SHA-256, SHA3-256] to refuse MD5`);
  const out: number[] = [];
  raw.forEach((item, i) => {
    const name = Object.keys(CHAP_ALGORITHM_NAMES).find((k) => typeof item === 'string' && k.toLowerCase() === item.trim().toLowerCase());
    if (name === undefined) fail(`iscsi.chapAlgorithms[${i}]`, `${show(item)} is not a CHAP algorithm; use ${known}`);
    const n = CHAP_ALGORITHM_NAMES[name]!;
    if (out.includes(n)) fail(`iscsi.chapAlgorithms[${i}]`, `${name} is listed twice; list each algorithm once`);
    out.push(n);
  });
  return out;
}

/** Secrets never appear in messages: only their length. */
function parseChap(raw: unknown, fail: Fail): IscsiChapConfig {
  if (!isPlainObject(raw)) return fail('iscsi.chap', 'must be a mapping with username and secret (and optionally mutualUsername and mutualSecret)');
  checkKeys(raw, ['username', 'secret', 'mutualUsername', 'mutualSecret'], 'iscsi.chap', fail);
  const text = (key: string, secret: boolean): string | undefined => {
    const value = raw[key];
    if (value === undefined || value === null) return undefined;
    const at = `iscsi.chap.${key}`;
    if (typeof value !== 'string') return fail(at, `${secret ? 'is not text' : `${show(value)} is not text`}; quote it`);
    if (value.length === 0) fail(at, 'is empty; give a value or remove the key');
    const problem = chapValueProblem(value, secret ? 'secret' : 'user');
    if (problem !== undefined) fail(at, problem);
    return value;
  };
  const username = text('username', false);
  const secret = text('secret', true);
  if (username === undefined) fail('iscsi.chap.username', 'is missing; give the user name initiators log in with (their CHAP_N)');
  if (secret === undefined) fail('iscsi.chap.secret', 'is missing; give the secret initiators log in with, 12 to 16 characters');
  const mutualUsername = text('mutualUsername', false);
  const mutualSecret = text('mutualSecret', true);
  if ((mutualUsername === undefined) !== (mutualSecret === undefined)) {
    fail(
      mutualUsername === undefined ? 'iscsi.chap.mutualUsername' : 'iscsi.chap.mutualSecret',
      'is missing; mutual CHAP needs both mutualUsername and mutualSecret (or neither, for one-way CHAP)',
    );
  }
  if (mutualSecret !== undefined && mutualSecret === secret) {
    fail('iscsi.chap.mutualSecret', 'is the same as secret; RFC 7143 forbids one secret for both directions: give the target its own secret');
  }
  return { username: username!, secret: secret!, ...(mutualUsername !== undefined ? { mutualUsername, mutualSecret: mutualSecret! } : {}) };
}

/** What the serve command's flags may change; they win over the config. */
export interface ConfigOverrides {
  dataDir?: string;
  memory?: boolean;
  nbd?: string;
  api?: string;
  iscsi?: string;
  requireHostAffinity?: boolean;
  apiAuth?: 'on' | 'off';
  apiTlsCert?: string;
  apiTlsKey?: string;
  apiTlsCa?: string;
  /** --metrics HOST:PORT, or off: no metrics listener even if the config has one. */
  metrics?: string;
  metricsPerVolume?: 'on' | 'off';
  /** --dashboard HOST:PORT, or off: no dashboard even if the config has one. */
  dashboard?: string;
  /**
   * serve's default metrics address (127.0.0.1:9390), used when neither --metrics nor the config
   * sets listen.metrics and the API is on loopback. Only serve passes it: an ArrayServer built
   * from a parsed config gets no listener it did not ask for.
   */
  metricsDefault?: string;
  /** --events on|off: the event stream, over api.events. */
  events?: 'on' | 'off';
}

/** Applies CLI flags; flag errors name the flag. Relative --data-dir is relative to the working directory. */
export function applyOverrides(config: ArraylabConfig, o: ConfigOverrides): ArraylabConfig {
  const flagAddress = (flag: string, value: string): HostPort => {
    try {
      return parseHostPort(value);
    } catch (err) {
      throw new ConfigError(`--${flag}: ${(err as Error).message}`);
    }
  };
  const out: ArraylabConfig = {
    ...config,
    dataDir: o.dataDir !== undefined ? resolve(o.dataDir) : config.dataDir,
    backend: o.memory ? 'memory' : config.backend,
    listen: {
      ...config.listen,
      nbd: o.nbd !== undefined ? flagAddress('nbd', o.nbd) : config.listen.nbd,
      iscsi: o.iscsi !== undefined ? flagAddress('iscsi', o.iscsi) : config.listen.iscsi,
      api: o.api !== undefined ? flagAddress('api', o.api) : config.listen.api,
    },
    iscsi: { ...config.iscsi, requireHostAffinity: o.requireHostAffinity || config.iscsi.requireHostAffinity },
    api: apiOverrides(config.api, o),
  };
  applyMetricsOverrides(out, o, flagAddress);
  if (o.dashboard === 'off') delete out.listen.dashboard;
  else if (o.dashboard !== undefined) out.listen.dashboard = flagAddress('dashboard', o.dashboard);
  return out;
}

/** --metrics and --metrics-per-volume, applied to the (already copied) listen and metrics. */
function applyMetricsOverrides(out: ArraylabConfig, o: ConfigOverrides, flagAddress: (flag: string, value: string) => HostPort): void {
  if (o.metrics !== undefined) {
    if (o.metrics === 'off') {
      delete out.listen.metrics;
      delete out.metrics;
    } else {
      out.listen.metrics = flagAddress('metrics', o.metrics);
      out.metrics = { perVolume: out.metrics?.perVolume ?? true };
    }
  } else if (o.metricsDefault !== undefined && out.listen.metrics === undefined && out.metrics?.listener !== 'off' && isLoopbackHost(out.listen.api.host)) {
    out.listen.metrics = parseHostPort(o.metricsDefault);
    out.metrics = { perVolume: out.metrics?.perVolume ?? true, listener: 'default' };
  }
  if (o.metricsPerVolume !== undefined && o.metrics !== 'off') {
    if (out.listen.metrics === undefined)
      throw new ConfigError(
        '--metrics-per-volume needs a metrics listener: pass --metrics HOST:PORT (metrics are on by default only when the API is on loopback and the config does not say listen.metrics: off)',
      );
    out.metrics = { ...out.metrics, perVolume: o.metricsPerVolume === 'on' };
  }
}

function apiOverrides(api: ApiConfig, o: ConfigOverrides): ApiConfig {
  const out: ApiConfig = { ...api };
  if (o.apiAuth !== undefined) out.auth = o.apiAuth === 'on';
  if (o.events !== undefined) out.events = o.events === 'on';
  if ((o.apiTlsCert === undefined) !== (o.apiTlsKey === undefined)) {
    throw new ConfigError('--api-tls-cert and --api-tls-key go together: give the PEM certificate and its key');
  }
  if (o.apiTlsCert !== undefined && o.apiTlsKey !== undefined) {
    out.tls = { cert: resolve(o.apiTlsCert), key: resolve(o.apiTlsKey), ...(o.apiTlsCa !== undefined ? { ca: resolve(o.apiTlsCa) } : {}) };
  } else if (o.apiTlsCa !== undefined) {
    if (out.tls === undefined)
      throw new ConfigError(
        '--api-tls-ca needs --api-tls-cert and --api-tls-key (or api.tls in the config): the API must serve TLS to verify client certificates',
      );
    out.tls = { ...out.tls, ca: resolve(o.apiTlsCa) };
  }
  return out;
}

function checkKeys(obj: Record<string, unknown>, allowed: string[], path: string, fail: (path: string, message: string) => never): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      fail(path ? `${path}.${key}` : key, `unknown key; expected one of ${allowed.join(', ')}`);
    }
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function show(value: unknown): string {
  return value === undefined ? 'nothing' : JSON.stringify(value);
}

/** A PEM file path under a tls mapping (nbd.tls, api.tls): resolved against the config's folder. */
function pemPath(
  tls: Record<string, unknown>,
  at: string,
  key: string,
  required: boolean,
  baseDir: string,
  fail: (path: string, message: string) => never,
): string | undefined {
  const value = tls[key];
  if (value === undefined || value === null) {
    if (required) fail(`${at}.${key}`, `is missing; give the path of the PEM ${key} file`);
    return undefined;
  }
  if (typeof value !== 'string' || value === '') fail(`${at}.${key}`, `${show(value)} is not a file path; give the path of a PEM file`);
  return resolve(baseDir, value as string);
}
