/**
 * Copy sessions as iSCSI initiators see them: an EC destination that is still copying answers
 * NOT READY to every I/O (hosts may not use it yet), is readable but write protected (DATA
 * PROTECT) once equivalent, and a volume being copied by OPC reads its own current data, while
 * the OPC destination already reads the point-in-time image over iSCSI.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { iscsiPortalOf, iscsiUrl, runTool, type Portal } from '../support/iscsi.js';
import { requireTool } from '../support/tools.js';
import { until } from '../support/wait.js';

const MiB = 1024 * 1024;

describe('copy sessions over iSCSI', () => {
  let lab: Arraylab;
  let portal: Portal;
  let work: string;
  const lunOf = new Map<string, number>();

  beforeAll(async () => {
    requireTool('qemu-io');
    requireTool('qemu-img');
    work = makeTempDir('arraylab-iscsi-copy-');
    lab = await startArraylab({
      config: { volumes: ['src', 'dst', 'osrc', 'odst'].map((name) => ({ name, size: '16MiB', blockSize: 512 })) },
    });
    portal = iscsiPortalOf(lab);
    const hosts = await cliJson(lab, ['host', 'list']);
    const defaults = (hosts.defaultLuns ?? hosts.luns) as Array<{ lun: number; volume: string }> | undefined;
    if (defaults !== undefined) for (const d of defaults) lunOf.set(d.volume, d.lun);
    for (const name of ['src', 'dst', 'osrc', 'odst']) {
      if (!lunOf.has(name)) {
        const v = await cliJson(lab, ['volume', 'show', name]);
        lunOf.set(name, v.defaultLun as number);
      }
    }
  }, 60_000);

  afterAll(async () => {
    await lab?.stop();
  });

  const url = (vol: string) => iscsiUrl(portal, lunOf.get(vol)!);
  const io = (vol: string, cmd: string, readOnly = false) => runTool('qemu-io', ['-f', 'raw', ...(readOnly ? ['-r'] : []), '-c', cmd, url(vol)]);

  it('an EC destination answers NOT READY while copying, and is read-only once equivalent', async () => {
    const session = await cliJson(lab, ['copy', 'start', '--type', 'ec', '--src', 'src', '--dst', 'dst', '--rate', '0']);
    expect(session.state).toBe('copying');
    const r = await io('dst', 'read 0 4k', true);
    expect(r.stdout).toMatch(/read failed/);
    expect(r.stderr).toMatch(/SENSE KEY:NOT READY\(2\) ASCQ:\(null\)\(0x0403\)/); // LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED
    expect(lab.logs()).toMatch(/iSCSI session sees a volume hosts may not use yet/);

    await cliJson(lab, ['copy', 'cancel', session.id as string]);
    const again = await cliJson(lab, ['copy', 'start', '--type', 'ec', '--src', 'src', '--dst', 'dst']);
    await until('equivalent', async () => (await cliJson(lab, ['copy', 'show', again.id as string])).state === 'equivalent', { timeoutMs: 30_000 });
    const read = await io('dst', 'read 0 4k', true);
    expect(read.stdout).toMatch(/read 4096\/4096 bytes/);
    // The LUN reports write protection (MODE SENSE WP), so qemu refuses to open it read-write.
    const write = await io('dst', 'write -P 0x5a 0 4k');
    expect(write.stdout).not.toMatch(/wrote 4096\/4096 bytes/);
    expect(write.stderr).toMatch(/write protected/i);
    await cliJson(lab, ['copy', 'cancel', again.id as string]);
  }, 120_000);

  it('an OPC destination reads the point-in-time image over iSCSI while the source changes', async () => {
    const before = randomBytes(16 * MiB);
    const file = join(work, 'before.raw');
    writeFileSync(file, before);
    const conv = await runTool('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', file, url('osrc')]);
    expect(conv.code, conv.stderr).toBe(0);
    const s = await cliJson(lab, ['copy', 'start', '--type', 'opc', '--src', 'osrc', '--dst', 'odst', '--rate', '0']);
    expect(s.state).toBe('copying');
    const w = await io('osrc', 'write -P 0x11 0 1M');
    expect(w.stdout).toMatch(/wrote 1048576\/1048576 bytes/);
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, url('odst')]);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
    const src = await io('osrc', 'read -P 0x11 0 1M');
    expect(src.stdout).toMatch(/read 1048576\/1048576 bytes/);
    expect(src.stdout + src.stderr).not.toMatch(/Pattern verification failed/);
    await cliJson(lab, ['copy', 'cancel', s.id as string]);
  }, 120_000);
});
