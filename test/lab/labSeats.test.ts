/**
 * Trainee seats and NBD keys of `arraylab lab` (no VM boots here): lab up makes a tenant and a
 * user per seat on the array it starts, writes each token 0600 and prints where; a seat's user
 * sees only what the lab gave its seat; lab up again keeps the tokens; lab status lists the
 * seats; lab down removes them unless --keep-seats. A lab whose VMs attach via nbd under host
 * affinity, on an array used as it is without NBD TLS-PSK, fails before any VM boots, saying
 * what to change, with the host's key already made and kept 0600.
 */
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { makeTempDir, runCli, startArraylab } from '../support/arraylab.js';
import { killPids, labServePids } from '../support/lab.js';
import { freePort } from '../support/ports.js';

let dir: string;
let runDir: string;

const killServes = () => killPids(labServePids(runDir));
process.once('exit', () => runDir && killServes());

beforeAll(() => {
  dir = makeTempDir('arraylab-lab-seats-');
  runDir = join(dir, 'run');
});
afterAll(() => killServes());

const lab = (args: string[]) => runCli(['lab', ...args, '--run-dir', runDir], { timeoutMs: 60_000 });

describe('lab seats', () => {
  it('makes a tenant and a user per seat, 0600 tokens that see what the lab gave the seat; kept across up, removed by down', async () => {
    const api = `127.0.0.1:${await freePort()}`;
    const file = join(dir, 'class.yaml');
    writeFileSync(
      file,
      stringify({
        arrays: [{ name: 'array0', api, start: true, dataDir: './class-data', nbd: '127.0.0.1:0', iscsi: '127.0.0.1:0' }],
        seats: { count: 2, role: 'operator', maxVolumes: 3 },
        volumes: [
          { name: 'tv1', size: '8MiB', seat: 'seat1' },
          { name: 'tv2', size: '8MiB', seat: 'seat2' },
          { name: 'shared', size: '8MiB' },
        ],
        hosts: [{ name: 'h1', initiators: ['iqn.2026-01.lab.test:h1'], luns: ['tv1'], seat: 'seat1' }],
      }),
    );
    const up = await lab(['up', file]);
    expect(up.stderr).toBe('');
    expect(up.code).toBe(0);
    const lines = up.stdout.trim().split('\n');
    const token = (seat: string) => lines.find((l) => l.startsWith(`seat ${seat}: `))?.match(/token in (\S+)\)$/)?.[1];
    for (const seat of ['seat1', 'seat2']) {
      expect(lines).toContain(`seat ${seat}: created (user ${seat}, operator, tenant ${seat} (3 volumes); token in ${token(seat)})`);
      expect(token(seat)).toMatch(new RegExp(`^${runDir}/\\.secrets-class-[0-9a-f]{8}/array0/${seat}\\.token$`));
      expect(statSync(token(seat)!).mode & 0o777).toBe(0o600);
    }
    expect(statSync(dirname(token('seat1')!)).mode & 0o777).toBe(0o700);
    expect(lines).toContain('volume tv1: created (8 MiB thin, 512-byte blocks; seat seat1)');
    expect(lines).toContain('host h1: created (created, mapped tv1 at LUN 0, seat seat1)');

    // Each seat's user sees its own volumes only; the lab's unassigned volume is nobody's but the admin's.
    const seen = async (seat: string) => {
      const r = await runCli(['volume', 'list', '--json', '--api', api, '--token-file', token(seat)!]);
      expect(r.stderr).toBe('');
      return (JSON.parse(r.stdout) as { volumes: Array<{ name: string }> }).volumes.map((v) => v.name);
    };
    expect(await seen('seat1')).toEqual(['tv1']);
    expect(await seen('seat2')).toEqual(['tv2']);
    const tokens = ['seat1', 'seat2'].map((s) => readFileSync(token(s)!, 'utf8'));

    // Again: the seats exist and keep their tokens.
    const again = JSON.parse((await lab(['up', file, '--json'])).stdout) as { items: Array<{ kind: string; name: string; state: string }> };
    expect(again.items.filter((i) => i.kind === 'seat').map((i) => `${i.name} ${i.state}`)).toEqual(['seat1 exists', 'seat2 exists']);
    expect(['seat1', 'seat2'].map((s) => readFileSync(token(s)!, 'utf8'))).toEqual(tokens);

    const status = await lab(['status', file]);
    expect(status.stdout).toMatch(
      /seat\s+seat1\s+present\s+user seat1, operator, tenant seat1: 1 volume\(s\), 1 host\(s\), 0 session\(s\); quotas 3 volumes; token in /,
    );

    // Down keeping the seats, up again: the same tokens still work.
    const kept = await lab(['down', file, '--keep-seats']);
    expect(kept.code).toBe(0);
    expect(kept.stdout).not.toContain('seat ');
    expect(existsSync(token('seat1')!)).toBe(true);
    expect((await lab(['up', file])).stdout).toContain(`seat seat1: exists (user seat1, operator, tenant seat1 (3 volumes); token in ${token('seat1')})`);
    expect(await seen('seat1')).toEqual(['tv1']);

    // Down: the seats go (their volumes stay, with no tenant), and their token files.
    const down = await lab(['down', file]);
    expect(down.code).toBe(0);
    expect(down.stdout).toContain('seat seat1: removed (tenant seat1 and user seat1)');
    expect(down.stdout).toContain('seat seat2: removed (tenant seat2 and user seat2)');
    expect(existsSync(token('seat1')!)).toBe(false);
    expect(existsSync(dirname(dirname(token('seat1')!)))).toBe(false);
    expect(labServePids(runDir)).toEqual([]);
  }, 120_000);
});

describe('a lab on an array used as it is, without NBD TLS-PSK', () => {
  it('fails before any VM boots, saying what to change, with the host key made and kept 0600', async () => {
    const array = await startArraylab();
    const file = join(dir, 'plain-nbd.yaml');
    writeFileSync(
      file,
      stringify({
        arrays: [{ name: 'array0', api: array.apiAddress }],
        volumes: [{ name: 'tv1', size: '8MiB' }],
        hosts: [{ name: 'h1', vms: ['lab1'], luns: ['tv1'] }],
        vms: [{ name: 'lab1', attach: [{ volume: 'tv1', via: 'nbd' }] }],
      }),
    );
    const up = await lab(['up', file]);
    expect(up.code).toBe(1);
    expect(up.stderr.trimEnd()).toMatch(
      new RegExp(
        `^arraylab: lab ${file}: arrays\\[0\\]: array array0 at ${array.apiAddress} serves NBD without TLS \\(.*\\); VM lab1 attaches volumes via nbd, and with hosts defined an NBD client sees its host's volumes only with its TLS-PSK identity: restart it with nbd\\.tls\\.psk on \\(in its config: nbd: \\{tls: \\{psk: true\\}\\}\\), or attach those volumes via: iscsi, or have the lab start an array of its own \\(start: true, another api\\)$`,
      ),
    );
    const keys = /^host h1: created \(created, mapped tv1 at LUN 0, NBD PSK identity h1 \(key in (\S+)\)\)$/m.exec(up.stdout)?.[1];
    expect(keys).toMatch(/\/\.secrets-plain-nbd-[0-9a-f]{8}\/array0\/keys\.psk$/);
    expect(readFileSync(keys!, 'utf8')).toMatch(/^h1:[0-9a-f]{64}\n$/);
    expect(statSync(keys!).mode & 0o777).toBe(0o600);
    const host = JSON.parse((await array.cli(['host', 'show', 'h1', '--json'])).stdout) as { credentials: { nbdPskIdentity?: string } };
    expect(host.credentials.nbdPskIdentity).toBe('h1');
    // Run again, the host keeps its key (the file has it): nothing new to put in clients.
    const before = readFileSync(keys!, 'utf8');
    expect((await lab(['up', file])).stdout).toContain('host h1: exists');
    expect(readFileSync(keys!, 'utf8')).toBe(before);
    await array.stop();
  }, 120_000);
});
