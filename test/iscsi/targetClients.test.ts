/**
 * The iSCSI target against real initiators: libiscsi's iscsi-ls / iscsi-inq and qemu-img with
 * iscsi:// URLs (discovery, LUN listing, VPD, a 64 MiB round trip, CHAP, digests).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireTool } from '../support/tools.js';
import { startTarget, TARGET_IQN, type TargetFixture } from '../support/iscsiTestInitiator.js';

const pexec = promisify(execFile);
const MiB = 1024 * 1024;

/** Runs a client tool without blocking the event loop (the target runs in this process). */
async function run(tool: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ code: number; out: string }> {
  const path = requireTool(tool);
  try {
    const r = await pexec(path, args, { encoding: 'utf8', timeout: 60_000, env: env ? { ...process.env, ...env } : process.env });
    return { code: 0, out: r.stdout + r.stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string; message: string };
    return { code: typeof err.code === 'number' ? err.code : 1, out: `${err.stdout ?? ''}${err.stderr ?? ''}${err.message}` };
  }
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'iscsi-target-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('discovery and inquiry with libiscsi tools', () => {
  let f: TargetFixture;
  beforeAll(async () => {
    f = await startTarget({
      exports: [
        { name: 'vol0', size: 64 * MiB },
        { name: 'vol1', size: 8 * MiB, blockSize: 4096 },
      ],
    });
  });
  afterAll(() => f.close());

  it('iscsi-ls -s lists the target, its portal and both LUNs with their sizes', async () => {
    const r = await run('iscsi-ls', ['-s', `iscsi://127.0.0.1:${f.port}`]);
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain(`Target:${TARGET_IQN} Portal:127.0.0.1:${f.port},1`);
    expect(r.out).toMatch(/Lun:0\s+Type:DIRECT_ACCESS \(Size:6\dM\)/);
    expect(r.out).toMatch(/Lun:1\s+Type:DIRECT_ACCESS \(Size:\dM\)/);
    const logins = f.logger.find('info', 'initiator logged in');
    expect(logins.some((l) => l.fields.sessionType === 'Discovery')).toBe(true);
  });

  it('iscsi-inq reads the supported VPD pages and the device identification', async () => {
    const pages = await run('iscsi-inq', ['-e', '1', '-c', '0', f.url(0)]);
    expect(pages.code, pages.out).toBe(0);
    expect(pages.out).toContain('Page:0x83 DEVICE_IDENTIFICATION');
    const std = await run('iscsi-inq', [f.url(1)]);
    expect(std.code, std.out).toBe(0);
    expect(std.out).toContain('ARRAYLAB');
  });

  it('an initiator allowed no LUNs logs in and sees none', async () => {
    f.affinity.set('iqn.2026-11.lab.arraylab:nobody', []);
    const r = await run('iscsi-ls', ['-s', '-i', 'iqn.2026-11.lab.arraylab:nobody', `iscsi://127.0.0.1:${f.port}`]);
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain(`Target:${TARGET_IQN}`);
    expect(r.out).not.toContain('Lun:');
  });
});

describe('qemu-img over iscsi://', () => {
  let f: TargetFixture;
  beforeAll(async () => {
    f = await startTarget({
      exports: [
        { name: 'vol0', size: 64 * MiB },
        { name: 'small', size: 4 * MiB },
      ],
    });
  });
  afterAll(() => f.close());

  it('writes a random 64 MiB image, reads it back identical, and closes every handle', async () => {
    const img = join(dir, 'random.img');
    writeFileSync(img, randomBytes(64 * MiB));
    const w = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, f.url(0)]);
    expect(w.code, w.out).toBe(0);
    const c = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, f.url(0)]);
    expect(c.code, c.out).toBe(0);
    expect(c.out).toContain('Images are identical');
    // The data really is in the export, not just echoed.
    const back = Buffer.alloc(4096);
    await f.provider.store('vol0').read(32 * MiB, back);
    const { readFileSync } = await import('node:fs');
    expect(back.equals(readFileSync(img).subarray(32 * MiB, 32 * MiB + 4096))).toBe(true);
    expect(f.provider.openCount).toBe(0);
    expect(f.provider.allClosedOnce).toBe(true);
  });

  it('works with header and data digests (CRC32C) negotiated', async () => {
    const img = join(dir, 'digest.img');
    writeFileSync(img, randomBytes(4 * MiB));
    const url = `json:{"file.driver":"iscsi","file.transport":"tcp","file.portal":"127.0.0.1:${f.port}","file.target":"${TARGET_IQN}","file.lun":1,"file.header-digest":"crc32c"}`;
    const w = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, url]);
    expect(w.code, w.out).toBe(0);
    const c = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, url]);
    expect(c.out).toContain('Images are identical');
    const digested = f.logger.find('info', 'initiator logged in').filter((l) => l.fields.headerDigest === true);
    expect(digested.length).toBeGreaterThanOrEqual(2);
  });
});

describe('CHAP', () => {
  let f: TargetFixture;
  beforeAll(async () => {
    f = await startTarget({ exports: [{ name: 'vol0', size: 8 * MiB }], auth: { initiator: { username: 'alice', secret: 'wonderland-12' } } });
  });
  afterAll(() => f.close());

  it('admits the right secret (libiscsi user%secret URL) and refuses a wrong one, logging why', async () => {
    const ok = await run('iscsi-inq', [`iscsi://alice%wonderland-12@127.0.0.1:${f.port}/${TARGET_IQN}/0`]);
    expect(ok.code, ok.out).toBe(0);
    expect(ok.out).toContain('ARRAYLAB');
    const bad = await run('iscsi-inq', [`iscsi://alice%not-the-secret@127.0.0.1:${f.port}/${TARGET_IQN}/0`]);
    expect(bad.code).not.toBe(0);
    const refused = f.logger.find('warn', 'login refused');
    expect(refused.some((r) => r.fields.status === '0x0201' && String(r.fields.reason).includes('alice'))).toBe(true);
    const none = await run('iscsi-inq', [`iscsi://127.0.0.1:${f.port}/${TARGET_IQN}/0`]);
    expect(none.code).not.toBe(0);
  });

  it('qemu-img reads through CHAP', async () => {
    const r = await run('qemu-img', ['info', `iscsi://alice%wonderland-12@127.0.0.1:${f.port}/${TARGET_IQN}/0`]);
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain('virtual size: 8 MiB');
  });
});
