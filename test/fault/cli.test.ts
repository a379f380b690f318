/**
 * `arraylab fault ...` against a running array, with qemu-io as the client: add prints the id,
 * list/show/events/flags/apply work with and without --json, status shows the faults, bad
 * input gets one line with an example, and faults survive a restart unless transient.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_PATH, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { runProcess } from '../support/process.js';
import { requireTool } from '../support/tools.js';
import { until } from '../support/wait.js';

describe('arraylab fault', () => {
  let lab: Arraylab;
  const dataDir = makeTempDir('arraylab-fault-cli-');
  const qemuIo = requireTool('qemu-io');
  beforeAll(async () => {
    lab = await startArraylab({ dataDir, config: { volumes: [{ name: 'vol1', size: '4MiB' }] } });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  const io = (cmd: string) => runProcess(qemuIo, ['-f', 'raw', '-c', cmd, lab.nbdUri('vol1')], { timeoutMs: 30_000 });
  const ok = async (args: string[]): Promise<string> => {
    const r = await lab.cli(args);
    expect(r.code, r.stderr).toBe(0);
    return r.stdout;
  };

  it('adds a fault (id on stdout), which qemu-io hits only in its range, and shows it everywhere', async () => {
    const add = await lab.cli(['fault', 'add', 'error', '--volume', 'vol1', '--ops', 'read', '--lba', '100-199', '--seed', '7']);
    expect(add.code, add.stderr).toBe(0);
    const id = add.stdout.trim();
    expect(id).toMatch(/^f\d+$/);
    expect(add.stderr).toBe(''); // what was set goes to stderr on a terminal only
    expect(JSON.parse(await ok(['fault', 'show', id, '--json'])).description).toBe('error EIO on read on LBA 100-199');

    const bad = await io('read 51200 512'); // block 100
    expect(bad.stdout + bad.stderr).toMatch(/read failed: Input\/output error/);
    const good = await io('read 0 512');
    expect(good.stdout).toMatch(/read 512\/512 bytes/);

    expect(await ok(['fault', 'list'])).toMatch(new RegExp(`^${id}\\s+volume:vol1\\s+error\\s+1/\\d+\\s+error EIO on read on LBA 100-199$`, 'm'));
    const shown = JSON.parse(await ok(['fault', 'show', id, '--json']));
    expect(shown).toMatchObject({ id, kind: 'error', target: 'volume:vol1', ops: ['read'], seed: 7, fired: 1, transient: false });
    const events = JSON.parse(await ok(['fault', 'events', '--json'])).events;
    expect(events).toEqual([expect.objectContaining({ faultId: id, kind: 'error', target: 'volume:vol1', op: 'read', offset: 51200 })]);
    expect(await ok(['fault', 'events'])).toMatch(new RegExp(`^#1 \\S+ ${id} error volume:vol1 read @51200\\+\\d+ \\[\\S+\\]: error EIO`, 'm'));
    expect(await ok(['status'])).toMatch(new RegExp(`^faults:\\s+1 set \\(${id} error on volume:vol1\\); see arraylab fault list$`, 'm'));
    expect(JSON.parse(await ok(['status', '--json'])).faults).toHaveLength(1);

    expect(await ok(['fault', 'rm', id])).toMatch(new RegExp(`^removed fault ${id} `));
    expect((await io('read 51200 512')).stdout).toMatch(/read 512\/512 bytes/);
  });

  it('gates a fault with a flag that scripts flip', async () => {
    const id = (await ok(['fault', 'add', 'error', '--volume', 'vol1', '--ops', 'write', '--flag', 'broken'])).trim();
    expect((await io('write 0 512')).stdout).toMatch(/wrote 512\/512 bytes/);
    expect(await ok(['fault', 'flag', 'set', 'broken'])).toBe('flag broken set\n');
    expect(JSON.parse(await ok(['fault', 'flag', 'list', '--json']))).toEqual({ flags: ['broken'] });
    const w = await io('write 0 512');
    expect(w.stdout + w.stderr).toMatch(/write failed: Input\/output error/);
    await ok(['fault', 'flag', 'clear', 'broken']);
    expect((await io('write 0 512')).stdout).toMatch(/wrote 512\/512 bytes/);
    await ok(['fault', 'rm', id]);
  });

  it('events --follow --json streams new injections as JSON lines until interrupted', async () => {
    const since = Math.max(0, ...JSON.parse(await ok(['fault', 'events', '--json'])).events.map((e: { seq: number }) => e.seq));
    const child = spawn(process.execPath, [CLI_PATH, 'fault', 'events', '--follow', '--json', '--since', String(since)], {
      env: { ...process.env, ARRAYLAB_API: lab.apiAddress },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    try {
      const id = (await ok(['fault', 'add', 'error', '--volume', 'vol1', '--ops', 'read', '--once'])).trim();
      expect((await io('read 0 512')).stdout).toMatch(/read failed/);
      await until('an event line', () => out.includes('\n'), { timeoutMs: 10_000 });
      expect(JSON.parse(out.split('\n')[0]!)).toMatchObject({ faultId: id, kind: 'error', op: 'read', offset: 0, length: 512 });
      await ok(['fault', 'rm', id]);
    } finally {
      child.kill('SIGINT');
    }
    expect(await exited).toBe(0);
  });

  it('refuses bad input with one line naming what is wrong and an example', async () => {
    const cases: Array<[string[], number, RegExp]> = [
      [['fault', 'add', 'explode', '--volume', 'vol1'], 2, /Invalid values:.*kind.*explode/],
      [['fault', 'add', 'error', '--volume', 'nope'], 1, /^arraylab: cannot add the error fault: there is no volume nope; 'arraylab volume list' shows them$/],
      [
        ['fault', 'add', 'error', '--volume', 'vol1', '--probability', '2'],
        1,
        /probability must be a number from 0 to 1, not 2; for example: arraylab fault add error --volume vol1/,
      ],
      [['fault', 'add', 'error', '--volume', 'vol1', '--lba', '9-3'], 1, /LBA range '9-3' ends before it starts; for example/],
      [['fault', 'add', 'error', '--volume', 'vol1', '--every', 'x'], 2, /--every: "NaN" is not a number|--every/],
      [
        ['fault', 'add', 'rate', '--volume', 'vol1'],
        1,
        /rate fault: give --mibs or --iops \(or both\); for example: arraylab fault add rate --volume vol1 --mibs 5/,
      ],
      [['fault', 'add', 'error', '--volume', 'vol1', '--session', '3'], 2, /give one target, not --volume and --session/],
      [['fault', 'rm', 'f999'], 1, /^arraylab: no fault f999; 'arraylab fault list' shows the faults set$/],
    ];
    for (const [args, code, re] of cases) {
      const r = await lab.cli(args);
      expect([r.code, r.stderr.trim().split('\n').length], `${args.join(' ')}: ${r.stderr}`).toEqual([code, 1]);
      expect(r.stderr.trim(), args.join(' ')).toMatch(re);
    }
    expect(JSON.parse(await ok(['fault', 'list', '--json'])).faults).toEqual([]);
  });

  it('applies a plan (replacing its earlier faults), keeps faults across a restart unless transient', async () => {
    const dir = makeTempDir('arraylab-fault-plan-');
    const plan = join(dir, 'flaky.yaml');
    writeFileSync(
      plan,
      'name: flaky\nseed: 42\nfaults:\n  - kind: error\n    target: volume:vol1\n    ops: [read]\n    probability: 0.5\n  - kind: delay\n    target: volume:vol1\n    ms: 1\n',
    );
    const first = JSON.parse(await ok(['fault', 'apply', plan, '--json'])).faults;
    expect(first.map((f: { label: string }) => f.label)).toEqual(['plan:flaky', 'plan:flaky']);
    const again = JSON.parse(await ok(['fault', 'apply', plan, '--json'])).faults;
    expect(again.map((f: { seed: number }) => f.seed)).toEqual(first.map((f: { seed: number }) => f.seed)); // seeds derive from the plan's
    const transient = (await ok(['fault', 'add', 'pause', '--volume', 'vol1', '--ops', 'trim', '--transient'])).trim();
    expect(JSON.parse(await ok(['fault', 'list', '--json'])).faults).toHaveLength(3);
    await lab.stop();
    lab = await startArraylab({ dataDir, config: { volumes: [{ name: 'vol1', size: '4MiB' }] } });
    const kept = JSON.parse(await ok(['fault', 'list', '--json'])).faults.map((f: { id: string }) => f.id);
    expect(kept).toEqual(again.map((f: { id: string }) => f.id));
    expect(kept).not.toContain(transient);
    expect(await ok(['fault', 'clear'])).toBe('removed 2 faults\n');
  });
});
