/**
 * Real NBD clients against the in-process server: nbdinfo, qemu-img, qemu-io, nbdcopy, fio.
 * These are what users run; if they disagree with the server, the server is wrong.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { MemoryProvider } from '../support/memoryProvider.js';
import { requireTool } from '../support/tools.js';
import { pattern, run, startServer, waitFor, type Started } from './harness.js';

const MiB = 1024 * 1024;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'nbd-clients-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let started: Started | undefined;
let provider: MemoryProvider;

async function serve(setup: (p: MemoryProvider) => void): Promise<Started> {
  provider = new MemoryProvider();
  setup(provider);
  started = await startServer(provider);
  return started;
}

afterEach(async () => {
  if (started) {
    await started.server.close();
    // Every handle a client opened was closed exactly once, and nothing went wrong inside.
    expect(provider.allClosedOnce).toBe(true);
    expect(started.at('error')).toEqual([]);
    started = undefined;
  }
});

describe('nbdinfo', () => {
  test('--list shows every export with its description', async () => {
    const nbdinfo = requireTool('nbdinfo');
    const s = await serve((p) => {
      p.add('alpha', { size: 8 * MiB, description: 'first disk' });
      p.add('beta', { size: 16 * MiB, description: 'second disk', readOnly: true });
    });
    const r = await run(nbdinfo, ['--list', '--json', `nbd://127.0.0.1:${s.port}`]);
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout);
    const byName = Object.fromEntries(info.exports.map((e: { 'export-name': string }) => [e['export-name'], e]));
    expect(Object.keys(byName).sort()).toEqual(['alpha', 'beta']);
    expect(byName.alpha.description).toBe('first disk');
    expect(byName.alpha['export-size']).toBe(8 * MiB);
    expect(byName.beta['export-size']).toBe(16 * MiB);
    expect(byName.beta.is_read_only).toBe(true);
    expect(byName.alpha.is_read_only).toBe(false);
  });

  test('--json reports size, flags, block sizes and base:allocation', async () => {
    const nbdinfo = requireTool('nbdinfo');
    const s = await serve((p) => p.add('disk', { size: 32 * MiB, blockSize: 4096 }));
    const r = await run(nbdinfo, ['--json', s.uri('disk')]);
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.protocol).toBe('newstyle-fixed');
    expect(info.structured).toBe(true);
    const e = info.exports[0];
    expect(e['export-size']).toBe(32 * MiB);
    expect(e.contexts).toContain('base:allocation');
    expect(e.block_size_minimum).toBe(4096);
    expect(e.block_size_preferred).toBe(4096);
    expect(e.block_size_maximum).toBe(32 * MiB);
    expect(e.is_rotational).toBe(false);
  });

  test('--can answers for each feature; a read-only export cannot write, trim or zero', async () => {
    const nbdinfo = requireTool('nbdinfo');
    const s = await serve((p) => {
      p.add('rw', { size: 4 * MiB });
      p.add('ro', { size: 4 * MiB, readOnly: true });
    });
    const can = async (what: string, name: string) => (await run(nbdinfo, ['--can', what, s.uri(name)])).code;
    for (const f of ['connect', 'read', 'write', 'flush', 'fua', 'trim', 'zero', 'fast-zero', 'df', 'multi-conn', 'cache', 'structured-reply']) {
      expect(await can(f, 'rw'), `--can ${f} on rw`).toBe(0);
    }
    expect(await can('write', 'ro')).toBe(2);
    expect(await can('trim', 'ro')).toBe(2);
    expect(await can('zero', 'ro')).toBe(2);
    expect(await can('read', 'ro')).toBe(0);
    expect(await can('multi-conn', 'ro')).toBe(0);
    expect((await run(nbdinfo, ['--is', 'read-only', s.uri('ro')])).code).toBe(0);
    expect((await run(nbdinfo, ['--is', 'read-only', s.uri('rw')])).code).toBe(2);
    expect((await run(nbdinfo, ['--is', 'rotational', s.uri('rw')])).code).toBe(2);
  });

  test('an unknown export fails cleanly and the server goes on', async () => {
    const nbdinfo = requireTool('nbdinfo');
    const s = await serve((p) => p.add('disk', { size: MiB }));
    const r = await run(nbdinfo, [s.uri('nope')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr.toLowerCase()).toMatch(/unknown|not available|not found|no such file/);
    expect((await run(nbdinfo, ['--size', s.uri('disk')])).stdout.trim()).toBe(String(MiB));
    expect(s.at('warn').filter((w) => w.msg.includes('unknown export'))).toHaveLength(1);
  });

  test('--map shows holes after trim and unmapping zero, data after NO_HOLE zero', async () => {
    const nbdinfo = requireTool('nbdinfo');
    const qemuIo = requireTool('qemu-io');
    const s = await serve((p) => p.add('disk', { size: 8 * MiB }));
    const io = await run(qemuIo, [
      '-f',
      'raw',
      '-c',
      'write -P 0x11 0 4M',
      '-c',
      'discard 1M 1M',
      '-c',
      'write -z -u 2M 512k',
      '-c',
      'write -z 3M 512k',
      s.uri('disk'),
    ]);
    expect(io.code, io.stderr + io.stdout).toBe(0);
    const r = await run(nbdinfo, ['--map', '--json', s.uri('disk')]);
    expect(r.code, r.stderr).toBe(0);
    const map: { offset: number; length: number; type: number }[] = JSON.parse(r.stdout);
    const typeAt = (off: number) => map.find((e) => e.offset <= off && off < e.offset + e.length)!.type;
    expect(typeAt(0)).toBe(0); // data
    expect(typeAt(1 * MiB)).toBe(3); // trimmed: hole,zero
    expect(typeAt(2 * MiB)).toBe(3); // zeroed, may unmap: hole,zero
    expect(typeAt(2 * MiB + 512 * 1024)).toBe(0);
    expect(typeAt(3 * MiB)).toBe(0); // zeroed with NO_HOLE: stays allocated
    expect(typeAt(5 * MiB)).toBe(3); // never written
    // And the contents agree with the map.
    const check = await run(qemuIo, [
      '-f',
      'raw',
      '-r',
      '-c',
      'read -P 0 1M 1M',
      '-c',
      'read -P 0 2M 512k',
      '-c',
      'read -P 0 3M 512k',
      '-c',
      'read -P 0x11 3584k 512k',
      s.uri('disk'),
    ]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).not.toMatch(/Pattern verification failed/);
  });
});

describe('qemu', () => {
  test('qemu-io writes and reads back patterns at unaligned offsets (read-modify-write over 512-byte blocks)', async () => {
    const qemuIo = requireTool('qemu-io');
    const s = await serve((p) => p.add('disk', { size: 4 * MiB }));
    const w = await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0xab 1000 3000', '-c', 'write -P 0xcd 5001 7', '-c', 'write -P 0xef 1048575 2', s.uri('disk')]);
    expect(w.code, w.stderr).toBe(0);
    // Read back in a new process (and connection): what the server holds, not a client cache.
    const r = await run(qemuIo, [
      '-f',
      'raw',
      '-r',
      '-c',
      'read -P 0 0 1000',
      '-c',
      'read -P 0xab 1000 3000',
      '-c',
      'read -P 0 4000 1001',
      '-c',
      'read -P 0xcd 5001 7',
      '-c',
      'read -P 0 5008 1000',
      '-c',
      'read -P 0xef 1048575 2',
      s.uri('disk'),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    const store = provider.store('disk');
    const buf = Buffer.alloc(4096);
    await store.read(0, buf);
    expect(buf.subarray(1000, 4000).every((x) => x === 0xab)).toBe(true);
    expect(buf[999]).toBe(0);
    expect(buf[4000]).toBe(0);
  });

  test('qemu-img convert into the export, then compare equal; a changed byte makes compare fail', async () => {
    const qemuImg = requireTool('qemu-img');
    const s = await serve((p) => p.add('disk', { size: 16 * MiB }));
    const src = join(dir, 'convert-src.img');
    const img = Buffer.alloc(16 * MiB);
    pattern(3 * MiB, 5).copy(img, 1 * MiB);
    pattern(1 * MiB, 9).copy(img, 10 * MiB);
    writeFileSync(src, img);
    const c = await run(qemuImg, ['convert', '-n', '-f', 'raw', '-O', 'raw', src, s.uri('disk')]);
    expect(c.code, c.stderr).toBe(0);
    const cmp = await run(qemuImg, ['compare', '-f', 'raw', '-F', 'raw', src, s.uri('disk')]);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
    const changed = Buffer.from(img);
    changed[12 * MiB + 7] = 1;
    writeFileSync(src, changed);
    const cmp2 = await run(qemuImg, ['compare', '-f', 'raw', '-F', 'raw', src, s.uri('disk')]);
    expect(cmp2.code).toBe(1);
  });
});

describe('nbdcopy', () => {
  test('copies a sparse image in and back out byte for byte', async () => {
    const nbdcopy = requireTool('nbdcopy');
    const s = await serve((p) => p.add('disk', { size: 24 * MiB }));
    const src = join(dir, 'copy-src.img');
    const back = join(dir, 'copy-back.img');
    const img = Buffer.alloc(24 * MiB);
    pattern(5 * MiB, 3).copy(img, 2 * MiB + 4096);
    pattern(64 * 1024, 4).copy(img, 20 * MiB);
    writeFileSync(src, img);
    const i = await run(nbdcopy, [src, s.uri('disk')]);
    expect(i.code, i.stderr).toBe(0);
    const o = await run(nbdcopy, [s.uri('disk'), back]);
    expect(o.code, o.stderr).toBe(0);
    expect(readFileSync(back).equals(img)).toBe(true);
    // nbdcopy zeroes the holes (fast zero or trim) rather than writing them: the export stays sparse.
    expect(provider.store('disk').allocatedBytes).toBeLessThan(8 * MiB);
  });

  test('copies between two exports over several connections (multi-conn)', async () => {
    const nbdcopy = requireTool('nbdcopy');
    const s = await serve((p) => {
      p.add('a', { size: 16 * MiB });
      p.add('b', { size: 16 * MiB });
    });
    const data = pattern(16 * MiB, 11);
    await provider.store('a').write(0, data);
    const r = await run(nbdcopy, ['--connections=4', '--requests=16', s.uri('a'), s.uri('b')]);
    expect(r.code, r.stderr).toBe(0);
    const out = Buffer.alloc(16 * MiB);
    await provider.store('b').read(0, out);
    expect(out.equals(data)).toBe(true);
    await waitFor(() => provider.openCount === 0, 5000, 'nbdcopy handles closed');
  });
});

describe('fio', () => {
  test('random 4k writes at queue depth 16, verified with crc32c', async () => {
    const fio = requireTool('fio');
    const s = await serve((p) => p.add('disk', { size: 64 * MiB }));
    const r = await run(
      fio,
      [
        '--name=nbdverify',
        '--ioengine=nbd',
        `--uri=${s.uri('disk')}`,
        '--rw=randwrite',
        '--bs=4k',
        '--size=32m',
        '--iodepth=16',
        '--verify=crc32c',
        '--do_verify=1',
        '--verify_fatal=1',
        '--randrepeat=1',
        '--verify_state_save=0',
        '--output-format=json',
      ],
      { timeoutMs: 110_000, cwd: dir },
    );
    expect(r.code, r.stderr + r.stdout.slice(-2000)).toBe(0);
    const job = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(32 * MiB);
    // The verify pass read everything back.
    expect(job.read.io_bytes).toBe(32 * MiB);
  });
});
