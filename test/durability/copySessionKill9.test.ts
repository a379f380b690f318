/**
 * Copy sessions survive a kill -9 of the array: a child process runs StorageArray (from dist/,
 * file backend) with a rate-limited OPC whose source is being overwritten, and is killed; the
 * array reopened here has the session, its bitmap and the exact point-in-time image. (The rest
 * of the array's copy wiring, in process: test/array/copyWiring.test.ts.)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../emulator/block/BlockDevice.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { makeTempDir, REPO_ROOT as repoRoot } from '../support/arraylab.js';

const logger = pino({ level: 'silent' });
const SIZE = 4 * 1024 * 1024;
const UNIT = 64 * 1024;

async function readAll(d: BlockDevice): Promise<Buffer> {
  const b = Buffer.alloc(SIZE);
  await d.read(0, b);
  return b;
}

describe('StorageArray copy sessions (file backend) and kill -9', () => {
  it('kill -9 during a rate-limited OPC: the session, bitmap and image survive', async () => {
    const compiled = path.join(repoRoot, 'dist/emulator/array/StorageArray.js');
    expect(fs.existsSync(compiled), `${compiled} is missing: run npm run build first`).toBe(true);
    const dir = path.join(makeTempDir('arraylab-copykill9-'), 'data');
    const script = `
      import { pathToFileURL } from 'node:url';
      const { StorageArray } = await import(pathToFileURL(process.argv[1]).href);
      const { pino } = await import('pino');
      const a = await StorageArray.open({ backend: 'file', dataDir: process.argv[2], logger: pino({ level: 'silent' }) });
      await a.createVolume({ name: 'src', sizeBytes: ${SIZE} });
      await a.createVolume({ name: 'dst', sizeBytes: ${SIZE} });
      const h = a.openExport('src', { protocol: 'nbd', connectionId: 'k', remoteAddress: 'x', readOnly: false });
      for (let u = 0; u < ${SIZE / UNIT}; u++) await h.device.write(u * ${UNIT}, Buffer.alloc(${UNIT}, (u + 5) & 0xff));
      await h.device.flush();
      const s = await a.startCopy({ type: 'opc', source: 'src', destination: 'dst', rate: ${UNIT * 20} });
      // Overwrite the source while the copy runs: every overwrite is copy-on-write first.
      for (let i = 0; i < 40; i++) {
        const u = (i * 7) % ${SIZE / UNIT};
        await h.device.write(u * ${UNIT}, Buffer.alloc(${UNIT}, 0xf0 + (i % 8)));
        await new Promise((r) => setTimeout(r, 5));
      }
      process.stdout.write('ready ' + s.id + '\\n');
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, compiled, dir], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const id = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        const m = /ready (\S+)\n/.exec(out);
        if (m) resolve(m[1]!);
      });
      child.on('exit', (code) => reject(new Error(`child exited ${code}: ${stderr}`)));
    });
    await new Promise((r) => setTimeout(r, 150)); // let the background copy run on a little
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));

    const a = await StorageArray.open({ backend: 'file', dataDir: dir, logger, copyClock: 'manual' });
    try {
      const sessions = a.listCopies();
      // The copy runs at 20 units/s: 64 units take over 3 s, so the session is still there.
      expect(sessions.map((s) => s.id)).toEqual([id]);
      const info = a.getCopy(id);
      expect(info.state).toBe('copying');
      expect(info.copiedBlocks).toBeGreaterThan(0);
      expect(info.copiedBlocks).toBeLessThan(64);
      const d = a.openExport('dst', { protocol: 'nbd', connectionId: 'check', remoteAddress: '127.0.0.1:5000', readOnly: true })!;
      const want = Buffer.concat(Array.from({ length: SIZE / UNIT }, (_, u) => Buffer.alloc(UNIT, (u + 5) & 0xff)));
      expect((await readAll(d.device)).equals(want)).toBe(true);
      // And after the copy finishes on its own the image is still exact.
      await a.setCopyRate(id, Number.POSITIVE_INFINITY);
      while ((await a.copy.step(16)) > 0);
      expect(a.listCopies()).toEqual([]);
      expect((await readAll(d.device)).equals(want)).toBe(true);
      d.close();
    } finally {
      await a.close();
    }
  }, 30_000);
});
