/**
 * The array `arraylab lab up` starts for the example lab (vm-images/labs/backup-restore.yaml,
 * without its VM, so no guest image or qemu is needed): it has the lab's volumes and none of the
 * built-in config's (no `demo`), it listens where the lab file's nbd: and iscsi: keys say, and
 * an address that is taken fails lab up naming the key to change, with nothing left running.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { makeTempDir, REPO_ROOT, runCli } from '../support/arraylab.js';
import { killPids, labServePids } from '../support/lab.js';
import { freePort } from '../support/ports.js';

const EXAMPLE = join(REPO_ROOT, 'vm-images', 'labs', 'backup-restore.yaml');
let dir: string;
let runDir: string;

/** arraylab serve processes lab up started, of the lab NAME.yaml or of every lab. */
const servePids = (name = '') => labServePids(runDir, name);

const killServes = () => killPids(servePids());
process.once('exit', () => runDir && killServes());

beforeAll(() => {
  dir = makeTempDir('arraylab-lab-array-');
  runDir = join(dir, 'run');
});
afterAll(() => killServes());

/** The example lab without its VMs, on the given addresses, data in dir/NAME; returns its path. */
function exampleLab(name: string, addresses: { api: string; nbd: string; iscsi: string }, extra: Record<string, unknown> = {}): string {
  const lab = parse(readFileSync(EXAMPLE, 'utf8')) as { arrays: Array<Record<string, unknown>>; vms?: unknown };
  Object.assign(lab.arrays[0]!, addresses, { dataDir: `./${name}` });
  Object.assign(lab, extra);
  delete lab.vms;
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, stringify(lab));
  return file;
}

function lab(args: string[]) {
  return runCli(['lab', ...args, '--run-dir', runDir], { timeoutMs: 60_000 });
}

/** A TCP listener holding a loopback port, as another program would. */
async function holdPort(): Promise<{ port: number; server: Server }> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return { port: (server.address() as { port: number }).port, server };
}

describe('the array of lab up', () => {
  it("has the lab's volumes and not the built-in demo volume, and listens on the lab's nbd and iscsi addresses", async () => {
    const [api, nbd, iscsi] = [await freePort(), await freePort(), await freePort()];
    const file = exampleLab('plain', { api: `127.0.0.1:${api}`, nbd: `127.0.0.1:${nbd}`, iscsi: `127.0.0.1:${iscsi}` });
    const up = await lab(['up', file]);
    expect(up.stderr).toBe('');
    expect(up.code).toBe(0);
    expect(up.stdout.split('\n')[0]).toBe(
      `array array0: started (arraylab serve pid ${servePids('plain')[0]} at 127.0.0.1:${api}, NBD 127.0.0.1:${nbd}, iSCSI 127.0.0.1:${iscsi}, data in ${join(dir, 'plain')})`,
    );

    const list = await runCli(['volume', 'list', '--json', '--api', `127.0.0.1:${api}`]);
    const { volumes } = JSON.parse(list.stdout) as { volumes: Array<{ name: string }> };
    expect(volumes.map((v) => v.name).sort()).toEqual(['bv1', 'bv2', 'tv1']);
    const status = JSON.parse((await runCli(['status', '--json', '--api', `127.0.0.1:${api}`])).stdout) as { listeners: Record<string, { port: number }> };
    expect([status.listeners.nbd!.port, status.listeners.iscsi!.port]).toEqual([nbd, iscsi]);

    // Sessions a trainee started hold the lab's volumes: purge cancels them, then deletes.
    for (const [type, dst] of [
      ['quickopc', 'bv1'],
      ['snapopcplus', 'bv2'],
    ]) {
      const started = await runCli(['copy', 'start', '--type', type!, '--src', 'tv1', '--dst', dst!, '--api', `127.0.0.1:${api}`]);
      expect(started.code, started.stderr).toBe(0);
    }
    const down = await lab(['down', file, '--purge']);
    expect(down.code).toBe(0);
    expect(down.stdout).toMatch(/^copy quickopc tv1 -> bv1: cancelled \(session /m);
    expect(down.stdout).toMatch(/^copy snapopcplus tv1 -> bv2: cancelled \(session /m);
    expect(down.stdout).toMatch(/^volume tv1: deleted$/m);
    expect(down.stdout).not.toMatch(/not deleted|not cancelled/);
    expect(servePids('plain')).toEqual([]);
  });

  it('sets the faults: section once the lab is up (seeded as one plan), shows them in status, and removes them at down', async () => {
    const api = `127.0.0.1:${await freePort()}`;
    const faults = [
      { kind: 'error', target: 'volume:tv1', ops: ['read'], probability: 0.01 },
      { kind: 'delay', target: 'volume:bv1', ms: 5, 'jitter-ms': 2 },
    ];
    const file = exampleLab('faulty', { api, nbd: '127.0.0.1:0', iscsi: '127.0.0.1:0' }, { seed: 7, faults });
    const up = await lab(['up', file]);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toMatch(/^fault f1: set \(volume:tv1: error EIO on read with probability 0.01 \(seed \d+\)\)$/m);
    expect(up.stdout).toMatch(/^fault f2: set \(volume:bv1: delay 5 ms ±2 ms \(uniform\) on read,write,flush,trim,zero \(seed \d+\)\)$/m);
    const listed = JSON.parse((await runCli(['fault', 'list', '--json', '--api', api])).stdout).faults as Array<{ label: string; seed: number }>;
    expect(listed.map((f) => f.label)).toEqual(['plan:lab', 'plan:lab']);
    // Seeds come from the lab's seed: a second lab up replaces the faults with the same ones.
    const again = await lab(['up', file]);
    expect(again.code, again.stderr).toBe(0);
    const relisted = JSON.parse((await runCli(['fault', 'list', '--json', '--api', api])).stdout).faults as Array<{ seed: number }>;
    expect(relisted.map((f) => f.seed)).toEqual(listed.map((f) => f.seed));
    const status = await lab(['status', file]);
    expect(status.stdout).toMatch(/^fault\s+f3\s+fired 0\s+volume:tv1: error EIO on read .*\[plan:lab\]$/m);
    const down = await lab(['down', file, '--purge']);
    expect(down.stdout).toMatch(/^fault f3: removed/m);
    expect(servePids('faulty')).toEqual([]);

    const bad = exampleLab('badfault', { api, nbd: '127.0.0.1:0', iscsi: '127.0.0.1:0' }, { faults: [{ kind: 'error', target: 'volume:nope' }] });
    const r = await lab(['up', bad]);
    expect([r.code, r.stderr]).toEqual([
      2,
      `arraylab: lab ${bad}: faults[0].target: volume:nope names no volume of this lab; use one of volume:tv1, volume:bv1, volume:bv2\n`,
    ]);
  });

  it.each(['nbd', 'iscsi'] as const)('fails lab up naming arrays[0].%s when its address is taken, and leaves nothing running', async (key) => {
    const held = await holdPort();
    try {
      const addresses = { api: `127.0.0.1:${await freePort()}`, nbd: '127.0.0.1:0', iscsi: '127.0.0.1:0', [key]: `127.0.0.1:${held.port}` };
      const file = exampleLab(`taken-${key}`, addresses);
      const up = await lab(['up', file]);
      expect(up.code).toBe(1);
      const what = key === 'nbd' ? 'NBD' : 'iSCSI';
      expect(up.stderr).toBe(
        `arraylab: lab ${file}: arrays[0].${key}: its array did not start: cannot listen for ${what} on 127.0.0.1:${held.port}: the address is in use (is another arraylab running?); ` +
          `set arrays[0].${key} in the lab file to a free address (port 0: any free port), or stop what holds it; log: ${join(dir, `taken-${key}`, 'serve.log')}\n`,
      );
      expect(servePids(`taken-${key}`)).toEqual([]);
      const status = JSON.parse((await lab(['status', file, '--json'])).stdout) as { items: Array<{ kind: string; state: string }> };
      expect(status.items[0]).toMatchObject({ kind: 'array', state: 'down' });
    } finally {
      held.server.close();
    }
  });
});
