/**
 * Scenarios end to end (emulator/lab/scenario/, README "Scenarios"), with the real CLI and the
 * arrays lab up starts (no VMs): lab run --auto passes a scenario whose solves are right and
 * fails, with the check's message and exit 1, one whose solve is wrong; a trainee's way through
 * (start, check, hints, solve, next); and lab reset bringing a broken step back exactly: the
 * volume's bytes (SHA-256 through the array) and a deleted volume.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../emulator/remote/NbdClient.js';
import { makeTempDir, runCli } from '../support/arraylab.js';
import { killPids, labServePids } from '../support/lab.js';

const MiB = 2 ** 20;
let dir: string;
let runDir: string;

const SCENARIO = `
title: A test scenario
description: |
  Two **short** steps.
arrays: [{name: array0, start: true, api: "127.0.0.1:0", nbd: "127.0.0.1:0", iscsi: "127.0.0.1:0"}]
volumes: [{name: tv1, size: 4MiB}, {name: bv1, size: 4MiB}]
steps:
  - title: Create scratch
    instructions: Create the volume \`scratch\`.
    check:
      - volume: {name: scratch}
        message: scratch does not exist yet
    hints: [Volumes are made with arraylab volume create., arraylab volume create scratch --size 1MiB]
    solve: [arraylab volume create SOLVED --size 1MiB --json > /dev/null]
  - title: Copy tv1
    instructions: Start a QuickOPC from tv1 to bv1.
    setup: ['test "$LAB_STEP" = 2 && test -n "$LAB_ARRAY_ARRAY0_API"']
    check:
      - session: {source: tv1, destination: bv1, type: quickopc, state: [tracking]}
        timeout: 10s
      - data: {volume: bv1, sameAs: tv1}
      - shell: arraylab volume show scratch --json > /dev/null
    solve: [arraylab copy start --type quickopc --src tv1 --dst bv1 --json > /dev/null]
`;

function scenario(name: string, solved = 'scratch'): string {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, SCENARIO.replace('SOLVED', solved));
  return file;
}

const lab = (args: string[]) => runCli(['lab', ...args, '--run-dir', runDir], { timeoutMs: 60_000 });

const killServes = () => killPids(labServePids(runDir));
process.once('exit', () => runDir && killServes());

beforeAll(() => {
  dir = makeTempDir('arraylab-scenario-');
  runDir = join(dir, 'run');
});
afterAll(() => killServes());

/** The started array's API, token and NBD port, as the scenario's shell sees them. */
async function arrayOf(dataDir: string): Promise<{ env: NodeJS.ProcessEnv; nbdPort: number }> {
  const api = (JSON.parse(readFileSync(join(dataDir, 'lab-array.json'), 'utf8')) as { api: string }).api;
  const env = { ARRAYLAB_API: api, ARRAYLAB_TOKEN_FILE: join(dataDir, 'admin.token') };
  const st = await runCli(['status', '--json'], { env });
  return { env, nbdPort: (JSON.parse(st.stdout) as { listeners: { nbd: { port: number } } }).listeners.nbd.port };
}

async function nbd(port: number, volume: string): Promise<NbdClient> {
  return NbdClient.connect({ host: '127.0.0.1', port, exportName: volume });
}

async function sha256Of(port: number, volume: string): Promise<string> {
  const c = await nbd(port, volume);
  const buf = Buffer.alloc(c.size);
  await c.read(0, buf);
  await c.close();
  return createHash('sha256').update(buf).digest('hex');
}

describe('lab run --auto', () => {
  it('passes a scenario whose solves make every check pass, from a clean lab to lab down --purge', async () => {
    const file = scenario('good');
    const r = await lab(['run', file, '--auto']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^PASS step 1\/2 Create scratch \(\d+\.\d s\)$/);
    expect(lines[1]).toMatch(/^PASS step 2\/2 Copy tv1 \(\d+\.\d s\)$/);
    expect(lines[2]).toMatch(/^PASS A test scenario: 2 steps in \d+\.\d s$/);
    expect(labServePids(runDir, 'good')).toEqual([]);
    expect(existsSync(join(dir, 'lab-data'))).toBe(false);
  });

  it("fails a scenario whose solve is wrong, with the check's message and exit 1", async () => {
    const file = scenario('wrong', 'other');
    const r = await lab(['run', file, '--auto', '--json']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`arraylab: scenario ${file}: step 1 failed\n`);
    const out = JSON.parse(r.stdout) as { ok: boolean; steps: Array<{ ok: boolean; message: string }> };
    expect(out.ok).toBe(false);
    expect(out.steps).toHaveLength(1);
    expect(out.steps[0]).toMatchObject({ ok: false, message: 'scratch does not exist yet (volume scratch does not exist)' });
    expect(labServePids(runDir, 'wrong')).toEqual([]);
  });
});

describe('what lab start and lab run refuse', () => {
  it('a lab without steps, and lab run without --auto (exit 2, saying what to do)', async () => {
    const plain = join(dir, 'plain.yaml');
    writeFileSync(plain, 'arrays: [{name: array0, start: true}]\n');
    const start = await lab(['start', plain]);
    expect([start.code, start.stderr]).toEqual([
      2,
      `arraylab: lab ${plain}: is a lab without steps, not a scenario; use arraylab lab up ${plain}, or add title and steps (emulator/lab/README.md, "Scenarios")\n`,
    ]);
    const run = await lab(['run', scenario('manual')]);
    expect([run.code, run.stderr]).toEqual([
      2,
      "arraylab: lab run needs --auto (it runs each step's solve); to work through a scenario yourself: arraylab lab start FILE\n",
    ]);
  });
});

describe('lab start again', () => {
  it("begins from the lab as declared, not from an earlier attempt's sessions and volumes", async () => {
    const file = scenario('again');
    expect((await lab(['start', file])).code).toBe(0);
    const dataDir = join(dir, 'lab-data');
    let a = await arrayOf(dataDir);
    for (const args of [
      ['volume', 'create', 'scratch', '--size', '1MiB'],
      ['copy', 'start', '--type', 'quickopc', '--src', 'tv1', '--dst', 'bv1'],
    ]) {
      const r = await runCli(args, { env: a.env });
      expect(r.code, r.stderr).toBe(0);
    }
    expect((await lab(['stop'])).code).toBe(0); // without --purge: the leftovers stay on disk

    const again = await lab(['start', file]);
    expect(again.code, again.stderr).toBe(0);
    a = await arrayOf(dataDir);
    const copies = JSON.parse((await runCli(['copy', 'list', '--json'], { env: a.env })).stdout) as { sessions: unknown[] };
    expect(copies.sessions).toEqual([]);
    expect((await runCli(['volume', 'show', 'scratch'], { env: a.env })).code).toBe(1);
    expect((await lab(['check'])).code).toBe(1); // step 1 is not done yet: scratch is gone
    expect((await lab(['stop', '--purge'])).code).toBe(0);
  });
});

describe('a trainee in a scenario', () => {
  it('starts, fails a check, gets hints one by one, solves, goes on, breaks the step and resets it exactly', async () => {
    const file = scenario('trainee');
    const start = await lab(['start', file]);
    expect(start.stderr).toBe('');
    expect(start.stdout).toBe(
      '# A test scenario\n\nTwo **short** steps.\n\n## Step 1/2: Create scratch\n\nCreate the volume `scratch`.\n\n(2 hints: arraylab lab hint)\n',
    );

    // Another run directory's lab run --auto would purge this lab under the trainee: refused.
    const other = await runCli(['lab', 'run', file, '--auto', '--run-dir', join(dir, 'other-run')], { timeoutMs: 60_000 });
    expect(other.code).toBe(1);
    expect(other.stderr).toMatch(
      /^arraylab: lab .*trainee\.yaml: arrays\[0\]: array array0 answers at 127\.0\.0\.1:\d+ already, started from another run directory/,
    );

    const check = await lab(['check']);
    expect([check.code, check.stdout]).toEqual([1, 'Step 1: Create scratch\n✗ scratch does not exist yet (volume scratch does not exist)\n']);
    expect((await lab(['hint'])).stdout).toBe('Hint 1/2: Volumes are made with arraylab volume create.\n');
    expect((await lab(['hint'])).stdout).toBe('Hint 2/2: arraylab volume create scratch --size 1MiB\n(that was the last hint)\n');
    const notYet = await lab(['next']);
    expect(notYet.code).toBe(1);
    expect(notYet.stderr).toMatch(/^arraylab: step 1 is not done yet/);

    const solve = await lab(['solve', '--json']);
    expect(solve.code).toBe(0);
    expect(JSON.parse(solve.stdout)).toMatchObject({ step: 1, ok: true, results: [{ ok: true, kind: 'volume' }] });
    expect((await lab(['check'])).stdout).toBe('Step 1: Create scratch\n✓ volume scratch exists (1 MiB, 0 B allocated)\nAll checks pass: arraylab lab next\n');

    // Data on tv1 before step 2 begins: its checkpoint holds it.
    const dataDir = join(dir, 'lab-data');
    let a = await arrayOf(dataDir);
    const c = await nbd(a.nbdPort, 'tv1');
    await c.write(MiB, Buffer.alloc(256 * 1024, 0x5a));
    await c.flush();
    await c.close();

    const next = await lab(['next', '--json']);
    expect(next.code, next.stderr).toBe(0);
    expect(JSON.parse(next.stdout)).toMatchObject({ done: false, step: { number: 2, title: 'Copy tv1' } });
    a = await arrayOf(dataDir);
    const before = await sha256Of(a.nbdPort, 'tv1');

    // Break it: other bytes on tv1, scratch deleted.
    const w = await nbd(a.nbdPort, 'tv1');
    await w.write(0, Buffer.alloc(MiB, 0xee));
    await w.flush();
    await w.close();
    expect((await runCli(['volume', 'delete', 'scratch'], { env: a.env })).code).toBe(0);
    expect(await sha256Of(a.nbdPort, 'tv1')).not.toBe(before);

    const reset = await lab(['reset', '--json']);
    expect(reset.code, reset.stderr).toBe(0);
    expect(JSON.parse(reset.stdout)).toMatchObject({ step: { number: 2 }, arrays: ['array0'] });
    a = await arrayOf(dataDir);
    expect(await sha256Of(a.nbdPort, 'tv1')).toBe(before);
    expect((await runCli(['volume', 'show', 'scratch', '--json'], { env: a.env })).code).toBe(0);

    // The array lost outright (a DR exercise kills a site): reset starts it again from the checkpoint.
    killServes();
    await new Promise((r) => setTimeout(r, 300));
    const revived = await lab(['reset', '--json']);
    expect(revived.code, revived.stderr).toBe(0);
    a = await arrayOf(dataDir);
    expect(await sha256Of(a.nbdPort, 'tv1')).toBe(before);

    const done = await lab(['solve']);
    expect(done.code, done.stdout).toBe(0);
    expect((await lab(['next'])).stdout).toMatch(/Scenario complete: A test scenario/);

    const stop = await lab(['stop', '--purge']);
    expect(stop.code, stop.stderr).toBe(0);
    expect(labServePids(runDir, 'trainee')).toEqual([]);
    const after = await lab(['check']);
    expect([after.code, after.stderr]).toEqual([
      1,
      `arraylab: no scenario is started in ${runDir}; start one with: arraylab lab start FILE (or give --scenario FILE)\n`,
    ]);
  });
});
