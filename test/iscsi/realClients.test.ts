/**
 * `arraylab serve --iscsi` against the initiators users run: libiscsi's iscsi-ls, iscsi-inq and
 * iscsi-readcapacity16, qemu-img / qemu-io with iscsi:// URLs. Discovery and LUN sizes, INQUIRY
 * identity matching `arraylab volume show`, a 64 MiB round trip, CHAP one-way and mutual,
 * header digests, one volume over NBD and iSCSI at once, and host affinity.
 *
 * Data digests are not tested here: libiscsi (and so qemu) only ever offers DataDigest=None.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import {
  chapEnv,
  iscsiPortalOf,
  iscsiUrl,
  parseIscsiLs,
  portalUrl,
  qemuIscsiOpts,
  qemuSecretArgs,
  requireIscsiTool,
  runTool,
  runToolOk,
  type InitiatorChap,
  type Portal,
} from '../support/iscsi.js';
import { requireNbdsh, requireTool } from '../support/tools.js';

const MiB = 1024 * 1024;
const IQN1 = 'iqn.2026-11.lab.arraylab.test:host-one';
const IQN2 = 'iqn.2026-11.lab.arraylab.test:host-two';

function startIscsiLab(config: object): Promise<Arraylab> {
  return startArraylab({ config, extraArgs: ['--iscsi', '127.0.0.1:0'] });
}

/** `iscsi-inq` prints "Key:value" lines (and "Designator:[...]" per designator). */
function inqFields(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([^:]+):(.*)$/.exec(line);
    if (m && !out.has(m[1]!)) out.set(m[1]!, m[2]!);
  }
  return out;
}

/** VPD 0x83 as iscsi-inq prints it: one block per designator. */
function designators(text: string): Array<{ type: string; association: string; value: string }> {
  const out: Array<{ type: string; association: string; value: string }> = [];
  for (const block of text.split(/^DEVICE DESIGNATOR #\d+\n/m).slice(1)) {
    const type = /^Designator Type:\(\d+\) (\S+)/m.exec(block)?.[1] ?? '';
    const association = /^Association:\(\d+\) (\S+)/m.exec(block)?.[1] ?? '';
    // The value runs to the last "]" of the block: binary designators may hold "]" or newlines.
    const start = block.indexOf('Designator:[');
    const end = block.lastIndexOf(']');
    out.push({ type, association, value: start >= 0 && end > start ? block.slice(start + 'Designator:['.length, end) : '' });
  }
  return out;
}

describe('libiscsi and qemu against arraylab serve --iscsi', () => {
  let lab: Arraylab;
  let portal: Portal;
  let work: string;

  beforeAll(async () => {
    for (const tool of ['iscsi-ls', 'iscsi-inq', 'iscsi-readcapacity16']) requireIscsiTool(tool);
    requireTool('qemu-img');
    requireTool('qemu-io');
    work = makeTempDir('arraylab-iscsi-clients-');
    lab = await startIscsiLab({
      volumes: [
        { name: 'clients', size: '64MiB', blockSize: 512 },
        { name: 'clients4k', size: '32MiB', blockSize: 4096 },
      ],
    });
    portal = iscsiPortalOf(lab);
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it('iscsi-ls -s discovers the target at the portal and lists each volume at its LUN', async () => {
    const out = await runToolOk('iscsi-ls', ['-s', portalUrl(portal)]);
    const targets = parseIscsiLs(out);
    expect(targets.map((t) => [t.targetName, t.portal])).toEqual([[portal.targetName, `${portal.host}:${portal.port},1`]]);
    const luns = targets[0]!.luns;
    expect([...luns.keys()]).toEqual([0, 1]); // a fresh array numbers volumes in creation order
    expect([...luns.values()].map((l) => l.type)).toEqual(['DIRECT_ACCESS', 'DIRECT_ACCESS']);
    expect(luns.get(0)!.sizeText).toMatch(/^6[34]M$/);
    expect(luns.get(1)!.sizeText).toMatch(/^3[12]M$/);
  });

  it('READ CAPACITY(16) gives each volume its exact size and block length', async () => {
    for (const [lun, name] of [
      [0, 'clients'],
      [1, 'clients4k'],
    ] as const) {
      const vol = await cliJson(lab, ['volume', 'show', name]);
      const out = await runToolOk('iscsi-readcapacity16', [iscsiUrl(portal, lun)]);
      expect(Number(/^LOGICAL BLOCK LENGTH IN BYTES:(\d+)/m.exec(out)?.[1]), out).toBe(vol.blockSize);
      expect(Number(/^Total size:(\d+)/m.exec(out)?.[1]), out).toBe(vol.sizeBytes);
    }
  });

  it('iscsi-inq: standard INQUIRY and VPD 0x80/0x83 match arraylab volume show', async () => {
    const vol = await cliJson(lab, ['volume', 'show', 'clients']);
    const url = iscsiUrl(portal, 0);

    const std = inqFields(await runToolOk('iscsi-inq', [url]));
    expect(std.get('Peripheral Device Type')).toBe('DIRECT_ACCESS');
    expect(std.get('Vendor')?.trim()).toBe('ARRAYLAB');
    expect(std.get('Product')?.trim()).toBe('VOLUME');
    expect(std.get('CmdQue')).toBe('1');

    const pages = await runToolOk('iscsi-inq', ['-e', '1', '-c', '0', url]);
    expect(pages).toContain('Page:0x80 UNIT_SERIAL_NUMBER');
    expect(pages).toContain('Page:0x83 DEVICE_IDENTIFICATION');

    const serial = await runToolOk('iscsi-inq', ['-e', '1', '-c', String(0x80), url]);
    expect(/^Unit Serial Number:\[(.*)\]$/m.exec(serial)?.[1]).toBe(vol.serial);

    // latin1 keeps the NAA designator's raw bytes (iscsi-inq prints them as they are).
    const ids = designators((await runTool('iscsi-inq', ['-e', '1', '-c', String(0x83), url], { encoding: 'latin1' })).stdout);
    const naa = ids.find((d) => d.type === 'NAA' && d.association === 'LOGICAL_UNIT');
    expect(naa, JSON.stringify(ids)).toBeDefined();
    // printf("%s") stops at a zero byte: compare what it printed with the WWN up to its first zero byte.
    const wwn = Buffer.from(String(vol.wwn), 'hex');
    const zero = wwn.indexOf(0);
    expect(Buffer.from(naa!.value, 'latin1').toString('hex')).toBe(wwn.subarray(0, zero < 0 ? wwn.length : zero).toString('hex'));
    expect(ids.some((d) => d.type === 'SCSI_NAME_STRING' && d.association === 'TARGET_DEVICE' && d.value === portal.targetName)).toBe(true);
  });

  it('qemu-img convert writes a random 64 MiB image over iscsi:// and qemu-img compare reads it back', async () => {
    const src = join(work, 'random.raw');
    writeFileSync(src, randomBytes(64 * MiB));
    const url = iscsiUrl(portal, 0);
    await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, url], { timeoutMs: 300_000 });
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, url], { timeoutMs: 300_000 });
    expect(cmp.code, cmp.output).toBe(0);
    expect(cmp.stdout).toContain('Images are identical');
    // And a change is seen: compare must notice one flipped sector.
    await runToolOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 32M 512', url]);
    const differ = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, url], { timeoutMs: 300_000 });
    expect(differ.code, differ.output).toBe(1);
    expect(differ.stdout).toMatch(/Content mismatch at offset 33554432/);
  });

  it('header digest CRC32C: qemu and libiscsi log in with it and move data intact', async () => {
    const pattern = 0xc3;
    // LUN 0 (512-byte blocks): Debian's qemu 7.2 aborts reading a thin 4096-byte LUN it has not
    // written yet (iscsi_co_block_status asks for 512 bytes), digest or not.
    const opts = qemuIscsiOpts(portal, 0, { headerDigest: 'crc32c', initiatorName: 'iqn.2026-11.lab.arraylab.test:digest' });
    await runToolOk('qemu-io', ['--image-opts', '-c', `write -P ${pattern} 1M 4M`, '-c', `read -P ${pattern} 1M 4M`, opts]);
    // A second client, libiscsi's own URL argument, reads what the first wrote.
    const inq = await runTool('iscsi-inq', [iscsiUrl(portal, 0, { headerDigest: 'crc32c' })]);
    expect(inq.code, inq.output).toBe(0);
    await runToolOk('qemu-io', ['--image-opts', '-c', `read -P ${pattern} 1M 4M`, qemuIscsiOpts(portal, 0, { headerDigest: 'crc32c' })]);
    // Without the option qemu offers no digest: the target's login records must tell the two apart.
    await runToolOk('qemu-io', [
      '--image-opts',
      '-c',
      'read 0 4k',
      qemuIscsiOpts(portal, 0, { headerDigest: 'none', initiatorName: 'iqn.2026-11.lab.arraylab.test:no-digest' }),
    ]);
    const digestOf = (initiator: string): unknown[] =>
      lab
        .logs()
        .split('\n')
        .filter((l) => l.includes('"initiator logged in"'))
        .map((l) => JSON.parse(l) as { initiator?: string; headerDigest?: unknown })
        .filter((rec) => rec.initiator === initiator)
        .map((rec) => rec.headerDigest);
    const isCrc = (v: unknown) => v === true || (typeof v === 'string' && v.toUpperCase() === 'CRC32C');
    const withDigest = digestOf('iqn.2026-11.lab.arraylab.test:digest');
    expect(withDigest.length, lab.logs().slice(-2000)).toBeGreaterThan(0);
    expect(withDigest.every(isCrc), JSON.stringify(withDigest)).toBe(true);
    const without = digestOf('iqn.2026-11.lab.arraylab.test:no-digest');
    expect(without.length).toBeGreaterThan(0);
    expect(without.some(isCrc), JSON.stringify(without)).toBe(false);
  });

  it('one volume over NBD and iSCSI at once: each protocol reads what the other wrote', async () => {
    const python = requireNbdsh();
    // An NBD client stays connected while qemu-io writes and reads over iSCSI: no stale view on either side.
    const script = `
import nbd, subprocess, sys
nbd_uri, iscsi_url = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(nbd_uri)
def qio(cmd):
    subprocess.run(['qemu-io', '-f', 'raw', '-c', cmd, iscsi_url], check=True, stdout=subprocess.DEVNULL)
qio('write -P 0xa7 2M 1M')
assert h.pread(1024 * 1024, 2 * 1024 * 1024) == b'\\xa7' * (1024 * 1024), 'NBD did not see the iSCSI write'
h.pwrite(b'\\x3c' * (1024 * 1024), 6 * 1024 * 1024)
h.flush()
qio('read -P 0x3c 6M 1M')
r = subprocess.run(['qemu-io', '-f', 'raw', '-c', 'read -P 0x00 6M 1M', iscsi_url], capture_output=True, text=True)
assert 'Pattern verification failed' in r.stdout + r.stderr, 'iSCSI read did not see the NBD write'
h.shutdown()
print('ok')
`;
    const out = execFileSync(python, ['-c', script, lab.nbdUri('clients'), iscsiUrl(portal, 0)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(out.trim()).toBe('ok');
  });
});

describe('CHAP', () => {
  const oneWay: InitiatorChap = { username: 'labinitiator', secret: 'initiator-secret-1' };
  const mutual: InitiatorChap = { ...oneWay, targetUsername: 'labtarget', targetSecret: 'target-secret-22' };

  it('one-way: the right secret logs in (libiscsi and qemu), a wrong or missing one is refused clearly', async () => {
    const lab = await startIscsiLab({ volumes: [{ name: 'chap', size: '16MiB' }], iscsi: { chap: { username: oneWay.username, secret: oneWay.secret } } });
    try {
      const portal = iscsiPortalOf(lab);
      const ok = await runTool('iscsi-ls', ['-s', portalUrl(portal, oneWay)]);
      expect(ok.code, ok.output).toBe(0);
      expect(parseIscsiLs(ok.stdout)[0]?.luns.has(0)).toBe(true);
      expect((await runTool('iscsi-inq', [iscsiUrl(portal, 0, { chap: oneWay })])).code).toBe(0);

      const wrong = await runTool('iscsi-inq', [iscsiUrl(portal, 0, { chap: { ...oneWay, secret: 'not-the-secret' } })]);
      expect(wrong.code).not.toBe(0);
      expect(wrong.output).toMatch(/auth/i); // libiscsi names the refusal: "Authentication failure"
      const none = await runTool('iscsi-inq', [iscsiUrl(portal, 0)]);
      expect(none.code).not.toBe(0);
      expect(none.output).toMatch(/auth|login/i);

      // qemu: user= and a secret object.
      const dir = makeTempDir('arraylab-iscsi-chap-');
      const info = await runTool('qemu-img', [
        'info',
        '--output=json',
        ...qemuSecretArgs('chap0', oneWay.secret, dir),
        '--image-opts',
        qemuIscsiOpts(portal, 0, { user: oneWay.username, passwordSecretId: 'chap0' }),
      ]);
      expect(info.code, info.output).toBe(0);
      expect(JSON.parse(info.stdout)['virtual-size']).toBe(16 * MiB);
      const bad = await runTool('qemu-img', [
        'info',
        ...qemuSecretArgs('chap1', 'wrong-secret-99', dir),
        '--image-opts',
        qemuIscsiOpts(portal, 0, { user: oneWay.username, passwordSecretId: 'chap1' }),
      ]);
      expect(bad.code).not.toBe(0);
      expect(bad.output).toMatch(/auth|login/i);
      // The refusal is logged by the target with the user name, never the secret.
      expect(lab.logs()).toContain(oneWay.username);
      expect(lab.logs()).not.toContain(oneWay.secret);
    } finally {
      await lab.stop();
    }
  });

  it('mutual: the initiator checks the target too, and refuses a target that proves the wrong secret', async () => {
    const lab = await startIscsiLab({
      volumes: [{ name: 'chap', size: '16MiB' }],
      iscsi: { chap: { username: mutual.username, secret: mutual.secret, mutualUsername: mutual.targetUsername, mutualSecret: mutual.targetSecret } },
    });
    try {
      const portal = iscsiPortalOf(lab);
      const ok = await runTool('iscsi-inq', [iscsiUrl(portal, 0, { chap: mutual })]);
      expect(ok.code, ok.output).toBe(0);
      expect(ok.stdout).toContain('Vendor:ARRAYLAB');
      // The same through libiscsi's environment variables.
      const viaEnv = await runTool('iscsi-ls', ['-s', portalUrl(portal)], { env: chapEnv(mutual) });
      expect(viaEnv.code, viaEnv.output).toBe(0);
      expect(parseIscsiLs(viaEnv.stdout)[0]?.targetName).toBe(portal.targetName);

      // The initiator expects another target secret: the target's answer does not verify.
      const wrongTarget = await runTool('iscsi-inq', [iscsiUrl(portal, 0, { chap: { ...mutual, targetSecret: 'other-target-secret' } })]);
      expect(wrongTarget.code).not.toBe(0);
      expect(wrongTarget.output).toMatch(/auth|chap|login/i);
      expect(lab.logs()).not.toContain(mutual.targetSecret!);
    } finally {
      await lab.stop();
    }
  });
});

describe('host affinity', () => {
  it('an initiator sees the LUNs mapped to its host, another initiator sees none', async () => {
    const lab = await startIscsiLab({
      volumes: [
        { name: 'mapped', size: '16MiB' },
        { name: 'other', size: '8MiB' },
      ],
    });
    try {
      const portal = iscsiPortalOf(lab);
      await cliOk(lab, ['host', 'add', 'h1', '--initiator', IQN1]);
      await cliOk(lab, ['host', 'map', 'h1', 'mapped', '--lun', '3']);

      const one = parseIscsiLs(await runToolOk('iscsi-ls', ['-s', '-i', IQN1, portalUrl(portal)]));
      expect(one.map((t) => t.targetName)).toEqual([portal.targetName]);
      expect([...one[0]!.luns.keys()]).toEqual([3]);
      const cap = await runToolOk('iscsi-readcapacity16', ['-i', IQN1, iscsiUrl(portal, 3)]);
      expect(Number(/^Total size:(\d+)/m.exec(cap)?.[1]), cap).toBe(16 * MiB);

      const two = parseIscsiLs((await runTool('iscsi-ls', ['-s', '-i', IQN2, portalUrl(portal)])).stdout);
      expect(two.flatMap((t) => [...t.luns.keys()])).toEqual([]);
      const denied = await runTool('iscsi-inq', ['-i', IQN2, iscsiUrl(portal, 3)]);
      expect(denied.code).not.toBe(0);
    } finally {
      await lab.stop();
    }
  });
});
