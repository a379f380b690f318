/**
 * `arraylab fault add link-* --remote NAME` against a running array: the four link kinds are
 * set, listed and shown, a plan names the link as `target: remote:NAME`, `fault rate` changes a
 * link-rate cap, and bad link faults get one line with an example.
 *
 * The array checks the remote's name (a fault on a remote it does not know is refused), so the
 * test registers site-b first (offline: nothing answers there, and nothing is sent).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';

describe('arraylab fault: link faults', () => {
  let lab: Arraylab;
  const dir = makeTempDir('arraylab-linkfault-cli-');
  beforeAll(async () => {
    lab = await startArraylab({ memory: true });
    const r = await lab.cli(['remote', 'add', 'site-b', '--api', '127.0.0.1:9', '--offline']);
    expect(r.code, r.stderr).toBe(0);
  });
  afterAll(async () => {
    await lab?.stop();
  });

  const ok = async (args: string[]): Promise<string> => {
    const r = await lab.cli(args);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return r.stdout;
  };

  it('adds, lists and shows the four kinds; fault rate changes a link-rate cap', async () => {
    const down = (await ok(['fault', 'add', 'link-down', '--remote', 'site-b', '--window', '600s-1200s'])).trim();
    const delay = (await ok(['fault', 'add', 'link-delay', '--remote', 'site-b', '--ms', '20', '--ops', 'write'])).trim();
    const rate = (await ok(['fault', 'add', 'link-rate', '--remote', 'site-b', '--mibs', '5'])).trim();
    const loss = (await ok(['fault', 'add', 'link-loss', '--remote', 'site-b', '--probability', '0.01', '--seed', '7', '--transient'])).trim();
    for (const id of [down, delay, rate, loss]) expect(id).toMatch(/^f\d+$/);

    const shown = JSON.parse(await ok(['fault', 'show', loss, '--json']));
    expect(shown).toMatchObject({ kind: 'link-loss', target: 'remote:site-b', ops: ['write', 'read', 'flush', 'control'], seed: 7, transient: true });
    expect(shown.description).toBe('link loss (drops the connection) with probability 0.01 (seed 7)');
    const list = await ok(['fault', 'list']);
    expect(list).toMatch(new RegExp(`^${down}\\s+remote:site-b\\s+link-down\\s+0/0\\s+link down from 600000 ms to 1200000 ms$`, 'm'));
    expect(list).toMatch(new RegExp(`^${delay}\\s+remote:site-b\\s+link-delay\\s+0/0\\s+link delay 20 ms on write$`, 'm'));
    expect(list).toMatch(new RegExp(`^${rate}\\s+remote:site-b\\s+link-rate\\s+0/0\\s+link rate 5 MiB/s$`, 'm'));

    expect(await ok(['fault', 'rate', rate, '--mibs', '10'])).toBe(`fault ${rate}: link rate 10 MiB/s\n`);
    const r = await lab.cli(['fault', 'rate', rate, '--iops', '10']);
    expect([r.code, r.stderr.trim()]).toEqual([
      1,
      `arraylab: fault ${rate} is a link-rate fault: it takes --mibs only, e.g. arraylab fault rate ${rate} --mibs 10`,
    ]);
    // A remote this array does not know is refused, naming where to look.
    const unknown = await lab.cli(['fault', 'add', 'link-down', '--remote', 'site-c']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/remote array site-c.*arraylab remote list/);
    // Nothing sent on the link yet: nothing fired (link-down's window has not opened).
    expect(JSON.parse(await ok(['fault', 'events', '--json'])).events).toEqual([]);
    await ok(['fault', 'clear']);
  });

  it('a plan names the link as target: remote:NAME', async () => {
    const plan = join(dir, 'wan.yaml');
    writeFileSync(
      plan,
      'name: wan\nseed: 1\nfaults:\n  - {kind: link-delay, target: remote:site-b, ms: 30, jitter-ms: 10}\n  - {kind: link-loss, target: remote:site-b, every: 100}\n',
    );
    const faults = JSON.parse(await ok(['fault', 'apply', plan, '--json'])).faults;
    expect(faults.map((f: { kind: string; target: string; label: string }) => [f.kind, f.target, f.label])).toEqual([
      ['link-delay', 'remote:site-b', 'plan:wan'],
      ['link-loss', 'remote:site-b', 'plan:wan'],
    ]);
    await ok(['fault', 'clear']);
  });

  it('refuses bad link faults with one line naming what is wrong and an example', async () => {
    const cases: Array<[string[], number, RegExp]> = [
      [
        ['fault', 'add', 'link-loss', '--remote', 'site-b'],
        1,
        /^arraylab: .*link-loss fault: give a trigger \(--probability P, .*; for example: arraylab fault add link-loss --remote site-b --probability 0.01 --seed 7$/,
      ],
      [
        ['fault', 'add', 'link-down', '--remote', 'site-b', '--once'],
        1,
        /a down link is a state in time: it takes --window START-END and --flag NAME, not --once/,
      ],
      [['fault', 'add', 'link-down', '--remote', 'site b'], 1, /remote name "site b" must be 1 to 63 letters, digits/],
      [['fault', 'add', 'link-rate', '--remote', 'site-b', '--iops', '5'], 1, /option 'iops' does not apply to this kind \(it takes mibs\)/],
      [['fault', 'add', 'link-down', '--volume', 'vol1'], 1, /target 'volume:vol1' is not one it takes \(remote:NAME\)/],
      [['fault', 'add', 'link-down', '--remote', 'site-b', '--volume', 'vol1'], 2, /give one target, not --volume and --remote/],
    ];
    for (const [args, code, re] of cases) {
      const r = await lab.cli(args);
      expect([r.code, r.stderr.trim().split('\n').length], `${args.join(' ')}: ${r.stderr}`).toEqual([code, 1]);
      expect(r.stderr.trim(), args.join(' ')).toMatch(re);
    }
    expect(JSON.parse(await ok(['fault', 'list', '--json'])).faults).toEqual([]);
  });
});
