/**
 * --flush-only (syncfs) puts written-but-not-fsynced data on the device, and invalidate drops
 * the host's stale cached blocks of a device (buffer cache, and a loop device's backing file).
 */
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { LinuxHost } from '../../../agent/host/LinuxHost.js';
import { requireTool } from '../../support/tools.js';
import { cleanupLoops, makeLoopDisk, makeLoopFs } from './loopFs.js';

const log = pino({ level: 'silent' });
let holders: number[] = [];
afterEach(() => {
  for (const fd of holders) closeSync(fd);
  holders = [];
  cleanupLoops();
});

/** The whole device, read with O_DIRECT (no host cache in the way). */
function readDirect(device: string): Buffer {
  return execFileSync('dd', [`if=${device}`, 'iflag=direct', 'bs=1M', 'status=none'], { maxBuffer: 1 << 30 });
}

function readBuffered(device: string, length: number): Buffer {
  const fd = openSync(device, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, 0);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** Pages of the file in the page cache (util-linux fincore). */
function cachedPages(file: string): number {
  return Number(execFileSync('fincore', ['--raw', '--noheadings', '--output', 'PAGES', file], { encoding: 'utf8' }).trim());
}

describe('flush-only', () => {
  it('syncfs puts data that was written but not fsynced on the device', async () => {
    const fs = makeLoopFs('ext4');
    const pattern = `arraylab-flush-${process.pid}-${Date.now()}-`.repeat(64);
    writeFileSync(join(fs.mountPoint, 'data.bin'), pattern); // no fsync: it sits in the page cache
    expect(readDirect(fs.device).includes(pattern)).toBe(false);

    const host = new LinuxHost({ log });
    const rec = await host.lockTransaction('tv1', fs.device, 'flush');
    expect(rec).toMatchObject({ action: 'flushed', volume: 'tv1' });
    expect(rec.mounts.map((m) => m.mountPoint)).toEqual([fs.mountPoint]);
    await host.invalidate(fs.device);
    expect(readDirect(fs.device).includes(pattern)).toBe(true);
    await host.unlock(rec); // a no-op
  });
});

describe('invalidate', () => {
  it('drops the buffer cache of a loop device and the page cache of its backing file', async () => {
    requireTool('fincore');
    const disk = makeLoopDisk(8);
    const a = Buffer.alloc(4096, 0xaa);
    const b = Buffer.alloc(4096, 0xbb);
    // Linux drops a block device's cache on its last close; hold it open like a user would.
    const holder = openSync(disk.device, 'r');
    holders.push(holder);
    const fd = openSync(disk.device, 'r+');
    writeSync(fd, a, 0, a.length, 0);
    closeSync(fd);
    execFileSync('sync', [disk.device]);
    expect(readBuffered(disk.device, 4096).equals(a)).toBe(true); // now cached
    expect(cachedPages(disk.image)).toBeGreaterThan(0);

    // The "array" changes the data underneath, bypassing the loop device's cache.
    // dd aligns its buffer for O_DIRECT (a Node Buffer's address cannot be chosen).
    const bFile = join(disk.dir, 'b.bin');
    writeFileSync(bFile, b);
    execFileSync('dd', [`if=${bFile}`, `of=${disk.image}`, 'oflag=direct', 'conv=notrunc', 'bs=4096', 'count=1', 'status=none']);
    expect(readBuffered(disk.device, 4096).equals(a)).toBe(true); // stale: the host still sees the old data

    await new LinuxHost({ log }).invalidate(disk.device);
    expect(cachedPages(disk.image)).toBe(0);
    expect(readBuffered(disk.device, 4096).equals(b)).toBe(true);
  });

  it('names the device when it cannot', async () => {
    await expect(new LinuxHost({ log }).invalidate('/nonexistent/dev')).rejects.toThrow(/\/nonexistent\/dev/);
  });
});
