/**
 * Host affinity as real initiators see it: `arraylab serve` with its iSCSI target, hosts and
 * LUN maps made with the real CLI, and libiscsi's iscsi-ls / iscsi-inq (each a fresh login
 * under the initiator name given with -i) and qemu-storage-daemon (a session that stays).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';

const run = promisify(execFile);
const WEB = 'iqn.1994-05.com.redhat:web1';
const OTHER = 'iqn.1994-05.com.redhat:other';

/** requireTool, naming the package for libiscsi's tools. */
function tool(name: string): string {
  try {
    return requireTool(name);
  } catch {
    const pkg = name.startsWith('iscsi-') ? 'libiscsi-bin' : name === 'qemu-storage-daemon' ? 'qemu-system-common' : '(unknown)';
    throw new Error(`required tool ${name} is not installed; install Debian package ${pkg} (bash .ci/run does)`);
  }
}

interface IscsiInfo {
  host: string;
  port: number;
  targetName: string;
}

describe('host affinity over iSCSI', () => {
  let lab: Arraylab;
  let iscsi: IscsiInfo;
  const serialOf = new Map<string, string>(); // serial -> volume
  const daemons: ChildProcess[] = [];

  beforeAll(async () => {
    tool('iscsi-ls');
    tool('iscsi-inq');
    lab = await startArraylab({
      config: {
        listen: { iscsi: '127.0.0.1:0' },
        iscsi: { targetName: 'iqn.2026-11.lab.arraylab:hosttest' },
        volumes: [
          { name: 'alpha', size: '4MiB' },
          { name: 'beta', size: '8MiB' },
          { name: 'gamma', size: '16MiB' },
        ],
      },
    });
    iscsi = (lab.info as unknown as { iscsi: IscsiInfo }).iscsi;
    for (const v of (await cliJson(lab, ['volume', 'list'])).volumes as Array<{ name: string; serial: string }>) serialOf.set(v.serial, v.name);
  });
  afterAll(async () => {
    for (const d of daemons) d.kill('SIGKILL');
    await lab?.stop();
  });

  const portal = () => `iscsi://127.0.0.1:${iscsi.port}`;

  /** LUN -> volume for what `initiator` sees: iscsi-ls -s lists the LUNs, iscsi-inq reads each one's serial (VPD 0x80). */
  async function seenBy(initiator: string): Promise<Record<number, string>> {
    const { stdout } = await run(tool('iscsi-ls'), ['-s', '-i', initiator, portal()], { timeout: 30_000 });
    expect(stdout).toContain(`Target:${iscsi.targetName} Portal:127.0.0.1:${iscsi.port},1`);
    const out: Record<number, string> = {};
    for (const m of stdout.matchAll(/^Lun:(\d+)\s+Type:(\S+)/gm)) {
      expect(m[2]).toBe('DIRECT_ACCESS');
      const lun = Number(m[1]);
      const inq = await run(tool('iscsi-inq'), ['-i', initiator, '-e', '1', '-c', '128', `${portal()}/${iscsi.targetName}/${lun}`], { timeout: 30_000 });
      const serial = /Unit Serial Number:\[(\w+)\]/.exec(inq.stdout)?.[1];
      expect(serial, inq.stdout).toBeDefined();
      out[lun] = serialOf.get(serial!) ?? `unknown serial ${serial}`;
    }
    return out;
  }

  it('serves iSCSI where serve said, under the configured target name, and status says so', async () => {
    expect(iscsi).toEqual({ host: '127.0.0.1', port: expect.any(Number), targetName: 'iqn.2026-11.lab.arraylab:hosttest' });
    expect(iscsi.port).toBeGreaterThan(0);
    const status = await cliJson(lab, ['status']);
    expect(status).toMatchObject({
      listeners: { iscsi: { available: true, host: '127.0.0.1', port: iscsi.port, note: '' } },
      iscsiTargetName: 'iqn.2026-11.lab.arraylab:hosttest',
    });
    const human = await cliOk(lab, ['status']);
    expect(human).toMatch(new RegExp(`^iscsi:\\s+iscsi://127\\.0\\.0\\.1:${iscsi.port}/  \\(plaintext, open\\)$`, 'm'));
    expect(human).toMatch(/^iscsi target:\s+iqn\.2026-11\.lab\.arraylab:hosttest$/m);
  });

  it('shows every volume to every initiator while no host is defined (the lab default)', async () => {
    const all = { 0: 'alpha', 1: 'beta', 2: 'gamma' };
    expect(await seenBy(WEB)).toEqual(all);
    expect(await seenBy(OTHER)).toEqual(all);
  });

  it('after host add and host map, shows the host exactly its LUNs at the chosen numbers, and another initiator none', async () => {
    await cliOk(lab, ['host', 'add', 'web', '--initiator', WEB]);
    await cliOk(lab, ['host', 'map', 'web', 'gamma', '--lun', '7']);
    await cliOk(lab, ['host', 'map', 'web', 'alpha']); // lowest free: 0
    expect(await seenBy(WEB)).toEqual({ 0: 'alpha', 7: 'gamma' });
    expect(await seenBy(OTHER)).toEqual({});
    // An unmapped LUN is not there for the other initiator either (LOGICAL UNIT NOT SUPPORTED).
    const denied = await run(tool('iscsi-inq'), ['-i', OTHER, `${portal()}/${iscsi.targetName}/0`], { timeout: 30_000 }).then(
      () => undefined,
      (err: { code: number; stdout: string; stderr: string }) => err,
    );
    expect(denied, 'iscsi-inq of an unmapped LUN succeeded').toBeDefined();
    expect(`${denied!.stdout}${denied!.stderr}`).toMatch(/LOGICAL_UNIT_NOT_SUPPORTED/);

    // Changes are seen at the next login: rename follows, unmap removes.
    await cliOk(lab, ['host', 'unmap', 'web', 'alpha']);
    await cliOk(lab, ['volume', 'rename', 'gamma', 'gamma2']);
    expect(await seenBy(WEB)).toEqual({ 7: 'gamma' }); // same volume (serial) at the same LUN
    expect((await cliJson(lab, ['host', 'show', 'web'])).luns).toEqual([{ lun: 7, volume: 'gamma2', volumeUuid: expect.any(String) }]);
  });

  it("lists a logged-in initiator's session under its host", async () => {
    const qsd = spawn(
      tool('qemu-storage-daemon'),
      ['--blockdev', `driver=iscsi,node-name=n0,transport=tcp,portal=127.0.0.1:${iscsi.port},target=${iscsi.targetName},lun=7,initiator-name=${WEB}`],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    daemons.push(qsd);
    let qsdErr = '';
    qsd.stderr!.setEncoding('utf8').on('data', (d: string) => (qsdErr += d));
    try {
      await expect.poll(async () => ((await cliJson(lab, ['host', 'show', 'web'])).sessions as unknown[]).length, { timeout: 20_000, interval: 500 }).toBe(1);
    } catch (err) {
      throw new Error(`no session listed for qemu-storage-daemon's login: ${(err as Error).message}\nqemu-storage-daemon said: ${qsdErr}`);
    }
    const host = await cliJson(lab, ['host', 'show', 'web']);
    expect(host.sessions).toEqual([
      {
        initiatorName: WEB,
        isid: expect.stringMatching(/^[0-9a-f]{12}$/),
        tsih: expect.any(Number),
        connections: 1,
        remoteAddresses: [expect.stringMatching(/^127\.0\.0\.1:\d+$/)],
        luns: [{ lun: 7, volume: 'gamma2' }],
      },
    ]);
    expect(await cliOk(lab, ['host', 'show', 'web'])).toMatch(new RegExp(`^sessions:\\s+${WEB} from 127\\.0\\.0\\.1:\\d+ \\(1 LUN\\)$`, 'm'));
    expect(await cliJson(lab, ['status'])).toMatchObject({ iscsiSessionCount: 1 });
    // Its LUN map changes under it: the session follows (the target re-evaluates at once).
    await cliOk(lab, ['host', 'map', 'web', 'beta', '--lun', '3']);
    await expect
      .poll(async () => ((await cliJson(lab, ['host', 'show', 'web'])).sessions as Array<{ luns: unknown[] }>)[0]?.luns, { timeout: 10_000 })
      .toEqual([
        { lun: 3, volume: 'beta' },
        { lun: 7, volume: 'gamma2' },
      ]);
    qsd.kill('SIGTERM');
    await new Promise((r) => qsd.once('exit', r));
    await expect.poll(async () => (await cliJson(lab, ['status'])).iscsiSessionCount, { timeout: 10_000 }).toBe(0);
  });

  it('falls back to the lab default when the last host is removed', async () => {
    await cliOk(lab, ['host', 'remove', 'web', '--force']);
    expect(await seenBy(OTHER)).toEqual({ 0: 'alpha', 1: 'beta', 2: 'gamma' });
  });
});

describe('serve --require-host-affinity', () => {
  it('shows no initiator anything until it is mapped to its host', async () => {
    const lab = await startArraylab({
      config: { listen: { iscsi: '127.0.0.1:0' }, volumes: [{ name: 'solo', size: '1MiB' }] },
      extraArgs: ['--require-host-affinity'],
    });
    try {
      const { port, targetName } = (lab.info as unknown as { iscsi: IscsiInfo }).iscsi;
      expect(targetName).toMatch(/^iqn\.2026-11\.lab\.arraylab:array-[0-9a-f]{12}$/); // the default: the data directory's array id
      const ls = async (initiator: string) => (await run(tool('iscsi-ls'), ['-s', '-i', initiator, `iscsi://127.0.0.1:${port}`], { timeout: 30_000 })).stdout;
      expect(await ls(WEB)).not.toMatch(/^Lun:/m);
      expect(await cliOk(lab, ['host', 'list'])).toBe(
        'no hosts, and host affinity is required (iscsi.requireHostAffinity): no initiator sees any volume; add one with: arraylab host add NAME --initiator IQN\n',
      );
      await cliOk(lab, ['host', 'add', 'web', '--initiator', WEB]);
      await cliOk(lab, ['host', 'map', 'web', 'solo', '--lun', '2']);
      expect(await ls(WEB)).toMatch(/^Lun:2\s+Type:DIRECT_ACCESS/m);
      expect(await ls(OTHER)).not.toMatch(/^Lun:/m);
      await cliOk(lab, ['host', 'remove', 'web', '--force']);
      expect(await ls(WEB)).not.toMatch(/^Lun:/m); // still required: no fallback
    } finally {
      await lab.stop();
    }
  });
});

describe('iscsi.chap from the config', () => {
  it('refuses initiators without the secret and serves those with it', async () => {
    const lab = await startArraylab({
      config: { listen: { iscsi: '127.0.0.1:0' }, iscsi: { chap: { username: 'lab', secret: 'lab-secret-12' } }, volumes: [{ name: 'a', size: '1MiB' }] },
    });
    try {
      const { port } = (lab.info as unknown as { iscsi: IscsiInfo }).iscsi;
      const ls = (userinfo: string) =>
        run(tool('iscsi-ls'), ['-s', '-i', WEB, `iscsi://${userinfo}127.0.0.1:${port}`], { timeout: 30_000 }).then(
          (r) => ({ code: 0, out: r.stdout + r.stderr }),
          (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, out: err.stdout + err.stderr }),
        );
      for (const userinfo of ['', 'lab%not-the-secret@', 'other%lab-secret-12@']) {
        const r = await ls(userinfo);
        expect(r.code, userinfo).not.toBe(0);
        expect(r.out).toMatch(/Authentication failure/);
      }
      const good = await ls('lab%lab-secret-12@');
      expect(good.code, good.out).toBe(0);
      expect(good.out).toMatch(/^Lun:0\s+Type:DIRECT_ACCESS/m);
    } finally {
      await lab.stop();
    }
  });
});
