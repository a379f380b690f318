/**
 * A lab with two arrays (no VM, so the integration tier): `lab up` starts both on free ports,
 * tells site-a about site-b and site-b about site-a (arraylab remote), starts the REC pair
 * vol1 -> site-b:vol1 that the lab declares, and the pair reaches equivalent on both arrays
 * (copy list --json on each, as a user checks it). A second up changes nothing, status shows
 * each array and the pair, and down stops both arrays. A second up after down finds the pair
 * again on the same API ports (the remotes' addresses stay valid), each array calling the other
 * as a replication user there, so the pair resumes after both restart.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, runCli } from '../support/arraylab.js';
import { killPids, labServePids } from '../support/lab.js';
import { until, waitFor } from '../support/wait.js';

let dir: string;
let runDir: string;

const killServes = () => killPids(labServePids(runDir));
process.once('exit', () => runDir && killServes());

beforeAll(() => {
  dir = makeTempDir('arraylab-lab-sites-');
  runDir = join(dir, 'run');
});
afterAll(() => killServes());

const TWO_SITES = `
arrays:
  - name: site-a
    start: true
    volumes: [{name: vol1, size: 16MiB}]
    remotes: [{name: site-b, array: site-b}]
    copies: [{type: rec, src: vol1, dst: site-b:vol1, mode: sync}]
  - name: site-b
    start: true
    volumes: [{name: vol1, size: 16MiB}]
    remotes: [site-a]
`;

function lab(args: string[]) {
  return runCli(['lab', ...args, '--run-dir', runDir], { timeoutMs: 90_000 });
}

interface Item {
  kind: string;
  name: string;
  state: string;
  detail?: string;
  array?: string;
}

interface Session {
  id: string;
  type: string;
  state: string;
  source: string;
  destination: string;
  remote: { role: string; peer: string; mode: string } | null;
}

async function copies(api: string): Promise<Session[]> {
  const r = await runCli(['copy', 'list', '--json', '--api', api]);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { sessions: Session[] }).sessions;
}

/** The API address lab up started an array at, from its "array NAME: started (...)" line. */
function apiOf(stdout: string, name: string): string {
  const m = new RegExp(
    `^array ${name}: started \\(arraylab serve pid \\d+ at (127\\.0\\.0\\.1:\\d+), NBD 127\\.0\\.0\\.1:\\d+, iSCSI 127\\.0\\.0\\.1:\\d+, data in (.*)\\)$`,
    'm',
  ).exec(stdout);
  expect(m, stdout).not.toBeNull();
  expect(m![2]).toBe(join(dir, 'lab-data', name));
  return m![1]!;
}

describe('a lab with two arrays and a REC pair', () => {
  it('starts both arrays, their remotes and the pair, which reaches equivalent on both; down stops both', async () => {
    const file = join(dir, 'two-site.yaml');
    writeFileSync(file, TWO_SITES);

    const up = await lab(['up', file]);
    expect(up.stderr).toBe('');
    expect(up.code).toBe(0);
    const a = apiOf(up.stdout, 'site-a');
    const b = apiOf(up.stdout, 'site-b');
    expect(a).not.toBe(b);
    const lines = up.stdout.trim().split('\n');
    expect(lines.slice(2)).toEqual([
      'volume site-a:vol1: created (16 MiB thin, 512-byte blocks)',
      'volume site-b:vol1: created (16 MiB thin, 512-byte blocks)',
      `remote site-a:site-b: added (array site-b at ${b})`,
      `remote site-b:site-a: added (array site-a at ${a})`,
      expect.stringMatching(/^copy site-a:vol1->site-b:vol1: started \(REC sync, session \S+, (copying|equivalent)\)$/),
    ]);
    expect(labServePids(runDir, 'two-site')).toHaveLength(2);

    // Both arrays list the pair, and it becomes equivalent on both.
    const both = await waitFor(
      async () => [await copies(a), await copies(b)] as const,
      ([src, dst]) => src[0]?.state === 'equivalent' && dst[0]?.state === 'equivalent',
      { timeoutMs: 30_000, onTimeout: (last) => `the REC pair is not equivalent on both arrays: ${JSON.stringify(last)}` },
    );
    expect(both.map((l) => l.length)).toEqual([1, 1]);
    const pair = { src: both[0][0]!, dst: both[1][0]! };
    expect(pair.src).toMatchObject({ type: 'rec', source: 'vol1', destination: 'site-b:vol1', remote: { role: 'source', peer: 'site-b', mode: 'sync' } });
    expect(pair.dst).toMatchObject({ id: pair.src.id, type: 'rec', destination: 'vol1', remote: { role: 'remote-end', peer: 'site-a', mode: 'sync' } });
    // site-b knows site-a too: the way back, for a failover.
    const remotes = JSON.parse((await runCli(['remote', 'list', '--json', '--api', b])).stdout) as {
      remotes: Array<{ name: string; api: string; reachable: boolean }>;
    };
    expect(remotes.remotes).toMatchObject([{ name: 'site-a', api: a, reachable: true }]);
    // Each array calls the other as a replication user there, not with an admin token.
    for (const [api, caller] of [
      [b, 'site-a'],
      [a, 'site-b'],
    ] as const) {
      const users = JSON.parse((await runCli(['user', 'list', '--json', '--api', api])).stdout) as { users: Array<{ name: string; role: string }> };
      expect(users.users.filter((u) => u.name.startsWith('rec-'))).toMatchObject([{ name: `rec-${caller}`, role: 'replication' }]);
    }

    // Again: everything exists, nothing is started twice.
    const again = await lab(['up', file, '--json']);
    expect(again.code, again.stderr).toBe(0);
    const items = (JSON.parse(again.stdout) as { items: Item[] }).items;
    expect(items.map((i) => `${i.kind} ${i.array ? `${i.array}:` : ''}${i.name} ${i.state}`)).toEqual([
      'array site-a running',
      'array site-b running',
      'volume site-a:vol1 exists',
      'volume site-b:vol1 exists',
      'remote site-a:site-b exists',
      'remote site-b:site-a exists',
      'copy site-a:vol1->site-b:vol1 exists',
    ]);
    expect(items.at(-1)!.detail).toBe(`REC sync, session ${pair.src.id}, equivalent`);
    expect(await copies(a)).toHaveLength(1);

    const status = (JSON.parse((await lab(['status', file, '--json'])).stdout) as { items: Item[] }).items;
    expect(status.filter((i) => i.kind === 'array')).toMatchObject([
      { name: 'site-a', state: 'running', detail: expect.stringContaining(`answers at ${a}, started by lab up`) },
      { name: 'site-b', state: 'running', detail: expect.stringContaining(`answers at ${b}, started by lab up`) },
    ]);
    expect(status.find((i) => i.kind === 'copy')).toEqual({
      kind: 'copy',
      array: 'site-a',
      name: 'vol1->site-b:vol1',
      state: 'equivalent',
      detail: `REC sync, session ${pair.src.id}; on site-b: equivalent`,
    });
    expect(status.filter((i) => i.kind === 'remote').map((i) => `${i.array}:${i.name} ${i.state}`)).toEqual([
      'site-a:site-b reachable',
      'site-b:site-a reachable',
    ]);
    const table = await lab(['status', file]);
    expect(table.stdout).toMatch(/^copy\s+site-a:vol1->site-b:vol1\s+equivalent\s+REC sync/m);

    const down = await lab(['down', file]);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toMatch(/^array site-a: stopped \(arraylab serve pid \d+\)$/m);
    expect(down.stdout).toMatch(/^array site-b: stopped \(arraylab serve pid \d+\)$/m);
    expect(labServePids(runDir, 'two-site')).toEqual([]);
    const after = (JSON.parse((await lab(['status', file, '--json'])).stdout) as { items: Item[] }).items;
    expect(after.filter((i) => i.kind === 'array').map((i) => `${i.name} ${i.state} ${i.detail}`)).toEqual([
      `site-a down nothing answers at ${a}`,
      `site-b down nothing answers at ${b}`,
    ]);

    // Up again: the same API ports (picked once, kept with the data), so the remotes and the pair still hold.
    const up2 = await lab(['up', file]);
    expect(up2.code, up2.stderr).toBe(0);
    expect([apiOf(up2.stdout, 'site-a'), apiOf(up2.stdout, 'site-b')]).toEqual([a, b]);
    expect(up2.stdout).toMatch(new RegExp(`^copy site-a:vol1->site-b:vol1: exists \\(REC sync, session ${pair.src.id}, \\w+\\)$`, 'm'));
    await until('the pair equivalent again', async () => (await copies(a))[0]?.state === 'equivalent', { timeoutMs: 30_000 });
    const purge = await lab(['down', file, '--purge']);
    expect(purge.code, purge.stderr).toBe(0);
    expect(purge.stdout).toMatch(new RegExp(`^copy site-a:vol1->site-b:vol1: cancelled \\(session ${pair.src.id}\\)$`, 'm'));
    expect(purge.stdout).toMatch(/^array site-b: purged/m);
    expect(labServePids(runDir, 'two-site')).toEqual([]);
  });

  it('fails lab up naming the remote when its array is not in the lab and does not answer', async () => {
    const file = join(dir, 'far.yaml');
    writeFileSync(file, 'arrays:\n  - name: a\n    start: true\n    remotes: [{name: far, api: "127.0.0.1:9"}]\n');
    const up = await lab(['up', file]);
    expect(up.code).toBe(1);
    expect(up.stderr).toMatch(
      new RegExp(
        `^arraylab: lab ${file}: arrays\\[0\\]\\.remotes\\[0\\]: array a cannot add remote far \\(at 127\\.0\\.0\\.1:9\\): .*127\\.0\\.0\\.1:9: connection refused.*\\n$`,
      ),
    );
    const down = await lab(['down', file, '--purge']);
    expect(down.code, down.stderr).toBe(0);
    expect(labServePids(runDir, 'far')).toEqual([]);
  });
});
