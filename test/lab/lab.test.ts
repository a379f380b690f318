/**
 * `arraylab lab up|status|down` with the example lab (vm-images/labs/backup-restore.yaml) on
 * its own API port and data dir: up starts arraylab serve detached, creates the volumes and
 * boots the VM; a second up changes nothing; down stops both and keeps the data. A lab with a
 * host: the array runs with NBD TLS-PSK, the host gets a key and its VM attaches over TLS-PSK,
 * while an anonymous NBD client sees nothing. Lab files that do not validate fail with file:
 * key: message and exit 2.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { stopDetachedGuest } from '../../emulator/vm/detached.js';
import { isQemuAlive, listRecords, readRecord } from '../../emulator/vm/registry.js';
import { makeTempDir, REPO_ROOT, runCli } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';
import { labServePids } from '../support/lab.js';
import { freePort } from '../support/ports.js';

const run = promisify(execFile);
const log = pino({ level: 'warn' });
const EXAMPLE = join(REPO_ROOT, 'vm-images', 'labs', 'backup-restore.yaml');
let dir: string;
let runDir: string;

/** arraylab serve processes lab up started (from its state files). */
const servePids = () => labServePids(runDir);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function cleanup(): Promise<void> {
  if (!runDir) return;
  for (const rec of listRecords(runDir)) await stopDetachedGuest(rec, { force: true, runDir, log });
  for (const pid of servePids()) if (alive(pid)) process.kill(pid, 'SIGKILL');
}
process.once('exit', () => {
  if (!runDir) return;
  for (const rec of listRecords(runDir)) if (isQemuAlive(rec)) process.kill(rec.pid, 'SIGKILL');
  for (const pid of servePids()) if (alive(pid)) process.kill(pid, 'SIGKILL');
});

beforeAll(async () => {
  requireTool('qemu-system-x86_64');
  await run('bash', [join(REPO_ROOT, 'vm-images', 'build.sh')], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 });
  dir = makeTempDir('arraylab-lab-');
  runDir = join(dir, 'vms');
}, 600_000);
afterAll(cleanup, 60_000);

function lab(args: string[]) {
  return runCli(['lab', ...args, '--run-dir', runDir], { timeoutMs: 150_000 });
}

describe('arraylab lab', () => {
  it('brings the example lab up (array, volumes, VM), is idempotent, shows status, and takes it down keeping the data', async () => {
    const example = parse(readFileSync(EXAMPLE, 'utf8')) as {
      arrays: Array<Record<string, unknown>>;
      volumes: Array<{ name: string }>;
      vms: Array<{ name: string }>;
    };
    const api = `127.0.0.1:${await freePort()}`;
    Object.assign(example.arrays[0]!, { api, dataDir: './data', nbd: '127.0.0.1:0', iscsi: '127.0.0.1:0' });
    const file = join(dir, 'backup-restore.yaml');
    writeFileSync(file, stringify(example));
    const vmName = example.vms[0]!.name;

    const up = await lab(['up', file]);
    expect(up.stderr).toBe('');
    expect(up.code).toBe(0);
    const lines = up.stdout.trim().split('\n');
    expect(lines[0]).toMatch(
      new RegExp(
        `^array array0: started \\(arraylab serve pid \\d+ at ${api}, NBD 127\\.0\\.0\\.1:\\d+, iSCSI 127\\.0\\.0\\.1:\\d+, data in ${join(dir, 'data')}\\)$`,
      ),
    );
    for (const v of ['tv1', 'bv1', 'bv2']) expect(lines).toContain(`volume ${v}: created (256 MiB thin, 512-byte blocks)`);
    expect(lines.at(-1)).toMatch(new RegExp(`^vm ${vmName}: started \\(booted in [\\d.]+ s; tv1 as /dev/vda; agent socket ${runDir}/${vmName}/agent.sock\\)$`));
    console.log(lines.at(-1));

    // The guest has the transaction volume; the array the lab started is really serving it.
    const serial = await runCli(['vm', 'console', vmName, '--run-dir', runDir, '-c', 'cat /sys/block/vda/serial']);
    expect(serial.stdout).toBe('tv1');
    const { volumes } = JSON.parse((await runCli(['volume', 'list', '--json', '--api', api])).stdout) as { volumes: Array<{ name: string }> };
    expect(volumes.map((v) => v.name).sort()).toEqual(['bv1', 'bv2', 'tv1']); // not the built-in config's demo

    // Again: nothing created, nothing started.
    const again = await lab(['up', file, '--json']);
    const items = (JSON.parse(again.stdout) as { items: Array<{ kind: string; name: string; state: string }> }).items;
    expect(items.map((i) => `${i.kind} ${i.name} ${i.state}`)).toEqual([
      'array array0 running',
      'volume tv1 exists',
      'volume bv1 exists',
      'volume bv2 exists',
      `vm ${vmName} running`,
    ]);

    const status = await lab(['status', file]);
    expect(status.stdout).toMatch(/^KIND\s+NAME\s+STATE\s+DETAIL\n/);
    expect(status.stdout).toMatch(new RegExp(`vm\\s+${vmName}\\s+running\\s+pid \\d+`));
    expect(status.stdout).toMatch(/volume\s+tv1\s+present\s+256 MiB/);

    const down = await lab(['down', file]);
    expect(down.code).toBe(0);
    expect(down.stdout).toContain(`vm ${vmName}: stopped (powered off)`);
    expect(down.stdout).toMatch(/array array0: stopped \(arraylab serve pid \d+\)/);
    expect(listRecords(runDir)).toEqual([]);
    expect(servePids()).toEqual([]);
    const after = JSON.parse((await lab(['status', file, '--json'])).stdout) as { items: Array<{ kind: string; state: string }> };
    expect(after.items[0]).toMatchObject({ kind: 'array', state: 'down' });
    expect(after.items.at(-1)).toMatchObject({ kind: 'vm', state: 'not started' });
    // Data kept: the volumes are still in the data directory for the next lab up.
    expect(readdirSync(join(dir, 'data')).length).toBeGreaterThan(0);
  }, 240_000);

  it("gives a lab host's VM its volume over NBD TLS-PSK (host affinity on), and an anonymous NBD client nothing", async () => {
    requireTool('nbdinfo');
    const api = `127.0.0.1:${await freePort()}`;
    const file = join(dir, 'hosted.yaml');
    writeFileSync(
      file,
      stringify({
        arrays: [{ name: 'array0', api, start: true, dataDir: './hosted-data', nbd: '127.0.0.1:0', iscsi: '127.0.0.1:0' }],
        seats: { count: 1 },
        volumes: [
          { name: 'tv1', size: '64MiB', seat: 'seat1' },
          { name: 'spare', size: '8MiB' },
        ],
        hosts: [{ name: 'h1', vms: ['web1'], luns: ['tv1'], seat: 'seat1' }],
        vms: [{ name: 'web1', memory: 1024, attach: [{ volume: 'tv1', via: 'nbd' }] }],
      }),
    );
    const up = await lab(['up', file]);
    expect(up.stderr).toBe('');
    expect(up.code).toBe(0);
    const nbd = /^array array0: started \(.*, NBD (127\.0\.0\.1:\d+),/m.exec(up.stdout)?.[1];
    const keys = /^host h1: created \(created, mapped tv1 at LUN 0, NBD PSK identity h1 \(key in (\S+)\), seat seat1\)$/m.exec(up.stdout)?.[1];
    expect(keys, up.stdout).toMatch(/\/\.secrets-hosted-[0-9a-f]{8}\/array0\/keys\.psk$/);
    expect(statSync(keys!).mode & 0o777).toBe(0o600);
    expect(up.stdout).toMatch(/^vm web1: started \(booted in [\d.]+ s; tv1 as \/dev\/vda; NBD over TLS-PSK as h1; agent socket /m);
    console.log(up.stdout.trim().split('\n').at(-1));
    // The array the lab wrote runs with TLS-PSK, and the guest's qemu offers the host's identity.
    expect(readFileSync(join(dir, 'hosted-data', 'lab-array.yaml'), 'utf8')).toMatch(/^nbd:\n {2}tls:\n {4}psk: true$/m);
    const rec = readRecord(runDir, 'web1')!;
    expect(rec.argv).toContain(`tls-creds-psk,id=tls0,endpoint=client,dir=${join(runDir, 'web1', 'nbd-psk')},username=h1`);
    const serial = await runCli(['vm', 'console', 'web1', '--run-dir', runDir, '-c', 'cat /sys/block/vda/serial; blockdev --getsize64 /dev/vda']);
    expect(serial.stdout).toBe(`tv1${64 * 1024 * 1024}\n`);
    // nbdinfo lists the host's volume with its key (the lab's keys.psk) and nothing without one.
    const list = async (uri: string) => {
      const r = await run('nbdinfo', ['--list', '--json', uri]).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? '' }));
      return r.stdout ? (JSON.parse(r.stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((e) => e['export-name']) : [];
    };
    expect(await list(`nbds://h1@${nbd}/?tls-psk-file=${keys}`)).toEqual(['tv1']);
    expect(await list(`nbd://${nbd}/`)).toEqual([]);

    const down = await lab(['down', file, '--purge']);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toContain('vm web1: stopped (powered off)');
    expect(down.stdout).toContain('seat seat1: removed (tenant seat1 and user seat1)');
    expect(existsSync(keys!)).toBe(false);
    expect(listRecords(runDir)).toEqual([]);
    expect(servePids()).toEqual([]);
  }, 240_000);

  it.each([
    ['arrays: [\n  {name: a, api: 127.0.0.1:7390\n', /: YAML syntax error at line \d+, column \d+: .*; fix the YAML$/],
    [
      'arrays: [{name: a, api: 127.0.0.1:7390}]\nvolumes: [{name: v, size: 1GiB, colour: red}]\n',
      /: volumes\[0\]\.colour: unknown key; use one of name, size, blockSize, provisioning, seat$/,
    ],
    [
      'arrays: [{name: a, api: 127.0.0.1:7390}, {name: b, api: 127.0.0.1:7391}]\nvolumes: [{name: v, size: 1GiB}]\n',
      /: volumes: a lab with several arrays declares volumes under each array; move them to arrays\[N\]\.volumes of the array they belong to$/,
    ],
    [
      'arrays: [{name: a, api: 127.0.0.1:7390}]\nvolumes: [{name: v, size: 1GiB}]\nvms: [{name: m, attach: [{volume: v, via: scsi}]}]\n',
      /: vms\[0\]\.attach\[0\]\.via: "scsi" is not a transport; use nbd or iscsi$/,
    ],
    [
      'arrays: [{name: a, api: 127.0.0.1:7390}]\nvms: [{name: m, attach: [w]}]\n',
      /: vms\[0\]\.attach\[0\]: volume w is not declared in volumes \(there are none\); declare it there$/,
    ],
    ['arrays: [{name: a, api: nowhere}]\n', /: arrays\[0\]\.api: /],
    ['arrays: [{name: a, api: 127.0.0.1:7390}]\nvolumes: [{name: v, size: 10XB}]\n', /: volumes\[0\]\.size: /],
  ])('refuses a lab file that does not validate, naming the file and key: %#', async (text, message) => {
    const file = join(dir, `bad-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(file, text);
    const r = await lab(['status', file]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.split('\n')).toHaveLength(2);
    expect(r.stderr.startsWith(`arraylab: lab ${file}: `)).toBe(true);
    expect(r.stderr.trimEnd()).toMatch(message);
  });

  it('says where the lab file is missing', async () => {
    const r = await lab(['up', join(dir, 'nope.yaml')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `arraylab: lab ${join(dir, 'nope.yaml')}: cannot read it: no such file; check the path (an example: vm-images/labs/backup-restore.yaml)\n`,
    );
  });
});
