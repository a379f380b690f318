/**
 * `lab up|down|status`: makes the array match a lab file, idempotently, and says what it did.
 * up creates what is missing and leaves what exists (it never resizes or deletes); down stops
 * the lab's VMs and the array it started, and with purge deletes its volumes, hosts and, for an
 * array it started, the data directory. What lab up started is remembered in the run
 * directory (.lab-<name>.json), so lab down stops only that. A started array runs with a config
 * of its own (lab-array.yaml in its data directory): none of the built-in config's volumes.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { formatHostPort } from '../../proto/util/address.js';
import { ArrayClient } from '../../proto/ArrayClient.js';
import { loadConfig } from '../config.js';
import { formatSize } from '../../proto/util/units.js';
import { stopDetachedGuest } from '../vm/detached.js';
import { defaultInitiatorName } from '../vm/qemuArgs.js';
import { readRecord, vmState } from '../vm/registry.js';
import { startVm } from '../vm/start.js';
import type { Lab } from './schema.js';
import { stringify as stringifyYaml } from 'yaml';

/** The plan a lab's faults are applied as: applying it again replaces them. */
const LAB_PLAN = 'lab';

export interface LabItem {
  kind: 'array' | 'volume' | 'host' | 'vm' | 'fault';
  name: string;
  /** up: created, exists, started, running, mapped...; status: the item's state. */
  state: string;
  detail?: string | undefined;
}

export interface LabOptions {
  runDir: string;
  log: Logger;
  onItem?: (item: LabItem) => void;
}

interface LabState {
  file: string;
  /** arraylab serve started by lab up. */
  serve?: { pid: number; api: string; dataDir: string; createdDataDir: boolean } | undefined;
}

function stateFile(lab: Lab, runDir: string): string {
  const tag = createHash('sha256').update(lab.file).digest('hex').slice(0, 8);
  return join(runDir, `.lab-${basename(lab.file).replace(/\.ya?ml$/, '')}-${tag}.json`);
}

function readState(lab: Lab, runDir: string): LabState {
  try {
    return JSON.parse(readFileSync(stateFile(lab, runDir), 'utf8')) as LabState;
  } catch {
    return { file: lab.file };
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

async function answers(client: ArrayClient): Promise<boolean> {
  try {
    await client.getStatus();
    return true;
  } catch {
    return false;
  }
}

function client(lab: Lab): ArrayClient {
  return new ArrayClient(lab.arrays[0]!.api, { deadlineMs: 5000 });
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
function writeServeConfig(lab: Lab): string {
  const file = join(lab.arrays[0]!.dataDir, 'lab-array.yaml');
  writeFileSync(
    file,
    `# Written by arraylab lab up for ${lab.file} at every start of its array.\n# No volumes: the lab's volumes are created by lab up; listen addresses and dataDir are flags.\nvolumes: []\n`,
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

async function startArray(lab: Lab, c: ArrayClient, o: LabOptions): Promise<LabState['serve']> {
  const a = lab.arrays[0]!;
  const createdDataDir = !existsSync(a.dataDir);
  mkdirSync(a.dataDir, { recursive: true });
  const logFile = join(a.dataDir, 'serve.log');
  const listen = defaultListen();
  const args = [
    cliPath(),
    'serve',
    '--config',
    writeServeConfig(lab),
    '--api',
    a.api,
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
  const end = Date.now() + 30_000;
  let exited = false;
  while (Date.now() < end) {
    if (await answers(c)) return { pid: child.pid!, api: a.api, dataDir: a.dataDir, createdDataDir };
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
      `lab ${lab.file}: arrays[0].${taken.key}: its array did not start: ${taken.message}; set arrays[0].${taken.key} in the lab file to a free address (port 0: any free port), or stop what holds it; log: ${logFile}`,
    );
  }
  const tail = log.trim().split('\n').slice(-5).join('\n');
  const how = exited ? `arraylab serve exited before it answered at ${a.api}` : `arraylab serve did not answer at ${a.api} within 30 s`;
  throw new Error(`lab ${lab.file}: arrays[0]: ${how}; its log ${logFile} ends:\n${tail}`);
}

export async function labUp(lab: Lab, o: LabOptions): Promise<LabItem[]> {
  const items: LabItem[] = [];
  const say = (item: LabItem) => {
    items.push(item);
    o.onItem?.(item);
  };
  const a = lab.arrays[0]!;
  const state = readState(lab, o.runDir);
  const c = client(lab);
  try {
    if (await answers(c)) {
      say({ kind: 'array', name: a.name, state: state.serve && alive(state.serve.pid) ? 'running' : 'exists', detail: `answers at ${a.api}` });
    } else if (a.start) {
      state.serve = await startArray(lab, c, o);
      writeState(lab, o.runDir, state);
      const { listeners: l } = await c.getStatus();
      const ports = `NBD ${l.nbd.host}:${l.nbd.port}${l.iscsi.available ? `, iSCSI ${l.iscsi.host}:${l.iscsi.port}` : ''}`;
      say({ kind: 'array', name: a.name, state: 'started', detail: `arraylab serve pid ${state.serve!.pid} at ${a.api}, ${ports}, data in ${a.dataDir}` });
    } else {
      throw new Error(`lab ${lab.file}: arrays[0]: nothing answers at ${a.api}; start it with: arraylab serve --api ${a.api}, or set start: true`);
    }

    const have = new Map((await c.listVolumes()).map((v) => [v.name, v]));
    for (const v of lab.volumes) {
      const cur = have.get(v.name);
      if (!cur) {
        await c.createVolume({
          name: v.name,
          sizeBytes: v.sizeBytes,
          blockSize: v.blockSize,
          provisioning: v.provisioning,
          description: `lab ${basename(lab.file)}`,
        });
        say({ kind: 'volume', name: v.name, state: 'created', detail: `${formatSize(v.sizeBytes)} ${v.provisioning}, ${v.blockSize}-byte blocks` });
      } else {
        const differs =
          cur.sizeBytes !== v.sizeBytes || cur.blockSize !== v.blockSize
            ? ` (the lab says ${formatSize(v.sizeBytes)}/${v.blockSize}, the array has ${formatSize(cur.sizeBytes)}/${cur.blockSize}; left as is)`
            : '';
        say({ kind: 'volume', name: v.name, state: 'exists', detail: `${formatSize(cur.sizeBytes)}${differs}` });
      }
    }

    if (lab.hosts.length > 0) {
      const hosts = new Map((await c.listHosts()).hosts.map((h) => [h.name, h]));
      for (const h of lab.hosts) {
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
        say({
          kind: 'host',
          name: h.name,
          state: done.length ? (done[0] === 'created' ? 'created' : 'updated') : 'exists',
          detail: done.join(', ') || undefined,
        });
      }
    }

    for (const vm of lab.vms) {
      const rec = readRecord(o.runDir, vm.name);
      if (rec && vmState(rec) !== 'exited') {
        say({ kind: 'vm', name: vm.name, state: 'running', detail: `pid ${rec.pid}` });
        continue;
      }
      const started = await startVm({ client: c, name: vm.name, attach: vm.attach, memoryMiB: vm.memoryMiB, runDir: o.runDir, log: o.log });
      say({
        kind: 'vm',
        name: vm.name,
        state: 'started',
        detail: `booted in ${((started.bootMs ?? 0) / 1000).toFixed(2)} s; ${started.disks.map((d) => `${d.volume} as ${d.guestDevice}`).join(', ')}; agent socket ${started.sockets.agent}`,
      });
    }

    // Last, once everything is up: a fault could otherwise break the lab's own set-up (a VM's boot).
    if (lab.faults.length > 0) {
      const set = await c.applyFaultPlan(stringifyYaml({ name: LAB_PLAN, seed: lab.seed, faults: lab.faults }), `lab ${lab.file}`);
      for (const f of set) say({ kind: 'fault', name: f.id, state: 'set', detail: `${f.target}: ${f.description}` });
    }
  } finally {
    c.close();
  }
  return items;
}

export async function labDown(lab: Lab, o: LabOptions & { purge?: boolean }): Promise<LabItem[]> {
  const items: LabItem[] = [];
  const say = (item: LabItem) => {
    items.push(item);
    o.onItem?.(item);
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
  const c = client(lab);
  try {
    if (lab.faults.length > 0 && (await answers(c))) {
      for (const f of await c.listFaults()) {
        if (f.label !== `plan:${LAB_PLAN}`) continue;
        await c.removeFault(f.id);
        say({ kind: 'fault', name: f.id, state: 'removed', detail: `${f.target}: ${f.description}` });
      }
    }
    if (o.purge && (await answers(c))) {
      for (const h of lab.hosts) {
        try {
          await c.deleteHost(h.name, { force: true });
          say({ kind: 'host', name: h.name, state: 'removed' });
        } catch (err) {
          say({ kind: 'host', name: h.name, state: 'not removed', detail: (err as Error).message });
        }
      }
      for (const v of lab.volumes) {
        try {
          await c.deleteVolume(v.name);
          say({ kind: 'volume', name: v.name, state: 'deleted' });
        } catch (err) {
          say({ kind: 'volume', name: v.name, state: 'not deleted', detail: (err as Error).message });
        }
      }
    }
  } finally {
    c.close();
  }
  const a = lab.arrays[0]!;
  if (state.serve && alive(state.serve.pid)) {
    process.kill(state.serve.pid, 'SIGTERM');
    const end = Date.now() + 30_000;
    while (alive(state.serve.pid) && Date.now() < end) await sleep(100);
    if (alive(state.serve.pid)) process.kill(state.serve.pid, 'SIGKILL');
    say({ kind: 'array', name: a.name, state: 'stopped', detail: `arraylab serve pid ${state.serve.pid}` });
  } else {
    say({ kind: 'array', name: a.name, state: 'left running', detail: 'lab up did not start it' });
  }
  if (o.purge && state.serve?.createdDataDir) {
    rmSync(state.serve.dataDir, { recursive: true, force: true });
    say({ kind: 'array', name: a.name, state: 'purged', detail: `removed ${state.serve.dataDir}` });
  }
  rmSync(stateFile(lab, o.runDir), { force: true });
  return items;
}

export async function labStatus(lab: Lab, o: LabOptions): Promise<LabItem[]> {
  const items: LabItem[] = [];
  const a = lab.arrays[0]!;
  const state = readState(lab, o.runDir);
  const c = client(lab);
  try {
    const up = await answers(c);
    const by = state.serve && alive(state.serve.pid) ? `, started by lab up (pid ${state.serve.pid})` : '';
    items.push({ kind: 'array', name: a.name, state: up ? 'running' : 'down', detail: up ? `answers at ${a.api}${by}` : `nothing answers at ${a.api}` });
    const vols = up ? new Map((await c.listVolumes()).map((v) => [v.name, v])) : null;
    for (const v of lab.volumes) {
      const cur = vols?.get(v.name);
      items.push({
        kind: 'volume',
        name: v.name,
        state: !vols ? 'unknown' : cur ? 'present' : 'missing',
        ...(cur ? { detail: formatSize(cur.sizeBytes) } : {}),
      });
    }
    const hosts = up && lab.hosts.length ? new Map((await c.listHosts()).hosts.map((h) => [h.name, h])) : null;
    for (const h of lab.hosts) {
      const cur = hosts?.get(h.name);
      items.push({
        kind: 'host',
        name: h.name,
        state: !hosts ? 'unknown' : cur ? 'present' : 'missing',
        ...(cur ? { detail: cur.luns.map((l) => `LUN ${l.lun} ${l.volume}`).join(', ') } : {}),
      });
    }
    // Every fault set on the array, the lab's or not: a trainee must see what is broken.
    if (up)
      for (const f of await c.listFaults())
        items.push({ kind: 'fault', name: f.id, state: `fired ${f.fired}`, detail: `${f.target}: ${f.description}${f.label ? ` [${f.label}]` : ''}` });
  } finally {
    c.close();
  }
  for (const vm of lab.vms) {
    const rec = readRecord(o.runDir, vm.name);
    const st = rec ? vmState(rec) : 'not started';
    items.push({ kind: 'vm', name: vm.name, state: st, ...(rec ? { detail: `pid ${rec.pid}; agent socket ${rec.sockets.agent}` } : {}) });
  }
  items.forEach((i) => o.onItem?.(i));
  return items;
}
