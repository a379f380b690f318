/**
 * `lab up|down|status`: makes the lab's arrays match a lab file, idempotently, and says what it
 * did. up starts the arrays (each one that does not answer, with start: true), creates what is
 * missing on each (volumes, hosts), then, with every array running, the remotes and REC pairs
 * between them, the VMs and last the faults; it leaves what exists (it never resizes or
 * deletes). down stops the lab's VMs and the arrays it started, and with purge deletes the lab's
 * pairs, remotes, volumes, hosts and, for an array it started, the data directory. What lab up
 * started is remembered in the run directory (.lab-<name>-<hash>.json), so lab down stops only
 * that. A started array runs with a config of its own (lab-array.yaml in its data directory):
 * none of the built-in config's volumes.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { formatHostPort, parseHostPort } from '../../proto/util/address.js';
import { ArrayClient } from '../../proto/ArrayClient.js';
import type { CopySessionView } from '../../proto/views.js';
import { loadConfig } from '../config.js';
import { formatSize } from '../../proto/util/units.js';
import { stopDetachedGuest } from '../vm/detached.js';
import { defaultInitiatorName } from '../vm/qemuArgs.js';
import { readRecord, vmState } from '../vm/registry.js';
import { startVm } from '../vm/start.js';
import type { Lab, LabArray, LabCopy } from './schema.js';
import { stringify as stringifyYaml } from 'yaml';

/** The plan a lab's faults are applied as: applying it again replaces them. */
const LAB_PLAN = 'lab';

export interface LabItem {
  kind: 'array' | 'volume' | 'host' | 'remote' | 'copy' | 'vm' | 'fault';
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

function stateFile(lab: Lab, runDir: string): string {
  const tag = createHash('sha256').update(lab.file).digest('hex').slice(0, 8);
  return join(runDir, `.lab-${basename(lab.file).replace(/\.ya?ml$/, '')}-${tag}.json`);
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function answers(client: ArrayClient | undefined): Promise<boolean> {
  if (!client) return false;
  try {
    await client.getStatus();
    return true;
  } catch {
    return false;
  }
}

/**
 * What lab up keeps in a started array's data directory, past lab down: the API address (on
 * api: 0, the port it picked, so the peers' remotes stay valid) and whether it made the directory.
 */
const labArrayFile = (a: LabArray) => join(a.dataDir, 'lab-array.json');

function readLabArray(a: LabArray): { api?: string; createdDataDir?: boolean } {
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

const clientAt = (api: string) => new ArrayClient(api, { deadlineMs: 5000 });

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
    `# Written by arraylab lab up for ${lab.file} (array ${a.name}) at every start of its array.\n# No volumes: the lab's volumes are created by lab up; listen addresses and dataDir are flags.\nvolumes: []\n`,
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
    return { a, api, c: api ? clientAt(api) : undefined };
  });
}

const closeAll = (sites: Site[]) => {
  for (const s of sites) s.c?.close();
};

/** The session of a lab pair on its source array. */
const findPair = (sessions: CopySessionView[], p: LabCopy) =>
  sessions.find((s) => s.type === 'rec' && s.remote?.role === 'source' && s.source === p.src && s.destination === p.dst);

const pairName = (p: LabCopy) => `${p.src}->${p.dst}`;

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
        s.c ??= clientAt(s.api);
        state.arrays[a.name] = await startArray(lab, a, s.api, o);
        writeState(lab, o.runDir, { file: lab.file, arrays: state.arrays });
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
          say({ kind: 'volume', name: v.name, state: 'created', detail: `${formatSize(v.sizeBytes)} ${v.provisioning}, ${v.blockSize}-byte blocks` }, a);
        } else {
          const differs =
            cur.sizeBytes !== v.sizeBytes || cur.blockSize !== v.blockSize
              ? ` (the lab says ${formatSize(v.sizeBytes)}/${v.blockSize}, the array has ${formatSize(cur.sizeBytes)}/${cur.blockSize}; left as is)`
              : '';
          say({ kind: 'volume', name: v.name, state: 'exists', detail: `${formatSize(cur.sizeBytes)}${differs}` }, a);
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
          say(
            {
              kind: 'host',
              name: h.name,
              state: done.length ? (done[0] === 'created' ? 'created' : 'updated') : 'exists',
              detail: done.join(', ') || undefined,
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
        if (cur?.api === want) {
          say({ kind: 'remote', name: r.name, state: 'exists', detail: what }, a);
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
        await c.addRemote(r.name, want).catch(fail);
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

    for (const vm of lab.vms) {
      const rec = readRecord(o.runDir, vm.name);
      if (rec && vmState(rec) !== 'exited') {
        say({ kind: 'vm', name: vm.name, state: 'running', detail: `pid ${rec.pid}` });
        continue;
      }
      const started = await startVm({ client: site(vm.array).c, name: vm.name, attach: vm.attach, memoryMiB: vm.memoryMiB, runDir: o.runDir, log: o.log });
      say({
        kind: 'vm',
        name: vm.name,
        state: 'started',
        detail: `booted in ${((started.bootMs ?? 0) / 1000).toFixed(2)} s; ${started.disks.map((d) => `${d.volume} as ${d.guestDevice}`).join(', ')}; agent socket ${started.sockets.agent}`,
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

export async function labDown(lab: Lab, o: LabOptions & { purge?: boolean }): Promise<LabItem[]> {
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
            say({ kind: 'remote', name: r.name, state: 'removed' }, a);
          } catch (err) {
            say({ kind: 'remote', name: r.name, state: 'not removed', detail: (err as Error).message }, a);
          }
        }
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
  return items;
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
