/**
 * `arraylab volume create --alloc-limit`, `volume set`, `volume rename` end to end (real CLI,
 * real server, the API in between), and a kill -9 right after renaming the split clone of an
 * EC pair: after the restart the session and the volume both use the new name.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, holdNbdConnection, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';
import { until } from '../support/wait.js';

const run = promisify(execFile);
const MiB = 2 ** 20;

describe('arraylab volume create --alloc-limit, set, rename', () => {
  let lab: Arraylab;

  beforeAll(async () => {
    lab = await startArraylab({ config: { volumes: [] } });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  const ok = (args: string[]) => cliOk(lab, args);
  const json = (args: string[]) => cliJson(lab, args);

  it('creates a thin volume with an allocation limit, shows it, changes and removes it', async () => {
    expect(await ok(['volume', 'create', 'snap1', '--size', '64MiB', '--alloc-limit', '1MiB'])).toBe(
      'created volume snap1: 64 MiB thin, 512-byte blocks, allocation limit 1 MiB\n',
    );
    expect(await json(['volume', 'show', 'snap1'])).toMatchObject({ name: 'snap1', sizeBytes: 64 * MiB, allocLimitBytes: MiB, allocatedBytes: 0 });
    const show = await ok(['volume', 'show', 'snap1']);
    expect(show).toMatch(/^alloc limit:\s+1 MiB \(0\.0% used\)$/m);
    const [header, row] = (await ok(['volume', 'list'])).split('\n');
    expect(header).toMatch(/^NAME\s+SIZE\s+ALLOCATED\s+LIMIT\s+BLOCK\s+PROVISIONING\s+ACCESS\s+CACHE\s+DESCRIPTION$/);
    expect(row).toMatch(/^snap1\s+64 MiB\s+0 B\s+1 MiB\s+512\s+thin\s+rw\s+write-through$/);

    expect(await ok(['volume', 'set', 'snap1', '--alloc-limit', '4MiB'])).toBe('volume snap1: allocation limit 4 MiB (0 B allocated)\n');
    expect(await json(['volume', 'set', 'snap1', '--alloc-limit', 'none'])).toMatchObject({ name: 'snap1', allocLimitBytes: null });
    expect(await ok(['volume', 'show', 'snap1'])).toMatch(/^alloc limit:\s+none$/m);
    expect(
      ((await json(['volume', 'list'])).volumes as Array<{ name: string; allocLimitBytes: unknown }>).find((v) => v.name === 'snap1')!.allocLimitBytes,
    ).toBeNull();
    expect(await json(['volume', 'set', 'snap1', '--alloc-limit', '2MiB'])).toMatchObject({ allocLimitBytes: 2 * MiB });
    expect(await json(['volume', 'create', 'nolimit', '--size', '1MiB'])).toMatchObject({ allocLimitBytes: null });
    await ok(['volume', 'delete', 'nolimit']);
  });

  it('refuses a limit on a thick volume, above the size or unparsable, and set without a setting', async () => {
    const cases: Array<[string[], number, RegExp]> = [
      [
        ['volume', 'create', 't', '--size', '1MiB', '--thick', '--alloc-limit', '512k'],
        2,
        /^arraylab: --alloc-limit: a thick volume has all its space allocated at creation, so it cannot have an allocation limit; drop --thick or --alloc-limit$/,
      ],
      [
        ['volume', 'create', 'b', '--size', '1MiB', '--alloc-limit', '2MiB'],
        1,
        /^arraylab: allocation limit 2 MiB of volume b is larger than its size \(1 MiB\); give at most 1048576 bytes, or none for no limit$/,
      ],
      [
        ['volume', 'create', 'o', '--size', '1MiB', '--alloc-limit', '1000'],
        1,
        /^arraylab: invalid allocation limit 1000 bytes for volume o: not a multiple of the 512-byte block size; the nearest valid limits are 512 or 1024 bytes$/,
      ],
      [
        ['volume', 'create', 'j', '--size', '1MiB', '--alloc-limit', 'none'],
        2,
        /^arraylab: --alloc-limit: "none" is not a size; use a number with a unit such as 64MiB or 10GiB$/,
      ],
      [
        ['volume', 'set', 'snap1'],
        2,
        /^arraylab: volume set needs a setting to change: --alloc-limit SIZE\|none or --write-cache volatile\|write-through \(see 'arraylab volume set --help'\)$/,
      ],
      [
        ['volume', 'set', 'snap1', '--alloc-limit', 'lots'],
        2,
        /^arraylab: --alloc-limit: "lots" is not a size; use a number with a unit such as 64MiB or 10GiB, or none to remove the limit$/,
      ],
      [
        ['volume', 'set', 'snap1', '--alloc-limit', '0'],
        2,
        /^arraylab: --alloc-limit: 0 is not a limit; give a size such as 64MiB, or none to remove the limit$/,
      ],
      [
        ['volume', 'set', 'snap1', '--alloc-limit', '1GiB'],
        1,
        /^arraylab: allocation limit 1 GiB of volume snap1 is larger than its size \(64 MiB\); give at most 67108864 bytes, or none for no limit$/,
      ],
      [['volume', 'set', 'nope', '--alloc-limit', '1MiB', '--json'], 1, /^arraylab: no volume named "nope"; list volumes with "arraylab volume list"$/],
    ];
    await ok(['volume', 'create', 'thick1', '--size', '1MiB', '--thick']);
    cases.push([
      ['volume', 'set', 'thick1', '--alloc-limit', '512k'],
      1,
      /^arraylab: volume thick1 is thick: all its space is allocated at creation, so it cannot have an allocation limit; use a thin volume$/,
    ]);
    for (const [args, code, message] of cases) {
      const r = await lab.cli(args);
      expect(r.code, args.join(' ')).toBe(code);
      expect(r.stdout, args.join(' ')).toBe('');
      expect(r.stderr.trimEnd().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr.trimEnd(), args.join(' ')).toMatch(message);
    }
    await ok(['volume', 'delete', 'thick1']);
  });

  it('renames a volume and its export, with or without a new identity; refuses while a client is connected', async () => {
    const qemuIo = requireTool('qemu-io');
    const before = await json(['volume', 'create', 'r1', '--size', '4MiB']);
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x5c 0 1M', lab.nbdUri('r1')]);
    expect(await ok(['volume', 'rename', 'r1', 'r2'])).toBe('renamed volume r1 to r2\n');
    const r2 = await json(['volume', 'show', 'r2']);
    expect(r2).toMatchObject({ name: 'r2', uuid: before.uuid, wwn: before.wwn, serial: before.serial, allocatedBytes: MiB });
    const missing = await lab.cli(['volume', 'show', 'r1']);
    expect(missing.code).toBe(1);
    // The export follows the name.
    await run(qemuIo, ['-f', 'raw', '-r', '-c', 'read -P 0x5c 0 1M', lab.nbdUri('r2')]);
    const gone = await run(qemuIo, ['-f', 'raw', '-r', '-c', 'read 0 512', lab.nbdUri('r1')]).then(
      () => 'opened',
      (e: { stderr: string }) => e.stderr,
    );
    expect(gone).not.toBe('opened');

    const human = await ok(['volume', 'rename', 'r2', 'r3', '--new-identity']);
    const r3 = await json(['volume', 'show', 'r3']);
    expect(human).toBe(`renamed volume r2 to r3 with a new identity: serial ${r3.serial as string}, wwn ${r3.wwn as string}\n`);
    expect(r3.uuid).toBe(before.uuid);
    expect(r3.wwn).not.toBe(before.wwn);
    expect(r3.serial).not.toBe(before.serial);
    const viaJson = await json(['volume', 'rename', 'r3', 'r4', '--new-identity']);
    expect(viaJson).toMatchObject({ name: 'r4', uuid: before.uuid });
    expect(viaJson.serial).not.toBe(r3.serial);

    const sock = await holdNbdConnection(lab.nbdPort, 'r4');
    try {
      const busy = await lab.cli(['volume', 'rename', 'r4', 'r5']);
      expect(busy.code).toBe(1);
      expect(busy.stderr).toMatch(/^arraylab: cannot rename volume r4: it is open by 1 connected client \(nbd 127\.0\.0\.1:\d+\); disconnect it first\n$/);
    } finally {
      sock.destroy();
    }
    await until(
      'the client to go',
      async () => ((await json(['export', 'list'])).exports as Array<{ name: string; connections: unknown[] }>).every((e) => e.connections.length === 0),
      { timeoutMs: 30_000 },
    );
    const taken = await lab.cli(['volume', 'rename', 'r4', 'snap1']);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/^arraylab: cannot rename volume r4 to snap1: volume snap1 already exists/);
    const bad = await lab.cli(['volume', 'rename', 'r4']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^arraylab: Not enough non-option arguments: got 1, need at least 2/);
    await ok(['volume', 'rename', 'r4', 'r5']);
    await ok(['volume', 'delete', 'r5']);
  }, 60_000);
});

describe('rename of a split EC clone, then kill -9', () => {
  it('after the restart the session and the volume use the new name, and the pair rejoins', async () => {
    const qemuIo = requireTool('qemu-io');
    const dataDir = makeTempDir('arraylab-rename-kill9-');
    let lab = await startArraylab({ dataDir, config: { volumes: [] } });
    const ok = (args: string[]) => cliOk(lab, args);
    const json = (args: string[]) => cliJson(lab, args);
    await ok(['volume', 'create', 'db', '--size', '16MiB']);
    await ok(['volume', 'create', 'mirror', '--size', '16MiB']);
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x61 0 16M', lab.nbdUri('db')]);
    const id = (await json(['copy', 'start', '--type', 'ec', '--src', 'db', '--dst', 'mirror'])).id as string;
    await until('equivalent', async () => (await json(['copy', 'show', id])).state === 'equivalent', { timeoutMs: 30_000 });
    await ok(['copy', 'split', id]);
    const before = await json(['volume', 'show', 'mirror']);
    const renamed = await json(['volume', 'rename', 'mirror', 'clone', '--new-identity']);
    expect(await json(['copy', 'show', id])).toMatchObject({ state: 'split', source: 'db', destination: 'clone' });
    await lab.kill9();

    lab = await startArraylab({ dataDir, config: { volumes: [] } });
    const names = ((await json(['volume', 'list'])).volumes as Array<{ name: string }>).map((v) => v.name);
    expect(names).toEqual(['clone', 'db']);
    expect(await json(['volume', 'show', 'clone'])).toMatchObject({ uuid: before.uuid, wwn: renamed.wwn, serial: renamed.serial });
    expect(renamed.wwn).not.toBe(before.wwn);
    expect(await json(['copy', 'show', id])).toMatchObject({ id, type: 'ec', state: 'split', source: 'db', destination: 'clone' });
    // The split clone is its own volume, read-write under the new name.
    await run(qemuIo, ['-f', 'raw', '-c', 'read -P 0x61 0 16M', '-c', 'write -P 0x62 0 1M', lab.nbdUri('clone')]);
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x63 8M 1M', lab.nbdUri('db')]);
    // Rejoin (resume of a split pair): the clone becomes equal to the source again.
    await ok(['copy', 'resume', id]);
    await until('equivalent again', async () => (await json(['copy', 'show', id])).state === 'equivalent', { timeoutMs: 30_000 });
    await ok(['copy', 'cancel', id]);
    await run(qemuIo, ['-f', 'raw', '-r', '-c', 'read -P 0x61 0 8M', '-c', 'read -P 0x63 8M 1M', '-c', 'read -P 0x61 9M 7M', lab.nbdUri('clone')]);
    await lab.stop();
  }, 120_000);
});
