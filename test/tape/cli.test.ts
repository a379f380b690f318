/**
 * The tape library end to end: the real server, the real CLI and real NBD clients (qemu-io
 * writes, qemu-img compares, libnbd holds a volume open). Round trip, a SnapOPC+ snap volume's
 * point-in-time image, the read-write export refusal, --json, damage found by verify, config
 * cartridges and persistence across a restart, streamed progress, and a client that notices
 * at once when the server dies in the middle of a tape write.
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ApiError, ArrayClient } from '../../proto/ArrayClient.js';
import type { HostProgress } from '../../emulator/tape/types.js';
import { cliJson, cliOk, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireNbdsh, requireTool } from '../support/tools.js';

const run = promisify(execFile);
const MiB = 2 ** 20;

const labs: Arraylab[] = [];
const clients: ArrayClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
});
afterAll(async () => {
  await Promise.allSettled(labs.splice(0).map((l) => l.kill9()));
});

async function lab(opts: Parameters<typeof startArraylab>[0] = {}): Promise<Arraylab> {
  const l = await startArraylab({ config: { volumes: [] }, ...opts });
  labs.push(l);
  return l;
}

function qemuIo(uri: string, ...cmds: string[]) {
  return run(requireTool('qemu-io'), ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { maxBuffer: 16 * MiB });
}

/** qemu-img compare over NBD: 0 identical, 1 different. */
async function compare(a: string, b: string): Promise<{ code: number; out: string }> {
  try {
    const r = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', a, b]);
    return { code: 0, out: r.stdout };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

describe('arraylab tape (real server, CLI and NBD clients)', () => {
  it('writes a volume qemu-io filled, restores it onto another volume, and qemu-img compare finds them identical', async () => {
    const l = await lab();
    await cliOk(l, ['volume', 'create', 'src', '--size', '64MiB']);
    await cliOk(l, ['volume', 'create', 'dst', '--size', '64MiB']);
    await qemuIo(l.nbdUri('src'), 'write -P 0xab 0 1M', 'write -P 0xcd 20M 3M', 'write -P 0x01 63M 512');
    await qemuIo(l.nbdUri('dst'), 'write -P 0x77 0 64M'); // dirty: holes of the record must become zeroes

    const cart = await cliJson(l, ['tape', 'add', 'T0001', '--capacity', '256MiB']);
    expect(cart).toMatchObject({ label: 'T0001', capacityBytes: 256 * MiB, recordCount: 0 });
    const rec = await cliJson(l, ['tape', 'write', 'src', '--cartridge', 'T0001', '--tag', 'nightly']);
    expect(rec).toMatchObject({ cartridge: 'T0001', record: 1, volume: 'src', tag: 'nightly', sizeBytes: 64 * MiB, blockSize: 512 });
    expect(rec.dataBytes).toBeGreaterThanOrEqual(4 * MiB + 512);
    expect(rec.dataBytes).toBeLessThan(6 * MiB); // only the written parts, not the 64 MiB image

    expect((await compare(l.nbdUri('src'), l.nbdUri('dst'))).code).toBe(1);
    const restored = await cliJson(l, ['tape', 'restore', 'T0001', '1', '--to', 'dst']);
    expect(restored).toEqual({ cartridge: 'T0001', record: 1, volume: 'dst', bytes: 64 * MiB, sha256: rec.sha256 });
    const same = await compare(l.nbdUri('src'), l.nbdUri('dst'));
    expect(same.out).toMatch(/identical/);
    expect(same.code).toBe(0);

    // Human output, and --json of list/show/verify.
    expect(await cliOk(l, ['tape', 'list'])).toMatch(/^LABEL\s+CAPACITY\s+USED\s+USE%\s+RECORDS/);
    expect(await cliJson(l, ['tape', 'list'])).toEqual({ cartridges: [{ ...cart, usedBytes: expect.any(Number), recordCount: 1 }] });
    const shown = await cliJson(l, ['tape', 'show', 'T0001']);
    expect(shown.records).toEqual([rec]);
    expect(await cliJson(l, ['tape', 'verify', 'T0001', '1'])).toEqual({ cartridge: 'T0001', ok: true, checks: [{ record: 1, ok: true, error: '' }] });
    expect(await cliOk(l, ['tape', 'show', 'T0001'])).toMatch(/\n\s+1\s+src\s+64 MiB\s+.*nightly\n/);

    // Wrong command lines: exit 2; failures: exit 1, one line naming the thing and the fix.
    const bad = await l.cli(['tape', 'restore', 'T0001', 'one', '--to', 'dst']);
    expect(bad.code).toBe(2);
    const missing = await l.cli(['tape', 'restore', 'T0001', '9', '--to', 'dst']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('arraylab: cartridge T0001 has no record 9: its records are 1 to 1; see arraylab tape show T0001\n');
    await cliOk(l, ['volume', 'create', 'tiny', '--size', '1MiB']);
    const full = await l.cli(['tape', 'add', 'SMALL', '--capacity', '1MiB']);
    expect(full.code).toBe(0);
    const refused = await l.cli(['tape', 'write', 'src', '--cartridge', 'SMALL']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      /^arraylab: cartridge SMALL has \d+ bytes free; the copy of volume src needs \d+ .*arraylab tape add LABEL --capacity SIZE\n$/,
    );

    expect(await cliJson(l, ['tape', 'erase', 'SMALL'])).toMatchObject({ label: 'SMALL', recordCount: 0 });
    expect(await cliJson(l, ['tape', 'remove', 'SMALL'])).toEqual({ removed: 'SMALL' });
  });

  it('a SnapOPC+ snap volume written to tape restores as the point-in-time image', async () => {
    const l = await lab();
    for (const v of ['src', 'snap', 'ref', 'back']) await cliOk(l, ['volume', 'create', v, '--size', '32MiB']);
    const before = ['write -P 0x11 0 8M', 'write -P 0x22 16M 1M'];
    await qemuIo(l.nbdUri('src'), ...before);
    await qemuIo(l.nbdUri('ref'), ...before); // the image as of the snapshot, for comparison
    const g = await cliJson(l, ['copy', 'start', '--type', 'snapopcplus', '--src', 'src', '--dst', 'snap']);
    await qemuIo(l.nbdUri('src'), 'write -P 0x99 4M 8M', 'write -P 0x98 30M 1M');

    await cliOk(l, ['tape', 'add', 'T1', '--capacity', '128MiB']);
    const rec = await cliJson(l, ['tape', 'write', 'snap']); // no --cartridge: the library picks T1
    expect(rec).toMatchObject({ cartridge: 'T1', volume: 'snap', imageAt: g.imageAt });
    expect((rec.createdAt as string) > (rec.imageAt as string)).toBe(true);
    // Both instants in tape show: the image's (the snapshot) and the write's.
    const text = await cliOk(l, ['tape', 'show', 'T1']);
    expect(text).toMatch(/\nRECORD\s+VOLUME\s+SIZE\s+DATA\s+BLOCK\s+IMAGE AT\s+WRITTEN\s+SHA256\s+TAG\n/);
    expect(text).toMatch(new RegExp(`\\s1\\s+snap\\s.*\\s${g.imageAt as string}\\s+${rec.createdAt as string}\\s`));
    expect(rec.dataBytes).toBeLessThan(16 * MiB); // all-zero pieces of the snap volume's image are left out
    await cliJson(l, ['tape', 'restore', 'T1', String(rec.record), '--to', 'back']);
    expect((await compare(l.nbdUri('ref'), l.nbdUri('back'))).code).toBe(0);
    expect((await compare(l.nbdUri('src'), l.nbdUri('back'))).code).toBe(1);
  });

  it('refuses to restore onto a volume a client has open read-write, unless --force', async () => {
    const python = requireNbdsh();
    const l = await lab();
    await cliOk(l, ['volume', 'create', 'src', '--size', '16MiB']);
    await cliOk(l, ['volume', 'create', 'dst', '--size', '16MiB']);
    await qemuIo(l.nbdUri('src'), 'write -P 0x5a 1M 2M');
    await cliOk(l, ['tape', 'add', 'T1', '--capacity', '64MiB']);
    await cliJson(l, ['tape', 'write', 'src']);

    // libnbd holds dst open read-write until its stdin closes.
    const holder = spawn(
      python,
      ['-c', 'import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint("connected", flush=True)\nsys.stdin.read()\nh.shutdown()', l.nbdUri('dst')],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.on('data', (d: Buffer) => d.toString().includes('connected') && resolve());
        holder.on('exit', (code) => reject(new Error(`nbd holder exited ${code}`)));
      });
      const r = await l.cli(['tape', 'restore', 'T1', '1', '--to', 'dst']);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(
        'arraylab: cannot restore cartridge T1 record 1 onto dst: dst is exported read-write to 1 connected client; dismount it first or pass --force\n',
      );
      const forced = await cliJson(l, ['tape', 'restore', 'T1', '1', '--to', 'dst', '--force']);
      expect(forced).toMatchObject({ volume: 'dst', bytes: 16 * MiB });
    } finally {
      holder.stdin.end();
      await new Promise((r) => (holder.exitCode !== null ? r(undefined) : holder.once('exit', r)));
    }
    expect((await compare(l.nbdUri('src'), l.nbdUri('dst'))).code).toBe(0);
  });

  it('config cartridges, records that survive a restart, and damage that verify and restore report', async () => {
    const dataDir = makeTempDir('arraylab-tape-data-');
    const config = { volumes: [], tape: { cartridges: [{ label: 'CFG1', capacity: '64MiB' }] } };
    let l = await lab({ dataDir, config });
    expect(await cliJson(l, ['tape', 'list'])).toMatchObject({ cartridges: [{ label: 'CFG1', capacityBytes: 64 * MiB, recordCount: 0 }] });
    await cliOk(l, ['volume', 'create', 'v', '--size', '8MiB']);
    await qemuIo(l.nbdUri('v'), 'write -P 0x42 0 2M');
    const rec = await cliJson(l, ['tape', 'write', 'v', '--tag', 'before restart', '--point-in-time', '2026-01-02T03:04:05Z']);
    expect(rec.imageAt).toBe('2026-01-02T03:04:05.000Z');
    const badTime = await l.cli(['tape', 'write', 'v', '--point-in-time', '2026-01-02']);
    expect(badTime.code).toBe(2);
    expect(badTime.stderr).toMatch(/--point-in-time: point in time "2026-01-02" is not an ISO 8601 instant/);
    await l.stop();

    l = await lab({ dataDir, config });
    const shown = await cliJson(l, ['tape', 'show', 'CFG1']);
    expect(shown.records).toEqual([rec]);
    expect((shown.cartridge as { recordCount: number }).recordCount).toBe(1);

    // Flip one byte of stored data in the cartridge file behind the server's back.
    const file = path.join(dataDir, 'tape', 'CFG1.tape');
    const fd = fs.openSync(file, 'r+');
    const at = 256 + 256 + 32 + 4000;
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0]! ^= 1;
    fs.writeSync(fd, b, 0, 1, at);
    fs.closeSync(fd);

    const v = await l.cli(['tape', 'verify', 'CFG1', '--json']);
    expect(v.code).toBe(1);
    const out = JSON.parse(v.stdout) as { ok: boolean; checks: Array<{ record: number; ok: boolean; error: string }> };
    expect(out.ok).toBe(false);
    expect(out.checks[0]!.error).toMatch(/^cartridge CFG1 record 1 is damaged: extent 1 .* fails its CRC32C/);
    expect(v.stderr).toBe('arraylab: cartridge CFG1: 1 of 1 record failed verification (1); restore those backups from another copy\n');
    const r = await l.cli(['tape', 'restore', 'CFG1', '1', '--to', 'v']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^arraylab: cartridge CFG1 record 1 is damaged: .*CRC32C.*\n$/);
    await l.stop();
  });

  it('streams progress to ArrayClient, and fails promptly when the server dies mid-write', async () => {
    const l = await lab();
    // A snap volume reports data everywhere, so writing a 256 GiB one reads 256 GiB: long enough to kill.
    await cliOk(l, ['volume', 'create', 'src', '--size', '256GiB', '--block-size', '4096']);
    await cliOk(l, ['volume', 'create', 'snap', '--size', '256GiB', '--block-size', '4096']);
    await cliOk(l, ['volume', 'create', 'small', '--size', '16MiB']);
    await qemuIo(l.nbdUri('small'), 'write -P 0x3c 0 6M');
    await cliJson(l, ['copy', 'start', '--type', 'snapopcplus', '--src', 'src', '--dst', 'snap']);
    await cliOk(l, ['tape', 'add', 'T1', '--capacity', '64MiB']);

    const client = new ArrayClient(l.apiAddress);
    clients.push(client);
    const seen: HostProgress[] = [];
    const rec = await client.writeTape({ volume: 'small', tag: 'api' }, (p) => seen.push(p));
    expect(rec).toMatchObject({ cartridge: 'T1', record: 1, volume: 'small', tag: 'api', dataBytes: 6 * MiB });
    expect(seen.at(-1)).toEqual({ doneBytes: 16 * MiB, totalBytes: 16 * MiB });
    expect(await client.listCartridges()).toMatchObject([{ label: 'T1', recordCount: 1 }]);

    await cliOk(l, ['tape', 'add', 'BIG', '--capacity', '512GiB']); // a sparse file: capacity is virtual
    let progressed!: () => void;
    const firstProgress = new Promise<void>((r) => (progressed = r));
    const writing = client.writeTape({ volume: 'snap', cartridge: 'BIG' }, (p) => p.doneBytes > 0 && progressed());
    const outcome = writing.then(
      () => 'resolved',
      (e: unknown) => e,
    );
    await Promise.race([firstProgress, outcome]);
    await l.kill9();
    const t0 = Date.now();
    const err = await outcome;
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe('UNAVAILABLE');
    expect((err as ApiError).message).toMatch(/went away during the tape write of volume snap/);
  });
});
