/**
 * `lab up|down|status`: makes the lab's arrays match a lab file, idempotently, and says what it
 * did. up starts the arrays (each one that does not answer, with start: true), creates what is
 * missing on each (volumes, hosts), then, with every array running, the remotes and REC pairs
 * between them, the VMs and last the faults; it leaves what exists (it never resizes or
 * deletes). down stops the lab's VMs and the arrays it started, and with purge deletes the lab's
 * pairs, remotes, volumes, hosts and, for an array it started, the data directory. What lab up
 * started is remembered in the run directory (.lab-<name>-<hash>.json), so lab down stops only
 * that. A started array runs with a config of its own (lab-array.yaml in its data directory):
 * none of the built-in config's volumes, and NBD TLS-PSK on.
 *
 * Secrets go in the run directory, .secrets-<name>-<hash>/ARRAY/ (0700, files 0600):
 *
 * Seats: on each array a tenant and a user per trainee seat, the token in SEAT.token; an
 * existing seat keeps its token. lab down removes them (tenant remove --force) unless told to
 * keep them.
 *
 * NBD under host affinity: a lab host with VMs that attach via nbd gets the NBD PSK identity
 * HOST (`host set HOST --nbd-psk`), its key kept in keys.psk (psktool), and its VMs attach over
 * TLS-PSK with it. Before the VMs boot, lab up checks that the array's NBD server takes the key,
 * and says what to change when it does not.
 *
 * Remotes between lab arrays: each calls the other as a replication user there (rec-ARRAY, its
 * token in rec-ARRAY.token), not with an admin token.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { formatHostPort, parseHostPort } from '../../proto/util/address.js';
import { ApiError, ArrayClient } from '../../proto/ArrayClient.js';
import type { CopySessionView } from '../../proto/views.js';
import { loadConfig } from '../config.js';
import { formatSize } from '../../proto/util/units.js';
import { stopDetachedGuest } from '../vm/detached.js';
import { parsePskFile, probeNbdPsk, writePskFile, type NbdPsk } from '../vm/nbdPsk.js';
import { defaultInitiatorName } from '../vm/qemuArgs.js';
import { readRecord, vmState } from '../vm/registry.js';
import { startVm } from '../vm/start.js';
import type { Lab, LabArray, LabCopy, LabHost, LabSeats } from './schema.js';
import { stringify as stringifyYaml } from 'yaml';

/** The plan a lab's faults are applied as: applying it again replaces them. */
const LAB_PLAN = 'lab';

export interface LabItem {
  kind: 'array' | 'seat' | 'volume' | 'host' | 'remote' | 'copy' | 'vm' | 'fault';
  name: string;
  /** up: created, exists, started, running, mapped...; status: the item's state. */
  state: string;
  detail?: string | undefined;
  /** In a lab with several arrays: the array a volume, host, remote, copy or fault is on. */
  array?: string | undefined;
}

export interface LabOptions {
  runDir: string;
  log: Logger;
  onItem?: (item: LabItem) => void;
}

/** An arraylab serve lab up started. */
interface ServeState {
  pid: number;
  api: string;
  dataDir: string;
  createdDataDir: boolean;
}

interface LabState {
  file: string;
  /** By array name. */
  arrays?: Record<string, ServeState>;
  /** Written before labs had several arrays: the one array's. */
  serve?: ServeState | undefined;
}

/** NAME-HASH of a lab file: its basename and a hash of its path. */
export function labTag(lab: Lab): string {
  const tag = createHash('sha256').update(lab.file).digest('hex').slice(0, 8);
  return `${basename(lab.file).replace(/\.ya?ml$/, '')}-${tag}`;
}

export function stateFile(lab: Lab, runDir: string): string {
  return join(runDir, `.lab-${labTag(lab)}.json`);
}

/**
 * The lab's secrets on one array, 0700: seat tokens and NBD keys (.secrets-NAME-HASH/ARRAY; a VM
 * name cannot start with a dot, so no VM's directory is mistaken for it).
 */
const secretsDir = (lab: Lab, runDir: string) => join(runDir, `.secrets-${labTag(lab)}`);
const labFilesDir = (lab: Lab, runDir: string, a: LabArray) => join(secretsDir(lab, runDir), a.name);

export const seatTokenFile = (lab: Lab, runDir: string, a: LabArray, seat: string) => join(labFilesDir(lab, runDir, a), `${seat}.token`);
export const pskFileOf = (lab: Lab, runDir: string, a: LabArray) => join(labFilesDir(lab, runDir, a), 'keys.psk');

function readKeys(file: string): NbdPsk[] {
  try {
    return parsePskFile(readFileSync(file, 'utf8'), file);
  } catch {
    return [];
  }
}

/** Writes a secret 0600 in a 0700 directory. */
function writeSecret(file: string, text: string): void {
  mkdirSync(join(file, '..'), { recursive: true, mode: 0o700 });
  writeFileSync(file, text, { mode: 0o600 });
  chmodSync(file, 0o600);
}

/** Lab hosts whose VMs attach volumes via nbd: they get an NBD PSK identity. */
function nbdHosts(lab: Lab, a: LabArray): LabHost[] {
  const vms = lab.vms.filter((v) => v.array === a.name && v.attach.some((d) => d.via === 'nbd'));
  return a.hosts.filter((h) => h.vms.some((n) => vms.some((v) => v.name === n)));
}

function readState(lab: Lab, runDir: string): LabState & { arrays: Record<string, ServeState> } {
  try {
    const s = JSON.parse(readFileSync(stateFile(lab, runDir), 'utf8')) as LabState;
    const arrays = s.arrays ?? (s.serve ? { [lab.arrays[0]!.name]: s.serve } : {});
    return { file: lab.file, arrays };
  } catch {
    return { file: lab.file, arrays: {} };
  }
}

function writeState(lab: Lab, runDir: string, state: LabState): void {
  mkdirSync(runDir, { recursive: true });
  writeFileSync(stateFile(lab, runDir), `${JSON.stringify(state, null, 2)}\n`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^\d+ \([^)]*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** The lab's arrays that lab up started (its state file says so) and that run now. */
export function startedArrays(lab: Lab, runDir: string): LabArray[] {
  const { arrays } = readState(lab, runDir);
  return lab.arrays.filter((a) => arrays[a.name] !== undefined && alive(arrays[a.name]!.pid));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function answers(client: ArrayClient | undefined): Promise<boolean> {
  if (!client) return false;
  try {
    await client.getStatus();
    return true;
  } catch (err) {
    // An array that wants another credential answers all the same.
    return err instanceof ApiError && (err.code === 'UNAUTHENTICATED' || err.code === 'PERMISSION_DENIED');
  }
}

/**
 * What lab up keeps in a started array's data directory, past lab down: the API address (on
 * api: 0, the port it picked, so the peers' remotes stay valid) and whether it made the directory.
 */
const labArrayFile = (a: LabArray) => join(a.dataDir, 'lab-array.json');

export function readLabArray(a: LabArray): { api?: string; createdDataDir?: boolean } {
  try {
    return JSON.parse(readFileSync(labArrayFile(a), 'utf8')) as { api?: string; createdDataDir?: boolean };
  } catch {
    return {};
  }
}

/**
 * The API address of a lab array: the lab file's; for port 0, the one lab up picked at its
 * first start (undefined if it never started).
 */
function apiOf(a: LabArray, state: LabState & { arrays: Record<string, ServeState> }): string | undefined {
  if (parseHostPort(a.api).port !== 0) return a.api;
  const started = state.arrays[a.name]?.api;
  return started ?? readLabArray(a).api;
}

/** A free port on api's host, for an array whose api port is 0 (its peers must know it before it runs). */
async function freeApi(a: LabArray): Promise<string> {
  const { host } = parseHostPort(a.api);
  const port = await new Promise<number>((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  return formatHostPort({ host, port });
}

/**
 * A client for a lab array. One lab up started is reached with its admin token
 * (<dataDir>/admin.token); another with the caller's credential (ARRAYLAB_TOKEN, the local link).
 */
function clientAt(api: string, a?: LabArray, startedByLab = false): ArrayClient {
  const token = a && startedByLab ? join(a.dataDir, 'admin.token') : undefined;
  return new ArrayClient(api, { deadlineMs: 5000, ...(token && existsSync(token) ? { tokenFile: token } : {}) });
}

/** The arraylab CLI of this build (dist/emulator/cli/arraylab.js). */
function cliPath(): string {
  return fileURLToPath(new URL('../cli/arraylab.js', import.meta.url));
}

/** The built-in config's listen addresses: a started lab array's NBD and iSCSI defaults. */
function defaultListen(): { nbd: string; iscsi: string } {
  const { listen } = loadConfig();
  return { nbd: formatHostPort(listen.nbd), iscsi: formatHostPort(listen.iscsi!) };
}

/**
 * The config a started lab array runs with: no volumes (the built-in config's `demo` volume is
 * not the lab's); the lab's volumes are created over the API. Addresses and the data
 * directory are given as flags.
 */
function writeServeConfig(lab: Lab, a: LabArray): string {
  const file = join(a.dataDir, 'lab-array.yaml');
  writeFileSync(
    file,
    `# Written by arraylab lab up for ${lab.file} (array ${a.name}) at every start of its array.\n` +
      `# No volumes: the lab's volumes are created by lab up; listen addresses and dataDir are flags.\n` +
      `volumes: []\n` +
      `# NBD TLS-PSK: a lab host's VMs attach with its key (arraylab host set HOST --nbd-psk), so they\n` +
      `# see their host's volumes once host affinity is on; without hosts, plain NBD works as before.\n` +
      `nbd:\n  tls:\n    psk: true\n`,
  );
  return file;
}

/** The lab key to change when serve could not listen: its last "arraylab: cannot listen for ..." line. */
function listenFailure(log: string): { key: 'nbd' | 'iscsi' | 'api'; message: string } | undefined {
  const line = log
    .trim()
    .split('\n')
    .reverse()
    .find((l) => l.startsWith('arraylab: cannot listen for '));
  if (!line) return undefined;
  const what = /^arraylab: cannot listen for (NBD|iSCSI|the control API) on /.exec(line)?.[1];
  const key = what === 'NBD' ? 'nbd' : what === 'iSCSI' ? 'iscsi' : what ? 'api' : undefined;
  // serve's own fix names its flags and config keys; a lab's array takes them from the lab file.
  return key && { key, message: line.slice('arraylab: '.length).replace(/; use --\S+ HOST:PORT or listen\.\w+ in the config to pick another address$/, '') };
}

async function startArray(lab: Lab, a: LabArray, api: string, o: LabOptions): Promise<ServeState> {
  // Made by an earlier lab up (and kept by its lab down) counts as made by lab up: purge removes it.
  const createdDataDir = !existsSync(a.dataDir) || readLabArray(a).createdDataDir === true;
  mkdirSync(a.dataDir, { recursive: true });
  writeFileSync(labArrayFile(a), `${JSON.stringify({ api, createdDataDir })}\n`);
  const logFile = join(a.dataDir, 'serve.log');
  const listen = defaultListen();
  const args = [
    cliPath(),
    'serve',
    '--config',
    writeServeConfig(lab, a),
    '--api',
    api,
    '--data-dir',
    a.dataDir,
    '--nbd',
    a.nbd ?? listen.nbd,
    '--iscsi',
    a.iscsi ?? listen.iscsi,
  ];
  const fd = openSync(logFile, 'a');
  const child = spawn(process.execPath, args, {
    detached: true,
    stdio: ['ignore', fd, fd],
    env: { ...process.env, ARRAYLAB_LOG_LEVEL: process.env.ARRAYLAB_LOG_LEVEL ?? 'info' },
  });
  closeSync(fd);
  child.unref();
  const c = clientAt(api);
  try {
    const end = Date.now() + 30_000;
    let exited = false;
    while (Date.now() < end) {
      if (await answers(c)) return { pid: child.pid!, api, dataDir: a.dataDir, createdDataDir };
      if (child.exitCode !== null || !alive(child.pid!)) {
        exited = true;
        break;
      }
      await sleep(200);
    }
    if (alive(child.pid!)) process.kill(child.pid!, 'SIGKILL');
    const log = readFileSync(logFile, 'utf8');
    o.log.debug({ args }, 'serve failed');
    const taken = exited ? listenFailure(log) : undefined;
    if (taken) {
      throw new Error(
        `lab ${lab.file}: ${a.at}.${taken.key}: its array did not start: ${taken.message}; set ${a.at}.${taken.key} in the lab file to a free address (port 0: any free port), or stop what holds it; log: ${logFile}`,
      );
    }
    const tail = log.trim().split('\n').slice(-5).join('\n');
    const how = exited ? `arraylab serve exited before it answered at ${api}` : `arraylab serve did not answer at ${api} within 30 s`;
    throw new Error(`lab ${lab.file}: ${a.at}: ${how}; its log ${logFile} ends:\n${tail}`);
  } finally {
    c.close();
  }
}

/** A lab array lab up or down talks to: its API address (if known) and a client for it. */
interface Site {
  a: LabArray;
  api: string | undefined;
  c: ArrayClient | undefined;
}

function sitesOf(lab: Lab, state: LabState & { arrays: Record<string, ServeState> }): Site[] {
  return lab.arrays.map((a) => {
    const api = apiOf(a, state);
    const st = state.arrays[a.name];
    return { a, api, c: api ? clientAt(api, a, st !== undefined && alive(st.pid)) : undefined };
  });
}

const closeAll = (sites: Site[]) => {
  for (const s of sites) s.c?.close();
};

/** The session of a lab pair on its source array. */
const findPair = (sessions: CopySessionView[], p: LabCopy) =>
  sessions.find((s) => s.type === 'rec' && s.remote?.role === 'source' && s.source === p.src && s.destination === p.dst);

const pairName = (p: LabCopy) => `${p.src}->${p.dst}`;

const quotaText = (t: { maxCapacityBytes: number; maxVolumes: number; maxSessions: number }) =>
  [
    t.maxCapacityBytes > 0 ? `${formatSize(t.maxCapacityBytes)}` : '',
    t.maxVolumes > 0 ? `${t.maxVolumes} volumes` : '',
    t.maxSessions > 0 ? `${t.maxSessions} sessions` : '',
  ]
    .filter(Boolean)
    .join(', ');

/** The quotas the lab file gives each seat, as the tenant has them (0: none). */
const wantedQuotas = (seats: LabSeats) => ({
  maxCapacityBytes: seats.maxCapacityBytes ?? 0,
  maxVolumes: seats.maxVolumes ?? 0,
  maxSessions: seats.maxSessions ?? 0,
});

/**
 * Each seat on array a: its tenant (with the lab's quotas) and its user (the lab's role, in that
 * tenant), the token written to the seat's file. An existing user keeps its token.
 */
async function upSeats(lab: Lab, a: LabArray, c: ArrayClient, o: LabOptions, say: (i: LabItem) => void): Promise<void> {
  const tenants = new Map((await c.listTenants()).map((t) => [t.name, t]));
  const users = new Map((await c.listUsers()).map((u) => [u.name, u]));
  const want = wantedQuotas(lab.seats);
  const quotas = quotaText(want);
  for (const seat of lab.seats.names) {
    const file = seatTokenFile(lab, o.runDir, a, seat);
    const user = users.get(seat);
    if (user && user.tenant !== seat) {
      throw new Error(
        `lab ${lab.file}: seats: array ${a.name} has a user ${seat} that is not seat ${seat}'s (role ${user.role}, ${user.tenant ? `tenant ${user.tenant}` : 'no tenant'}); name the seat otherwise, or remove the user: arraylab user remove ${seat} --api ${c.address}`,
      );
    }
    const done: string[] = [];
    const t = tenants.get(seat);
    if (!t) {
      await c.addTenant({ name: seat, ...want });
      done.push('created');
    } else if (t.maxCapacityBytes !== want.maxCapacityBytes || t.maxVolumes !== want.maxVolumes || t.maxSessions !== want.maxSessions) {
      await c.setTenant({ name: seat, ...want });
      done.push(`quotas set${quotas ? ` (${quotas})` : ' (none)'}`);
    }
    let tokenNote: string;
    if (!user) {
      const { token } = await c.addUser({ name: seat, role: lab.seats.role, tenant: seat });
      writeSecret(file, `${token}\n`);
      if (done[0] !== 'created') done.unshift('created');
      tokenNote = `token in ${file}`;
    } else {
      tokenNote = existsSync(file)
        ? `token in ${file}`
        : `its token is not in ${file} (made elsewhere); give it a new one with: arraylab user rotate ${seat} --api ${c.address}`;
    }
    const role = user && user.role !== lab.seats.role ? `${user.role} (the lab says ${lab.seats.role}; left as is)` : lab.seats.role;
    say({
      kind: 'seat',
      name: seat,
      state: done[0] === 'created' ? 'created' : done.length ? 'updated' : 'exists',
      detail: `user ${seat}, ${role}, tenant ${seat}${quotas ? ` (${quotas})` : ''}; ${[...done.filter((d) => d !== 'created'), tokenNote].join('; ')}`,
    });
  }
}

/** Gives lab objects to a seat's tenant (as `arraylab tenant assign`). */
async function assignSeat(lab: Lab, a: LabArray, c: ArrayClient, seat: string, objects: { volumes?: string[]; hosts?: string[] }): Promise<void> {
  await c.assignToTenant(seat, objects).catch((err: Error) => {
    const what = objects.volumes ? `volume ${objects.volumes.join(', ')}` : `host ${objects.hosts?.join(', ')}`;
    throw new Error(`lab ${lab.file}: array ${a.name} cannot give ${what} to seat ${seat}: ${err.message}`);
  });
}

/**
 * A lab host whose VMs attach via nbd: the NBD PSK identity HOST (its name), its key in the lab's
 * keys.psk. A host that has it, with its key in the file, keeps it; otherwise a new key is made
 * (host set HOST --nbd-psk --nbd-psk-identity HOST). Returns what was done, or undefined.
 */
async function nbdKeyFor(
  lab: Lab,
  a: LabArray,
  c: ArrayClient,
  h: LabHost,
  identity: string | undefined,
  runDir: string,
  renew = false,
): Promise<string | undefined> {
  const file = pskFileOf(lab, runDir, a);
  const keys = readKeys(file);
  if (!renew && identity === h.name && keys.some((k) => k.identity === h.name)) return undefined;
  const r = await c.setHostCredentials(h.name, { generateNbdPsk: true, nbdPskIdentity: h.name }).catch((err: Error) => {
    throw new Error(`lab ${lab.file}: array ${a.name} cannot give host ${h.name} an NBD PSK key: ${err.message}`);
  });
  if (!r.nbdPsk) throw new Error(`lab ${lab.file}: array ${a.name} made no NBD PSK key for host ${h.name}; is it an arraylab of this version?`);
  writePskFile(file, [...keys.filter((k) => k.identity !== r.nbdPsk!.identity), r.nbdPsk]);
  return `NBD PSK identity ${r.nbdPsk.identity} (key in ${file})`;
}

/** The NBD key of the host a VM is in, when its host got one. */
function vmPsk(lab: Lab, a: LabArray, vm: string, runDir: string): NbdPsk | undefined {
  const h = nbdHosts(lab, a).find((x) => x.vms.includes(vm));
  if (!h) return undefined;
  return readKeys(pskFileOf(lab, runDir, a)).find((k) => k.identity === h.name);
}

/**
 * An array whose lab hosts got NBD keys must take them: a server without TLS, or without
 * nbd.tls.psk, would leave the VMs with disks they cannot open. Says what to do.
 */
async function checkNbdPsk(lab: Lab, s: Site & { api: string; c: ArrayClient }, started: ServeState | undefined, runDir: string): Promise<void> {
  const { a, c } = s;
  const h = nbdHosts(lab, a)[0];
  if (!h) return;
  const psk = vmPsk(lab, a, h.vms[0]!, runDir);
  if (!psk) return;
  const { listeners } = await c.getStatus();
  const l = listeners.nbd;
  const host = l.host === '0.0.0.0' || l.host === '::' || l.host === '' ? parseHostPort(s.api).host : l.host;
  let r = await probeNbdPsk(host, l.port, psk);
  if (r.ok) return;
  if (r.why === 'no-psk') {
    // Perhaps the array has another key for the host now (host set --nbd-psk elsewhere): new keys, once.
    for (const x of nbdHosts(lab, a)) await nbdKeyFor(lab, a, c, x, x.name, runDir, true);
    r = await probeNbdPsk(host, l.port, vmPsk(lab, a, h.vms[0]!, runDir)!);
    if (r.ok) return;
  }
  const vms = lab.vms.filter((v) => v.array === a.name && v.attach.some((d) => d.via === 'nbd')).map((v) => v.name);
  const why = `VM${vms.length > 1 ? 's' : ''} ${vms.join(', ')} attach${vms.length > 1 ? '' : 'es'} volumes via nbd, and with hosts defined an NBD client sees its host's volumes only with its TLS-PSK identity`;
  const ours = started !== undefined && alive(started.pid);
  const fix = ours
    ? `it was started by an earlier lab up without NBD TLS-PSK; restart it: arraylab lab down ${lab.file} && arraylab lab up ${lab.file}`
    : `restart it with nbd.tls.psk on (in its config: nbd: {tls: {psk: true}}), or attach those volumes via: iscsi, or have the lab start an array of its own (start: true, another api)`;
  if (r.why === 'unreachable')
    throw new Error(`lab ${lab.file}: ${a.at}: cannot reach the NBD server of array ${a.name} at ${host}:${l.port} (${r.detail}); is it serving NBD?`);
  const what = r.why === 'no-tls' ? `serves NBD without TLS (${r.detail})` : `does not take host ${h.name}'s NBD TLS-PSK key (${r.detail})`;
  throw new Error(`lab ${lab.file}: ${a.at}: array ${a.name} at ${s.api} ${what}; ${why}: ${fix}`);
}

/** The user array a calls its lab peer with (role replication there). */
const recUser = (a: LabArray) => `rec-${a.name}`.slice(0, 64);

/**
 * The token array a calls the lab's array peer with: a replication user's on peer, made once
 * and kept (0600) in the lab's secrets for peer; a user whose token the lab lost gets a new one
 * (fresh: the remote must be told).
 */
async function recToken(lab: Lab, a: LabArray, peer: Site & { c: ArrayClient }, runDir: string): Promise<{ user: string; token: string; fresh: boolean }> {
  const user = recUser(a);
  const file = join(labFilesDir(lab, runDir, peer.a), `${user}.token`);
  const has = (await peer.c.listUsers()).find((u) => u.name === user);
  if (has && existsSync(file)) return { user, token: readFileSync(file, 'utf8').trim(), fresh: false };
  const { token } = has ? await peer.c.rotateUser(user) : await peer.c.addUser({ name: user, role: 'replication' });
  writeSecret(file, `${token}\n`);
  return { user, token, fresh: true };
}

export async function labUp(lab: Lab, o: LabOptions): Promise<LabItem[]> {
  const items: LabItem[] = [];
  const several = lab.arrays.length > 1;
  const say = (item: LabItem, a?: LabArray) => {
    const it = several && a && item.kind !== 'array' && item.kind !== 'vm' ? { ...item, array: a.name } : item;
    items.push(it);
    o.onItem?.(it);
  };
  const state = readState(lab, o.runDir);
  const sites = sitesOf(lab, state);
  try {
    // Every array first: remotes and pairs need both of their ends running.
    for (const s of sites) {
      const { a } = s;
      if (await answers(s.c)) {
        const st = state.arrays[a.name];
        say({ kind: 'array', name: a.name, state: st && alive(st.pid) ? 'running' : 'exists', detail: `answers at ${s.api}` });
      } else if (a.start) {
        s.api ??= await freeApi(a);
        state.arrays[a.name] = await startArray(lab, a, s.api, o);
        writeState(lab, o.runDir, { file: lab.file, arrays: state.arrays });
        // Now its admin token exists: talk to it with that.
        s.c?.close();
        s.c = clientAt(s.api, a, true);
        const { listeners: l } = await s.c.getStatus();
        const ports = `NBD ${l.nbd.host}:${l.nbd.port}${l.iscsi.available ? `, iSCSI ${l.iscsi.host}:${l.iscsi.port}` : ''}`;
        say({
          kind: 'array',
          name: a.name,
          state: 'started',
          detail: `arraylab serve pid ${state.arrays[a.name]!.pid} at ${s.api}, ${ports}, data in ${a.dataDir}`,
        });
      } else {
        throw new Error(`lab ${lab.file}: ${a.at}: nothing answers at ${a.api}; start it with: arraylab serve --api ${a.api}, or set start: true`);
      }
    }
    const running = sites as Array<Site & { api: string; c: ArrayClient }>;
    const site = (name: string) => running.find((s) => s.a.name === name)!;

    for (const { a, c } of running) {
      if (lab.seats.names.length > 0) await upSeats(lab, a, c, o, (i) => say(i, a));
      const have = new Map((await c.listVolumes()).map((v) => [v.name, v]));
      for (const v of a.volumes) {
        const cur = have.get(v.name);
        if (!cur) {
          await c.createVolume({
            name: v.name,
            sizeBytes: v.sizeBytes,
            blockSize: v.blockSize,
            provisioning: v.provisioning,
            description: `lab ${basename(lab.file)}`,
          });
          if (v.seat !== undefined) await assignSeat(lab, a, c, v.seat, { volumes: [v.name] });
          const seat = v.seat !== undefined ? `; seat ${v.seat}` : '';
          say({ kind: 'volume', name: v.name, state: 'created', detail: `${formatSize(v.sizeBytes)} ${v.provisioning}, ${v.blockSize}-byte blocks${seat}` }, a);
        } else {
          const differs =
            cur.sizeBytes !== v.sizeBytes || cur.blockSize !== v.blockSize
              ? ` (the lab says ${formatSize(v.sizeBytes)}/${v.blockSize}, the array has ${formatSize(cur.sizeBytes)}/${cur.blockSize}; left as is)`
              : '';
          if (v.seat !== undefined) await assignSeat(lab, a, c, v.seat, { volumes: [v.name] });
          say(
            {
              kind: 'volume',
              name: v.name,
              state: 'exists',
              detail: `${formatSize(cur.sizeBytes)}${differs}${v.seat !== undefined ? `; seat ${v.seat}` : ''}`,
            },
            a,
          );
        }
      }

      if (a.hosts.length > 0) {
        const hosts = new Map((await c.listHosts()).hosts.map((h) => [h.name, h]));
        for (const h of a.hosts) {
          const wanted = [...h.initiators, ...h.vms.map(defaultInitiatorName)];
          let cur = hosts.get(h.name);
          const done: string[] = [];
          if (!cur) {
            cur = await c.createHost(h.name, wanted);
            done.push('created');
          } else {
            for (const i of wanted) {
              if (!cur.initiators.some((x) => x.toLowerCase() === i.toLowerCase())) {
                cur = await c.addHostInitiator(h.name, i);
                done.push(`added ${i}`);
              }
            }
          }
          for (const l of h.luns) {
            if (cur.luns.some((x) => x.volume === l.volume)) continue;
            const r = await c.mapVolume(h.name, l.volume, l.lun);
            done.push(`mapped ${l.volume} at LUN ${r.lun}`);
          }
          if (nbdHosts(lab, a).includes(h)) {
            const made = await nbdKeyFor(lab, a, c, h, cur.credentials.nbdPskIdentity, o.runDir);
            if (made) done.push(made);
          }
          if (h.seat !== undefined) await assignSeat(lab, a, c, h.seat, { hosts: [h.name] });
          say(
            {
              kind: 'host',
              name: h.name,
              state: done.length ? (done[0] === 'created' ? 'created' : 'updated') : 'exists',
              detail: [...done, ...(h.seat !== undefined ? [`seat ${h.seat}`] : [])].join(', ') || undefined,
            },
            a,
          );
        }
      }
    }

    // Remotes, now that every array runs: as `arraylab remote add NAME --api ...` on each.
    for (const { a, c } of running) {
      if (a.remotes.length === 0) continue;
      const have = new Map((await c.listRemotes()).map((r) => [r.name, r]));
      for (const [i, r] of a.remotes.entries()) {
        const want = r.array !== undefined ? site(r.array).api : r.api!;
        const what = r.array !== undefined ? `array ${r.array} at ${want}` : `at ${want}`;
        const cur = have.get(r.name);
        const fail = (err: unknown): never => {
          throw new Error(`lab ${lab.file}: ${a.at}.remotes[${i}]: array ${a.name} cannot add remote ${r.name} (${what}): ${(err as Error).message}`);
        };
        // A lab array is called with a replication user's token there (made once, kept in the lab's secrets).
        const peer = r.array !== undefined ? await recToken(lab, a, site(r.array), o.runDir).catch(fail) : undefined;
        if (cur?.api === want) {
          if (peer?.fresh) {
            await c.addRemote(r.name, want, { token: peer.token }).catch(fail);
            say({ kind: 'remote', name: r.name, state: 'updated', detail: `${what}, with a new token of user ${peer.user} there` }, a);
          } else say({ kind: 'remote', name: r.name, state: 'exists', detail: what }, a);
          continue;
        }
        if (cur && cur.sessionCount > 0) {
          throw new Error(
            `lab ${lab.file}: ${a.at}.remotes[${i}]: array ${a.name} knows remote ${r.name} at ${cur.api}, not ${want}, and ${cur.sessionCount} REC pair(s) use it; ` +
              `cancel them (arraylab copy list --api ${site(a.name).api}) and run lab up again, or give the remote another name`,
          );
        }
        // Unused and elsewhere (the lab's array moved to another port): point it at the lab's.
        if (cur) await c.removeRemote(r.name).catch(fail);
        await c.addRemote(r.name, want, peer ? { token: peer.token } : {}).catch(fail);
        say({ kind: 'remote', name: r.name, state: cur ? 'updated' : 'added', detail: cur ? `${what}, was at ${cur.api}` : what }, a);
      }
    }

    // REC pairs: as `arraylab copy start --type rec` on the source's array.
    for (const { a, c } of running) {
      if (a.copies.length === 0) continue;
      const sessions = await c.listCopies();
      for (const [i, p] of a.copies.entries()) {
        const cur = findPair(sessions, p);
        if (cur) {
          say({ kind: 'copy', name: pairName(p), state: 'exists', detail: `REC ${cur.remote!.mode}, session ${cur.id}, ${cur.state}` }, a);
          continue;
        }
        const s = await c
          .startCopy({ type: 'rec', source: p.src, destination: p.dst, mode: p.mode, split: p.split, recovery: p.recovery })
          .catch((err: Error) => {
            throw new Error(`lab ${lab.file}: ${a.at}.copies[${i}]: array ${a.name} cannot start REC ${p.src} -> ${p.dst}: ${err.message}`);
          });
        say({ kind: 'copy', name: pairName(p), state: 'started', detail: `REC ${p.mode}, session ${s.id}, ${s.state}` }, a);
      }
    }

    // Before any VM boots: each array whose lab hosts got NBD keys must take them over TLS-PSK.
    const checked = new Set<string>();
    for (const vm of lab.vms) {
      const s = site(vm.array);
      const rec = readRecord(o.runDir, vm.name);
      if (checked.has(s.a.name) || (rec && vmState(rec) !== 'exited')) continue;
      checked.add(s.a.name);
      await checkNbdPsk(lab, s, state.arrays[s.a.name], o.runDir);
    }

    for (const vm of lab.vms) {
      const rec = readRecord(o.runDir, vm.name);
      if (rec && vmState(rec) !== 'exited') {
        say({ kind: 'vm', name: vm.name, state: 'running', detail: `pid ${rec.pid}` });
        continue;
      }
      const { a, c } = site(vm.array);
      const nbdPsk = vmPsk(lab, a, vm.name, o.runDir);
      const started = await startVm({
        client: c,
        name: vm.name,
        attach: vm.attach,
        memoryMiB: vm.memoryMiB,
        runDir: o.runDir,
        log: o.log,
        ...(nbdPsk ? { nbdPsk } : {}),
      }).catch((err: Error) => {
        // An array used as it is may have hosts the lab does not declare: in a lab, the fix is a lab host.
        if (!nbdPsk && err.message.includes('an NBD client without a TLS identity sees no volume')) {
          const vols = vm.attach.filter((d) => d.via === 'nbd').map((d) => d.volume);
          throw new Error(
            `${err.message.split(';')[0]}; declare a host for it in the lab file (${a.keys.hosts}: [{name: ${vm.name}, vms: [${vm.name}], luns: [${vols.join(', ')}]}]: lab up gives it an NBD key), or attach via: iscsi`,
          );
        }
        throw err;
      });
      const tls = nbdPsk ? `; NBD over TLS-PSK as ${nbdPsk.identity}` : '';
      say({
        kind: 'vm',
        name: vm.name,
        state: 'started',
        detail: `booted in ${((started.bootMs ?? 0) / 1000).toFixed(2)} s; ${started.disks.map((d) => `${d.volume} as ${d.guestDevice}`).join(', ')}${tls}; agent socket ${started.sockets.agent}`,
      });
    }

    // Last, once everything is up: a fault could otherwise break the lab's own set-up (a VM's boot).
    for (const { a, c } of running) {
      if (a.faults.length === 0) continue;
      const label = `lab ${lab.file}`;
      const set = await c.applyFaultPlan(stringifyYaml({ name: LAB_PLAN, seed: lab.seed, faults: a.faults }), label).catch((err: Error) => {
        // The array names the plan's faults[N]; in the lab file they may be under an array.
        throw a.keys.faults === 'faults' ? err : new Error(err.message.replace(`${label}: faults[`, `${label}: ${a.keys.faults}[`));
      });
      for (const f of set) say({ kind: 'fault', name: f.id, state: 'set', detail: `${f.target}: ${f.description}` }, a);
    }
  } finally {
    closeAll(sites);
  }
  return items;
}

export async function labDown(lab: Lab, o: LabOptions & { purge?: boolean; keepSeats?: boolean }): Promise<LabItem[]> {
  const items: LabItem[] = [];
  const several = lab.arrays.length > 1;
  const say = (item: LabItem, a?: LabArray) => {
    const it = several && a && item.kind !== 'array' && item.kind !== 'vm' ? { ...item, array: a.name } : item;
    items.push(it);
    o.onItem?.(it);
  };
  for (const vm of lab.vms) {
    const rec = readRecord(o.runDir, vm.name);
    if (!rec) {
      say({ kind: 'vm', name: vm.name, state: 'not running' });
      continue;
    }
    const { how } = await stopDetachedGuest(rec, { runDir: o.runDir, log: o.log });
    say({ kind: 'vm', name: vm.name, state: 'stopped', detail: how });
  }
  const state = readState(lab, o.runDir);
  const sites = sitesOf(lab, state);
  try {
    const up: Array<Site & { c: ArrayClient }> = [];
    for (const s of sites) if (await answers(s.c)) up.push(s as Site & { c: ArrayClient });
    for (const { a, c } of up) {
      if (a.faults.length === 0) continue;
      for (const f of await c.listFaults()) {
        if (f.label !== `plan:${LAB_PLAN}`) continue;
        await c.removeFault(f.id);
        say({ kind: 'fault', name: f.id, state: 'removed', detail: `${f.target}: ${f.description}` }, a);
      }
    }
    // Seats: the tenant goes with its users (tenant remove --force); its objects stay, with no tenant.
    if (!o.keepSeats && lab.seats.names.length > 0) {
      for (const s of sites) {
        const { a } = s;
        const on = up.find((x) => x.a === a);
        const tenants = on ? new Set((await on.c.listTenants()).map((t) => t.name)) : undefined;
        const users = on ? new Map((await on.c.listUsers()).map((u) => [u.name, u])) : undefined;
        for (const seat of lab.seats.names) {
          const file = seatTokenFile(lab, o.runDir, a, seat);
          if (!on || !tenants || !users) {
            say({ kind: 'seat', name: seat, state: 'not removed', detail: `array ${a.name} does not answer; run lab down again once it does` }, a);
            continue;
          }
          try {
            if (tenants.has(seat)) await on.c.removeTenant(seat, true);
            else if (users.get(seat)?.tenant === seat) await on.c.removeUser(seat);
            rmSync(file, { force: true });
            say({ kind: 'seat', name: seat, state: 'removed', detail: `tenant ${seat} and user ${seat}` }, a);
          } catch (err) {
            say({ kind: 'seat', name: seat, state: 'not removed', detail: (err as Error).message }, a);
          }
        }
      }
    }
    if (o.purge) {
      // Pairs before remotes, remotes and hosts before volumes: each is refused while used.
      for (const { a, c } of up) {
        if (a.copies.length === 0) continue;
        const sessions = await c.listCopies();
        for (const p of a.copies) {
          const cur = findPair(sessions, p);
          if (!cur) continue;
          try {
            await c.cancelCopy(cur.id);
            say({ kind: 'copy', name: pairName(p), state: 'cancelled', detail: `session ${cur.id}` }, a);
          } catch (err) {
            say({ kind: 'copy', name: pairName(p), state: 'not cancelled', detail: (err as Error).message }, a);
          }
        }
      }
      for (const { a, c } of up) {
        for (const r of a.remotes) {
          try {
            await c.removeRemote(r.name);
            // And the user it called a lab peer with.
            const peer = r.array !== undefined ? up.find((x) => x.a.name === r.array) : undefined;
            if (peer && (await peer.c.listUsers()).some((u) => u.name === recUser(a))) await peer.c.removeUser(recUser(a));
            if (peer) rmSync(join(labFilesDir(lab, o.runDir, peer.a), `${recUser(a)}.token`), { force: true });
            say({ kind: 'remote', name: r.name, state: 'removed' }, a);
          } catch (err) {
            say({ kind: 'remote', name: r.name, state: 'not removed', detail: (err as Error).message }, a);
          }
        }
      }
      // Sessions a trainee started on the lab's volumes hold them too. Several passes: a
      // session may be refused while another (a newer generation, say) still stands.
      for (const { a, c } of up) {
        const mine = new Set(a.volumes.map((v) => v.name));
        let left: string[] = [];
        for (let pass = 0; pass < 3; pass++) {
          left = [];
          for (const s of await c.listCopies()) {
            if (!mine.has(s.source) && !mine.has(s.destination)) continue;
            try {
              await c.cancelCopy(s.id, { force: true });
              say({ kind: 'copy', name: `${s.type} ${s.source} -> ${s.destination}`, state: 'cancelled', detail: `session ${s.id}` }, a);
            } catch (err) {
              left.push(`${s.type} ${s.source} -> ${s.destination}: ${(err as Error).message}`);
            }
          }
          if (left.length === 0) break;
        }
        for (const why of left) say({ kind: 'copy', name: why.split(':')[0]!, state: 'not cancelled', detail: why }, a);
      }
      for (const { a, c } of up) {
        for (const h of a.hosts) {
          try {
            await c.deleteHost(h.name, { force: true });
            say({ kind: 'host', name: h.name, state: 'removed' }, a);
          } catch (err) {
            say({ kind: 'host', name: h.name, state: 'not removed', detail: (err as Error).message }, a);
          }
        }
        for (const v of a.volumes) {
          try {
            await c.deleteVolume(v.name);
            say({ kind: 'volume', name: v.name, state: 'deleted' }, a);
          } catch (err) {
            say({ kind: 'volume', name: v.name, state: 'not deleted', detail: (err as Error).message }, a);
          }
        }
      }
    }
  } finally {
    closeAll(sites);
  }
  // Every started array at once (each takes its time to stop), then each is reported.
  const started = lab.arrays.map((a) => ({ a, st: state.arrays[a.name] })).filter((x) => x.st && alive(x.st.pid));
  for (const { st } of started) process.kill(st!.pid, 'SIGTERM');
  const end = Date.now() + 30_000;
  while (started.some(({ st }) => alive(st!.pid)) && Date.now() < end) await sleep(100);
  for (const { st } of started) if (alive(st!.pid)) process.kill(st!.pid, 'SIGKILL');
  for (const a of lab.arrays) {
    const st = state.arrays[a.name];
    if (st && started.some((x) => x.a === a)) say({ kind: 'array', name: a.name, state: 'stopped', detail: `arraylab serve pid ${st.pid}` });
    else say({ kind: 'array', name: a.name, state: 'left running', detail: 'lab up did not start it' });
    if (o.purge && st?.createdDataDir) {
      rmSync(st.dataDir, { recursive: true, force: true });
      say({ kind: 'array', name: a.name, state: 'purged', detail: `removed ${st.dataDir}` });
    }
  }
  rmSync(stateFile(lab, o.runDir), { force: true });
  // The NBD keys go with their hosts; the lab's directory once nothing of it is left.
  if (o.purge) for (const a of lab.arrays) rmSync(pskFileOf(lab, o.runDir, a), { force: true });
  for (const a of lab.arrays) rmEmpty(labFilesDir(lab, o.runDir, a));
  rmEmpty(secretsDir(lab, o.runDir));
  return items;
}

function rmEmpty(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // not empty (kept seats or keys), or not there
  }
}

export async function labStatus(lab: Lab, o: LabOptions): Promise<LabItem[]> {
  const items: LabItem[] = [];
  const several = lab.arrays.length > 1;
  const add = (item: LabItem, a: LabArray) => items.push(several && item.kind !== 'array' ? { ...item, array: a.name } : item);
  const state = readState(lab, o.runDir);
  const sites = sitesOf(lab, state);
  try {
    const upNames = new Set<string>();
    for (const s of sites) if (await answers(s.c)) upNames.add(s.a.name);
    for (const { a, api, c } of sites) {
      const up = upNames.has(a.name) && c !== undefined;
      const st = state.arrays[a.name];
      const by = st && alive(st.pid) ? `, started by lab up (pid ${st.pid})` : '';
      const where = api ?? `${a.api} (lab up picks the port)`;
      add({ kind: 'array', name: a.name, state: up ? 'running' : 'down', detail: up ? `answers at ${api}${by}` : `nothing answers at ${where}` }, a);
      if (lab.seats.names.length > 0) {
        const tenants = up ? new Map((await c.listTenants()).map((t) => [t.name, t])) : null;
        const users = up ? new Map((await c.listUsers()).map((u) => [u.name, u])) : null;
        for (const seat of lab.seats.names) {
          const t = tenants?.get(seat);
          const u = users?.get(seat);
          const file = seatTokenFile(lab, o.runDir, a, seat);
          const st = !tenants ? 'unknown' : t && u?.tenant === seat ? 'present' : 'missing';
          const detail = t
            ? `user ${u?.tenant === seat ? `${seat}, ${u.role}` : `${seat} missing`}, tenant ${seat}: ${t.volumes} volume(s), ${t.hosts} host(s), ${t.sessions} session(s)` +
              `${quotaText(t) ? `; quotas ${quotaText(t)}` : ''}; ${existsSync(file) ? `token in ${file}` : 'no token file'}`
            : undefined;
          add({ kind: 'seat', name: seat, state: st, detail }, a);
        }
      }
      const vols = up ? new Map((await c.listVolumes()).map((v) => [v.name, v])) : null;
      for (const v of a.volumes) {
        const cur = vols?.get(v.name);
        add({ kind: 'volume', name: v.name, state: !vols ? 'unknown' : cur ? 'present' : 'missing', ...(cur ? { detail: formatSize(cur.sizeBytes) } : {}) }, a);
      }
      const hosts = up && a.hosts.length ? new Map((await c.listHosts()).hosts.map((h) => [h.name, h])) : null;
      for (const h of a.hosts) {
        const cur = hosts?.get(h.name);
        add(
          {
            kind: 'host',
            name: h.name,
            state: !hosts ? 'unknown' : cur ? 'present' : 'missing',
            ...(cur ? { detail: cur.luns.map((l) => `LUN ${l.lun} ${l.volume}`).join(', ') } : {}),
          },
          a,
        );
      }
      const remotes = up && a.remotes.length ? new Map((await c.listRemotes()).map((r) => [r.name, r])) : null;
      for (const r of a.remotes) {
        const cur = remotes?.get(r.name);
        const st = !remotes ? 'unknown' : !cur ? 'missing' : cur.reachable ? 'reachable' : 'unreachable';
        const detail = cur ? `${r.array !== undefined ? `array ${r.array} ` : ''}at ${cur.api}${cur.error ? `: ${cur.error}` : ''}` : undefined;
        add({ kind: 'remote', name: r.name, state: st, detail }, a);
      }
      const sessions = up && a.copies.length ? await c.listCopies() : null;
      for (const p of a.copies) {
        const cur = sessions ? findPair(sessions, p) : undefined;
        let detail: string | undefined;
        if (cur) {
          // The remote end's own view, when its array is the lab's and runs.
          const peer = a.remotes.find((r) => r.name === p.remote)?.array;
          const other = peer !== undefined && upNames.has(peer) ? sites.find((x) => x.a.name === peer)?.c : undefined;
          const end = other ? await other.getCopy(cur.id).catch(() => undefined) : undefined;
          const halt = cur.remote?.haltReason ? ` (${cur.remote.haltReason})` : '';
          detail = `REC ${cur.remote!.mode}, session ${cur.id}${halt}${other ? `; on ${peer}: ${end?.state ?? 'no remote end'}` : ''}`;
        }
        add({ kind: 'copy', name: pairName(p), state: !sessions ? 'unknown' : (cur?.state ?? 'missing'), detail }, a);
      }
      // Every fault set on the array, the lab's or not: a trainee must see what is broken.
      if (up)
        for (const f of await c.listFaults())
          add({ kind: 'fault', name: f.id, state: `fired ${f.fired}`, detail: `${f.target}: ${f.description}${f.label ? ` [${f.label}]` : ''}` }, a);
    }
  } finally {
    closeAll(sites);
  }
  for (const vm of lab.vms) {
    const rec = readRecord(o.runDir, vm.name);
    const st = rec ? vmState(rec) : 'not started';
    items.push({ kind: 'vm', name: vm.name, state: st, ...(rec ? { detail: `pid ${rec.pid}; agent socket ${rec.sockets.agent}` } : {}) });
  }
  items.forEach((i) => o.onItem?.(i));
  return items;
}
