/**
 * Isolated seats of a scenario (lab start --seats N, emulator/lab/scenario/seats.ts), with the
 * real CLI and the arrays lab up starts: each seat has arrays of its own, so one seat's volumes
 * are not the other's and its token is refused there; a seat moves through the steps alone (lab
 * seats shows each one's step and last check); lab reset --seat brings one seat's broken data back
 * exactly (SHA-256) without touching the other's; lab stop --purge stops every seat's array.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiError, ArrayClient } from '../../proto/ArrayClient.js';
import { NbdClient } from '../../emulator/remote/NbdClient.js';
import { makeTempDir, runCli } from '../support/arraylab.js';
import { killPids, labServePids } from '../support/lab.js';

const MiB = 2 ** 20;
let dir: string;
let runDir: string;

const SCENARIO = `
title: Seats scenario
description: Two short steps.
arrays: [{name: array0, start: true, api: "127.0.0.1:0", nbd: "127.0.0.1:0", iscsi: "127.0.0.1:0"}]
volumes: [{name: tv1, size: 2MiB}]
steps:
  - title: Create scratch
    instructions: Create the volume \`scratch\`.
    check:
      - volume: {name: scratch}
        message: scratch does not exist yet
    solve: [arraylab volume create scratch --size 1MiB --json > /dev/null]
  - title: Keep going
    instructions: Nothing more.
    check:
      - volume: {name: tv1}
    solve: ['true']
`;

const seatDirs = () => ['seat1', 'seat2'].map((s) => join(runDir, 'seats', s));
const allServePids = () => seatDirs().flatMap((d) => labServePids(d));

const killServes = () => killPids(allServePids());
process.once('exit', () => runDir && killServes());

beforeAll(() => {
  dir = makeTempDir('arraylab-scenario-seats-');
  runDir = join(dir, 'run');
});
afterAll(() => killServes());

function alive(pid: number): boolean {
  try {
    return !/^\d+ \([^)]*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

const lab = (args: string[]) => runCli(['lab', ...args, '--run-dir', runDir], { timeoutMs: 60_000 });

/** A seat's shell settings, from lab env --seat (what eval "$(arraylab lab env --seat S)" sets). */
async function envOf(seat: string): Promise<Record<string, string>> {
  const r = await lab(['env', '--seat', seat, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { env: Record<string, string> }).env;
}

async function nbdPort(env: Record<string, string>): Promise<number> {
  const st = await runCli(['status', '--json'], { env });
  return (JSON.parse(st.stdout) as { listeners: { nbd: { port: number } } }).listeners.nbd.port;
}

async function sha256Of(port: number, volume: string): Promise<string> {
  const c = await NbdClient.connect({ host: '127.0.0.1', port, exportName: volume });
  const buf = Buffer.alloc(c.size);
  await c.read(0, buf);
  await c.close();
  return createHash('sha256').update(buf).digest('hex');
}

async function write(port: number, volume: string, offset: number, byte: number): Promise<void> {
  const c = await NbdClient.connect({ host: '127.0.0.1', port, exportName: volume });
  await c.write(offset, Buffer.alloc(256 * 1024, byte));
  await c.flush();
  await c.close();
}

const volumes = async (env: Record<string, string>) =>
  (JSON.parse((await runCli(['volume', 'list', '--json'], { env })).stdout) as { volumes: Array<{ name: string }> }).volumes.map((v) => v.name);

describe('lab start --seats', () => {
  it('refuses --seats 0 and --seats with --seat (exit 2, saying what to give)', async () => {
    const file = join(dir, 'refused.yaml');
    writeFileSync(file, SCENARIO);
    const zero = await lab(['start', file, '--seats', '0']);
    expect([zero.code, zero.stderr]).toEqual([2, 'arraylab: --seats 0: give a whole number of seats from 1 to 32\n']);
    const both = await lab(['start', file, '--seats', '2', '--seat', 'seat1']);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/^arraylab: --seats and --seat go apart: .*give one of them\n$/);
    const used = join(dir, 'used.yaml');
    writeFileSync(used, SCENARIO.replace('start: true, api: "127.0.0.1:0"', 'start: false, api: "127.0.0.1:9"'));
    const notStarted = await lab(['start', used, '--seats', '2']);
    expect(notStarted.code).toBe(2);
    expect(notStarted.stderr).toMatch(
      /array array0 is used as it is \(no start: true\), and an array the lab does not start cannot be copied per seat; set start: true/,
    );
    expect(existsSync(join(runDir, '.scenario-seats.json'))).toBe(false);
  });

  it('gives each trainee arrays of their own: volumes, tokens, steps, checkpoints and reset are per seat', async () => {
    const file = join(dir, 'class.yaml');
    writeFileSync(file, SCENARIO);
    const start = await lab(['start', file, '--seats', '2']);
    expect(start.stderr).toBe('');
    expect(start.code).toBe(0);
    const lines = start.stdout.split('\n');
    expect(lines[0]).toMatch(/^seat1: API 127\.0\.0\.1:\d+, token in .*\/seats\/seat1\/admin\.token$/);
    expect(lines[1]).toMatch(/^seat2: API 127\.0\.0\.1:\d+, token in .*\/seats\/seat2\/admin\.token$/);
    const seats = JSON.parse(readFileSync(join(runDir, '.scenario-seats.json'), 'utf8')) as { file: string; seats: Array<{ name: string; runDir: string }> };
    expect(seats).toEqual({ file, seats: seatDirs().map((d, i) => ({ name: `seat${i + 1}`, runDir: d })) });
    expect(allServePids()).toHaveLength(2);

    const e1 = await envOf('seat1');
    const e2 = await envOf('seat2');
    expect(e1.ARRAYLAB_API).not.toBe(e2.ARRAYLAB_API);
    expect(e1.LAB_ARRAY_ARRAY0_API).toBe(e1.ARRAYLAB_API);
    const sh = await lab(['env', '--seat', 'seat2']);
    expect(sh.stdout).toBe(
      `export ARRAYLAB_API='${e2.ARRAYLAB_API}'\nexport ARRAYLAB_TOKEN_FILE='${e2.ARRAYLAB_TOKEN_FILE}'\nexport LAB_ARRAY_ARRAY0_API='${e2.LAB_ARRAY_ARRAY0_API}'\nexport LAB_ARRAY_ARRAY0_TOKEN_FILE='${e2.ARRAYLAB_TOKEN_FILE}'\n`,
    );

    // seat1's volume is on seat1's array only; seat2's token does not open seat1's array.
    const made = await runCli(['volume', 'create', 'mine', '--size', '1MiB'], { env: e1 });
    expect(made.code, made.stderr).toBe(0);
    expect(await volumes(e1)).toContain('mine');
    expect(await volumes(e2)).not.toContain('mine');
    const cross = await runCli(['volume', 'list', '--json'], { env: { ...e1, ARRAYLAB_TOKEN_FILE: e2.ARRAYLAB_TOKEN_FILE! } });
    expect(cross.code).toBe(1);
    expect(cross.stderr).toMatch(/^arraylab: the token is not valid on this array/);
    const c = new ArrayClient(e1.ARRAYLAB_API!, { tokenFile: e2.ARRAYLAB_TOKEN_FILE! });
    const err = await c.listVolumes().then(
      () => undefined,
      (e: unknown) => e,
    );
    c.close();
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe('UNAUTHENTICATED');

    // seat2 checks (and fails); seat1 solves and goes on.
    expect((await lab(['check', '--seat', 'seat2'])).code).toBe(1);
    const solve = await lab(['solve', '--seat', 'seat1']);
    expect(solve.code, solve.stderr).toBe(0);
    const p1 = await nbdPort(e1);
    await write(p1, 'tv1', MiB, 0x5a);
    const next = await lab(['next', '--seat', 'seat1', '--json']);
    expect(next.code, next.stderr).toBe(0);
    expect(JSON.parse(next.stdout)).toMatchObject({ done: false, step: { number: 2 } });

    const view = await lab(['seats', '--json']);
    expect(view.code, view.stderr).toBe(0);
    const rows = (JSON.parse(view.stdout) as { seats: Array<Record<string, unknown>> }).seats;
    expect(rows[0]).toMatchObject({ seat: 'seat1', step: 2, of: 2, title: 'Keep going', lastCheck: { step: 1, ok: true }, api: e1.ARRAYLAB_API });
    expect(rows[1]).toMatchObject({ seat: 'seat2', step: 1, of: 2, title: 'Create scratch', lastCheck: { step: 1, ok: false }, api: e2.ARRAYLAB_API });
    const table = (await lab(['seats'])).stdout.split('\n');
    expect(table[0]).toMatch(/^SEAT +STEP +LAST CHECK +API$/);
    expect(table[1]).toMatch(/^seat1 +2\/2 Keep going +✓ \d\d:\d\d:\d\d \(step 1\) +127\.0\.0\.1:\d+$/);
    expect(table[2]).toMatch(/^seat2 +1\/2 Create scratch +✗ \d\d:\d\d:\d\d +127\.0\.0\.1:\d+$/);

    // Break seat1's tv1 (step 2 began with it holding 0x5a at 1 MiB); seat2 writes its own.
    // The checkpoint restarted seat1's array: its NBD port (port 0) is a new one.
    const q1 = await nbdPort(e1);
    const p2 = await nbdPort(e2);
    const before1 = await sha256Of(q1, 'tv1');
    await write(p2, 'tv1', 0, 0x22);
    const before2 = await sha256Of(p2, 'tv1');
    await write(q1, 'tv1', 0, 0xee);
    expect(await sha256Of(q1, 'tv1')).not.toBe(before1);
    const reset = await lab(['reset', '--seat', 'seat1', '--json']);
    expect(reset.code, reset.stderr).toBe(0);
    expect(JSON.parse(reset.stdout)).toMatchObject({ step: { number: 2 }, arrays: ['array0'] });
    expect(await sha256Of(await nbdPort(await envOf('seat1')), 'tv1')).toBe(before1);
    expect(await sha256Of(p2, 'tv1')).toBe(before2);

    // Without --seat, a command says which seats there are.
    const which = await lab(['check']);
    expect([which.code, which.stderr]).toEqual([
      1,
      `arraylab: the scenario in ${runDir} runs as isolated seats (seat1, seat2); say which: --seat NAME (arraylab lab seats shows them)\n`,
    ]);

    // One seat leaves: its array stops, the other seat goes on.
    const pids = allServePids();
    const one = await lab(['stop', '--seat', 'seat2', '--purge']);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(/Scenario stopped on 1 seat: /);
    expect(labServePids(seatDirs()[1]!)).toEqual([]);
    expect(labServePids(seatDirs()[0]!)).toHaveLength(1);
    expect((JSON.parse((await lab(['seats', '--json'])).stdout) as { seats: Array<{ seat: string }> }).seats.map((r) => r.seat)).toEqual(['seat1']);

    const stop = await lab(['stop', '--purge']);
    expect(stop.code, stop.stderr).toBe(0);
    expect(stop.stdout).toMatch(/Scenario stopped on 1 seat: /);
    expect(allServePids()).toEqual([]);
    expect(pids.filter(alive)).toEqual([]);
    expect(existsSync(join(runDir, '.scenario-seats.json'))).toBe(false);
    expect(existsSync(join(dir, 'lab-data'))).toBe(false);
  });
});
