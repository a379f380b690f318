/** `arraylab volume ...` end to end: the real CLI against a spawned `arraylab serve`. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, startArraylab, type Arraylab } from '../support/arraylab.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

describe('arraylab volume', () => {
  let lab: Arraylab;

  beforeAll(async () => {
    lab = await startArraylab({ config: { volumes: [] } });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  const ok = (args: string[]) => cliOk(lab, args);
  const json = (args: string[]) => cliJson(lab, args);

  it('creates, lists, shows, resizes and deletes a volume (human output)', async () => {
    expect(await ok(['volume', 'create', 'vol1', '--size', '64MiB', '--description', 'first volume'])).toBe(
      'created volume vol1: 64 MiB thin, 512-byte blocks\n',
    );
    const list = await ok(['volume', 'list']);
    const [header, row, ...rest] = list.trimEnd().split('\n');
    expect(rest).toEqual([]);
    expect(header).toMatch(/^NAME\s+SIZE\s+ALLOCATED\s+LIMIT\s+BLOCK\s+PROVISIONING\s+ACCESS\s+CACHE\s+DESCRIPTION$/);
    expect(row).toMatch(/^vol1\s+64 MiB\s+\S+ \S*B\s+-\s+512\s+thin\s+rw\s+write-through\s+first volume$/);
    // Columns line up: SIZE is right-aligned under its header.
    expect(row!.indexOf('64 MiB') + '64 MiB'.length).toBe(header!.indexOf('SIZE') + 'SIZE'.length);

    const show = await ok(['volume', 'show', 'vol1']);
    expect(show).toMatch(/^name:\s+vol1$/m);
    expect(show).toMatch(/^size:\s+64 MiB \(67108864 bytes\)$/m);
    expect(show).toMatch(/^block size:\s+512 bytes$/m);
    expect(show).toMatch(/^provisioning:\s+thin$/m);
    expect(show).toMatch(/^read-only:\s+no$/m);
    expect(show).toMatch(/^description:\s+first volume$/m);
    expect(show).toMatch(/^uuid:\s+[0-9a-f-]{36}$/m);

    expect(await ok(['volume', 'resize', 'vol1', '--size', '128MiB'])).toBe('resized volume vol1 to 128 MiB (134217728 bytes)\n');
    expect(await ok(['volume', 'resize', 'vol1', '--size', '+64MiB'])).toBe('resized volume vol1 to 192 MiB (201326592 bytes)\n');
    expect(await ok(['volume', 'delete', 'vol1'])).toBe('deleted volume vol1\n');
    expect(await ok(['volume', 'list'])).toMatch(/^no volumes; create one with: arraylab volume create NAME --size 1GiB\n$/);
  });

  it('does the same with --json (sizes in bytes)', async () => {
    const created = await json(['volume', 'create', 'vol2', '--size', '1GiB', '--block-size', '4096', '--thick', '--read-only', '--description', 'd2']);
    expect(created).toMatchObject({ name: 'vol2', sizeBytes: GiB, blockSize: 4096, provisioning: 'thick', readOnly: true, description: 'd2' });
    expect(created.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(created.wwn).toMatch(/^[0-9a-f]{32}$/);
    expect(typeof created.serial).toBe('string');
    expect(Date.parse(created.createdAt as string)).not.toBeNaN();
    expect(typeof created.allocatedBytes).toBe('number');

    expect(await json(['volume', 'list'])).toEqual({ volumes: [created] });
    expect(await json(['volume', 'show', 'vol2'])).toEqual(created);
    expect(await json(['volume', 'resize', 'vol2', '--size', '+1GiB'])).toMatchObject({ name: 'vol2', sizeBytes: 2 * GiB });
    expect(await json(['volume', 'delete', 'vol2'])).toEqual({ deleted: 'vol2' });
    expect(await json(['volume', 'ls'])).toEqual({ volumes: [] });
  });

  it('takes sizes in binary and decimal units', async () => {
    for (const [size, bytes] of [
      ['4k', 4096],
      ['1M', MiB],
      ['3mib', 3 * MiB],
      ['1024KB', 1_024_000],
      ['1.5MiB', 1.5 * MiB],
    ] as const) {
      const name = `u${bytes}`;
      expect(await json(['volume', 'create', name, '--size', size])).toMatchObject({ name, sizeBytes: bytes });
      await ok(['volume', 'rm', name]);
    }
  });

  it('fails operations with one line on stderr and exit status 1', async () => {
    await ok(['volume', 'create', 'dup', '--size', '1MiB']);
    const dup = await lab.cli(['volume', 'create', 'dup', '--size', '1MiB']);
    expect(dup.code).toBe(1);
    expect(dup.stdout).toBe('');
    expect(dup.stderr).toMatch(/^arraylab: .*dup.*\n$/);

    const missing = await lab.cli(['volume', 'show', 'nope']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^arraylab: .*nope.*\n$/);

    const shrink = await lab.cli(['volume', 'resize', 'dup', '--size', '512']);
    expect(shrink.code).toBe(1);
    expect(shrink.stderr).toMatch(/^arraylab: .*dup.*\n$/);

    const del = await lab.cli(['volume', 'delete', 'nope', '--json']);
    expect(del.code).toBe(1);
    expect(del.stdout).toBe('');
    expect(del.stderr.split('\n')).toHaveLength(2);
    await ok(['volume', 'delete', 'dup']);
  });

  it('refuses bad arguments with one line that points to help, and exit status 2', async () => {
    const cases: Array<[string[], RegExp, string]> = [
      [
        ['volume', 'create', 'x', '--size', '10XB'],
        /^arraylab: --size: "10XB" is not a size: unknown unit "XB"; use a number with a unit such as 64MiB or 10GiB$/,
        'volume create',
      ],
      [['volume', 'create', 'x', '--size', '-1G'], /^arraylab: --size: "-1G" is negative/, 'volume create'],
      [['volume', 'create', 'x', '--size', '1.1K'], /^arraylab: --size: "1.1K" is not a whole number of bytes/, 'volume create'],
      [['volume', 'create', 'x', '--size', '9PiB'], /^arraylab: --size: "9PiB" is too large/, 'volume create'],
      [['volume', 'create', 'x'], /^arraylab: Missing required argument: size$/, 'volume create'],
      [['volume', 'create', 'x', '--size'], /^arraylab: Not enough arguments following: size$/, 'volume create'],
      [
        ['volume', 'create', 'x', '--size', '1G', '--block-size', '1024'],
        /^arraylab: --block-size: "1024" is not a supported block size; use 512 or 4096$/,
        'volume create',
      ],
      [['volume', 'create', 'x', '--size', '1G', '--thin', '--thick'], /^arraylab: Arguments thin and thick are mutually exclusive$/, 'volume create'],
      [['volume', 'resize', 'x', '--size', '+junk'], /^arraylab: --size: "junk" is not a size/, 'volume resize'],
      [['volume', 'list', '--colour'], /^arraylab: Unknown argument: colour$/, 'volume list'],
      [['volume'], /^arraylab: volume needs a subcommand: create, list, show, resize, set, rename or delete$/, 'volume'],
      [['volume', 'creat', 'x'], /^arraylab: Unknown arguments: creat, x\. Did you mean create\?$/, 'volume'],
      [['volume', 'show'], /^arraylab: Not enough non-option arguments: got 0, need at least 1$/, 'volume show'],
    ];
    for (const [args, message, command] of cases) {
      const r = await lab.cli(args);
      const lines = r.stderr.trimEnd().split('\n');
      expect(r.code, args.join(' ')).toBe(2);
      // A message that carries its own fix stands alone; one without points at the help.
      const pointer = ` (see 'arraylab ${command} --help')`;
      expect(lines, args.join(' ')).toHaveLength(1);
      const line = lines[0]!.endsWith(pointer) ? lines[0]!.slice(0, -pointer.length) : lines[0]!;
      expect(line.includes('; ') || lines[0]!.endsWith(pointer), lines[0]).toBe(true);
      expect(line, args.join(' ')).toMatch(message);
      expect(r.stdout).toBe('');
    }
  });
});
