/**
 * Host credentials with real peers: `arraylab host set` through the real CLI, then libiscsi
 * (iscsi-ls, iscsi-inq) and qemu-img logging in with a host's CHAP (allowed), a wrong secret or
 * the global one (refused), an initiator of a host without CHAP on the global iscsi.chap; the
 * PSK key printed once; MD5 CHAP refused by an in-process target that accepts only SHA-256
 * (libiscsi offers MD5 alone, so it cannot log in).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHAP_SHA256 } from '../../emulator/iscsi/chap.js';
import { cliJson, cliOk, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { iscsiPortalOf, iscsiUrl, portalUrl, qemuIscsiOpts, qemuSecretArgs, runTool, type Portal } from '../support/iscsi.js';
import { startTarget, TARGET_IQN } from '../support/iscsiTestInitiator.js';

const MiB = 1024 * 1024;
const WEB = 'iqn.1994-05.com.redhat:web1';
const DB = 'iqn.1994-05.com.redhat:db1';
const GLOBAL = { username: 'lab', secret: 'lab-global-secret' };
const WEB_CHAP = { username: 'webuser', secret: 'web-host-secret1' };

describe('per-host CHAP with libiscsi and qemu', () => {
  let lab: Arraylab;
  let portal: Portal;
  let dir: string;

  beforeAll(async () => {
    lab = await startArraylab({
      config: {
        iscsi: { chap: GLOBAL },
        volumes: [
          { name: 'webvol', size: '4MiB' },
          { name: 'dbvol', size: '2MiB' },
        ],
      },
      extraArgs: ['--iscsi', '127.0.0.1:0'],
    });
    portal = iscsiPortalOf(lab);
    dir = makeTempDir('arraylab-hostchap-');
    await cliOk(lab, ['host', 'add', 'web', '--initiator', WEB]);
    await cliOk(lab, ['host', 'map', 'web', 'webvol']);
    await cliOk(lab, ['host', 'add', 'db', '--initiator', DB]);
    await cliOk(lab, ['host', 'map', 'db', 'dbvol']);
    const secretFile = join(dir, 'web.chap');
    writeFileSync(secretFile, `${WEB_CHAP.secret}\n`, { mode: 0o600 });
    expect(await cliOk(lab, ['host', 'set', 'web', '--chap-user', WEB_CHAP.username, '--chap-secret-file', secretFile])).toBe(
      `set credentials of host web: CHAP user ${WEB_CHAP.username}\n`,
    );
  });
  afterAll(async () => {
    await lab?.stop();
  });

  const ls = (initiator: string, chap?: { username: string; secret: string }) => runTool('iscsi-ls', ['-s', '-i', initiator, portalUrl(portal, chap)]);
  const inq = (initiator: string, chap?: { username: string; secret: string }) =>
    runTool('iscsi-inq', ['-i', initiator, iscsiUrl(portal, 0, chap ? { chap } : {})]);

  it("lets the host's initiator in with the host's CHAP only", async () => {
    const ok = await ls(WEB, WEB_CHAP);
    expect(ok.code, ok.output).toBe(0);
    expect(ok.stdout).toMatch(/^Lun:0\s+Type:DIRECT_ACCESS/m);
    expect((await inq(WEB, WEB_CHAP)).code).toBe(0);
    for (const [what, chap] of [
      ['a wrong secret', { ...WEB_CHAP, secret: 'not-the-secret-9' }],
      ['the global CHAP', GLOBAL],
      ['no CHAP', undefined],
    ] as const) {
      const r = await inq(WEB, chap);
      expect(r.code, `${what}: ${r.output}`).not.toBe(0);
      expect(r.output).toMatch(/auth|login/i);
    }
    // The target says whose CHAP failed; never a secret.
    expect(lab.logs()).toMatch(/CHAP of host web/);
    expect(lab.logs()).not.toContain(WEB_CHAP.secret);
  });

  it('an initiator of a host without CHAP logs in with the global iscsi.chap, not with the other host CHAP', async () => {
    const ok = await ls(DB, GLOBAL);
    expect(ok.code, ok.output).toBe(0);
    expect(ok.stdout).toMatch(/^Lun:0\s+Type:DIRECT_ACCESS/m);
    expect((await inq(DB, WEB_CHAP)).code).not.toBe(0);
    expect((await inq(DB)).code).not.toBe(0);
  });

  it('qemu-img opens the volume with the host CHAP and is refused with a wrong secret', async () => {
    const info = await runTool('qemu-img', [
      'info',
      '--output=json',
      ...qemuSecretArgs('webchap', WEB_CHAP.secret, dir),
      '--image-opts',
      qemuIscsiOpts(portal, 0, { initiatorName: WEB, user: WEB_CHAP.username, passwordSecretId: 'webchap' }),
    ]);
    expect(info.code, info.output).toBe(0);
    expect(JSON.parse(info.stdout)['virtual-size']).toBe(4 * MiB);
    const bad = await runTool('qemu-img', [
      'info',
      ...qemuSecretArgs('wrongchap', 'wrong-secret-999', dir),
      '--image-opts',
      qemuIscsiOpts(portal, 0, { initiatorName: WEB, user: WEB_CHAP.username, passwordSecretId: 'wrongchap' }),
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.output).toMatch(/auth|login/i);
  });

  it('host show names the CHAP user, never the secret; --clear-chap hands the host back to iscsi.chap', async () => {
    const show = await cliOk(lab, ['host', 'show', 'web']);
    expect(show).toMatch(/^credentials:\s+CHAP user webuser$/m);
    expect(show).not.toContain(WEB_CHAP.secret);
    const json = JSON.stringify(await cliJson(lab, ['host', 'show', 'web']));
    expect(json).toContain('"chapUser":"webuser"');
    expect(json).not.toContain(WEB_CHAP.secret);
    expect(await cliOk(lab, ['audit', '--json'])).not.toContain(WEB_CHAP.secret);
    expect(await cliOk(lab, ['host', 'list'])).toMatch(/^web\s+iqn\.1994-05\.com\.redhat:web1\s+1\s+\d+\s+chap$/m);
    await cliOk(lab, ['host', 'set', 'web', '--clear-chap']);
    expect((await inq(WEB, GLOBAL)).code).toBe(0);
    expect((await inq(WEB, WEB_CHAP)).code).not.toBe(0);
  });

  it('refuses a CHAP secret on the command line, a short one, and half of mutual CHAP, naming the fix', async () => {
    const short = join(dir, 'short.chap');
    writeFileSync(short, 'short\n', { mode: 0o600 });
    let r = await lab.cli(['host', 'set', 'web', '--chap-user', 'u', '--chap-secret', 'web-host-secret1']);
    expect(r.code).toBe(2);
    r = await lab.cli(['host', 'set', 'web', '--chap-user', 'u', '--chap-secret-file', short]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/CHAP secret .* is 5 bytes; a CHAP secret needs at least 12 bytes/);
    r = await lab.cli(['host', 'set', 'web', '--chap-user', 'u', '--chap-secret-file', short, '--mutual-user', 'array']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--mutual-user and --mutual-secret-file go together/);
  });
});

describe('NBD identities through the CLI', () => {
  let lab: Arraylab;
  beforeAll(async () => {
    lab = await startArraylab({ config: { volumes: [{ name: 'v', size: '1MiB' }] } });
    await cliOk(lab, ['host', 'add', 'web', '--initiator', WEB]);
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it('prints a new PSK key once, as IDENTITY:HEX; listings show the identity only', async () => {
    const out = await cliOk(lab, ['host', 'set', 'web', '--nbd-psk']);
    const line = /^web:([0-9a-f]{64})$/m.exec(out);
    expect(line, out).not.toBeNull();
    const key = line![1]!;
    expect(out).toMatch(/shown only now/);
    const show = await cliOk(lab, ['host', 'show', 'web']);
    expect(show).toMatch(/NBD PSK identity web/);
    expect(show).not.toContain(key);
    expect(JSON.stringify(await cliJson(lab, ['host', 'list']))).not.toContain(key);
    // A new key under another identity; --json gives the PSK file line too.
    const again = await cliJson(lab, ['host', 'set', 'web', '--nbd-psk', '--nbd-psk-identity', 'web-client']);
    const psk = again.nbdPsk as { identity: string; key: string; pskFileLine: string };
    expect(psk.identity).toBe('web-client');
    expect(psk.pskFileLine).toBe(`web-client:${psk.key}`);
    expect(psk.key).not.toBe(key);
    // The audit log records the calls, never the keys they made.
    const audit = await cliOk(lab, ['audit', '--json']);
    expect(audit).toContain('SetHostCredentials');
    expect(audit).not.toContain(key);
    expect(audit).not.toContain(psk.key);
    expect(lab.logs()).not.toContain(key);
  });

  it('records certificate fingerprints and subjects, and clears them', async () => {
    const fp = 'ab'.repeat(32);
    await cliOk(lab, ['host', 'set', 'web', '--nbd-cert-fingerprint', fp, '--nbd-cert-subject', 'web.lab']);
    const show = await cliOk(lab, ['host', 'show', 'web']);
    expect(show).toContain(`NBD certificate SHA-256 ${'AB:'.repeat(31)}AB`);
    expect(show).toContain('NBD certificate CN web.lab');
    await cliOk(lab, ['host', 'add', 'db', '--initiator', DB]);
    const taken = await lab.cli(['host', 'set', 'db', '--nbd-cert-subject', 'web.lab']);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/certificate subject CN web.lab already identifies host web/);
    const both = await lab.cli(['host', 'set', 'web', '--nbd-psk', '--clear-nbd-psk']);
    expect(both.code).toBe(1);
    expect(both.stderr).toMatch(/host web: the NBD PSK is both set and cleared; give one of them/);
    await cliOk(lab, ['host', 'set', 'web', '--clear-nbd-cert-fingerprint', '--clear-nbd-cert-subject', '--clear-nbd-psk']);
    expect(await cliOk(lab, ['host', 'show', 'web'])).toMatch(/^credentials:\s+none; set some with/m);
  });

  it('removing the last host says that everyone now sees every volume', async () => {
    await cliOk(lab, ['host', 'remove', 'db']);
    expect(await cliOk(lab, ['host', 'remove', 'web'])).toMatch(/no host is left, so host affinity is off: every initiator and NBD client sees every volume/);
  });
});

describe('MD5 CHAP refused', () => {
  it('libiscsi (MD5 only) cannot log in to a target that accepts SHA-256 alone, and the log says why', async () => {
    const t = await startTarget({ auth: { initiator: GLOBAL }, chapAlgorithms: [CHAP_SHA256] });
    try {
      const portal: Portal = { host: '127.0.0.1', port: t.port, targetName: TARGET_IQN };
      const r = await runTool('iscsi-inq', [iscsiUrl(portal, 0, { chap: GLOBAL })]);
      expect(r.code).not.toBe(0);
      expect(r.output).toMatch(/auth|login/i);
      const refused = t.logger.find('warn', 'login refused').map((l) => String(l.fields.reason));
      expect(refused.join('\n')).toMatch(/offers CHAP_A=5 \(MD5\), none of which this target accepts \(SHA-256\); MD5 is refused by iscsi.chapAlgorithms/);
    } finally {
      await t.close();
    }
  });
});
