/**
 * copyDevice: a whole loop device onto another, byte for byte, with progress; a destination
 * that is too small is refused naming both.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { LinuxHost } from '../../../agent/host/LinuxHost.js';
import type { HostProgress } from '../../../agent/types.js';
import { cleanupLoops, makeLoopDisk } from './loopFs.js';

const log = pino({ level: 'silent' });
afterEach(cleanupLoops);

describe('copyDevice', () => {
  it('copies every byte and reports progress', async () => {
    const from = makeLoopDisk(24);
    const to = makeLoopDisk(24);
    const data = randomBytes(24 << 20);
    const fd = openSync(from.device, 'r+');
    writeSync(fd, data, 0, data.length, 0);
    closeSync(fd);
    const progress: HostProgress[] = [];
    await new LinuxHost({ log }).copyDevice(from.device, to.device, (p) => progress.push(p));
    expect(readFileSync(to.device).equals(data)).toBe(true);
    expect(progress.at(-1)).toEqual({ doneBytes: 24 << 20, totalBytes: 24 << 20 });
    expect(progress.length).toBeGreaterThanOrEqual(1);
  });

  it('refuses a destination smaller than the source', async () => {
    const from = makeLoopDisk(8);
    const to = makeLoopDisk(4);
    await expect(new LinuxHost({ log }).copyDevice(from.device, to.device)).rejects.toThrow(
      `cannot copy ${from.device} (${8 << 20} bytes) onto ${to.device}: it holds only ${4 << 20} bytes; use a destination at least as large`,
    );
  });
});
