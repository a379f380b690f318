/**
 * Tenant isolation end to end, as a training lab uses it: the admin makes tenants a and b and an
 * operator in each; each operator, with its own token only, creates its volume and its host (NBD
 * TLS-PSK key, iSCSI initiator) and maps one to the other. Then real peers: nbdinfo, qemu-img
 * and qemu-io over NBD TLS-PSK, iscsi-ls, iscsi-inq and qemu-io over iSCSI, and the CLI for
 * mapping, copy and tape restore. Data a writes is never read by b's clients, and b's refused
 * copy and restore leave a's volume as a wrote it.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEntryView } from '../../proto/views.js';
import { type Arraylab, type CliResult, cliOk, makeTempDir, startArraylab } from '../support/arraylab.js';
import { iscsiPortalOf, iscsiUrl, type Portal, parseIscsiLs, portalUrl, qemuIscsiOpts, runTool, type ToolResult } from '../support/iscsi.js';
import { requireTool } from '../support/tools.js';

const MiB = 2 ** 20;
type Tenant = 'a' | 'b';
const TENANTS: Tenant[] = ['a', 'b'];
const USER: Record<Tenant, string> = { a: 'alice', b: 'bob' };
const VOLUME: Record<Tenant, string> = { a: 'a-vol', b: 'b-vol' };
const HOST: Record<Tenant, string> = { a: 'a-host', b: 'b-host' };
const INITIATOR: Record<Tenant, string> = { a: 'iqn.2026-12.lab.example:a-host', b: 'iqn.2026-12.lab.example:b-host' };
/** The byte a writes over NBD; b's volume stays zero. */
const A_BYTE = '0xa5';

let lab: Arraylab;
let portal: Portal;
let dir: string;
const tokenFile: Record<Tenant, string> = { a: '', b: '' };
/** The IDENTITY:HEX line `host set --nbd-psk` printed for each tenant's host. */
const psk: Record<Tenant, string> = { a: '', b: '' };
const serial: Record<Tenant, string> = { a: '', b: '' };

const tool = (name: string, args: string[]): Promise<ToolResult> => runTool(requireTool(name), args);

/** `arraylab ARGS` as a tenant's operator: its token file and no other credential to fall back on. */
function as(t: Tenant, args: string[]): Promise<CliResult> {
  return lab.cli([...args, '--token-file', tokenFile[t]], { env: { HOME: '/nonexistent', XDG_CONFIG_HOME: '/nonexistent' } });
}

async function asOk(t: Tenant, args: string[]): Promise<string> {
  const r = await as(t, args);
  if (r.code !== 0) throw new Error(`arraylab ${args.join(' ')} as ${USER[t]} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** A refused call: exit 1 and the NOT_FOUND a tenant gets for what is not its own. */
function expectNotFound(r: CliResult, what: string, t: Tenant): void {
  expect(r.code, r.stderr).toBe(1);
  expect(r.stderr).toContain(`no ${what} in tenant ${t}; its users see only the tenant's objects`);
}

/** A directory with keys.psk (qemu's layout) holding the tenant's PSK line. */
function pskDir(t: Tenant): string {
  const d = mkdtempSync(join(dir, `psk-${t}-`));
  writeFileSync(join(d, 'keys.psk'), `${psk[t]}\n`, { mode: 0o600 });
  return d;
}

const identity = (t: Tenant) => psk[t].slice(0, psk[t].indexOf(':'));
const nbdUri = (t: Tenant, name: string) => `nbds://${identity(t)}@127.0.0.1:${lab.nbdPort}/${name}?tls-psk-file=${join(pskDir(t), 'keys.psk')}`;

async function nbdList(t: Tenant): Promise<string[]> {
  const r = await tool('nbdinfo', ['--list', '--json', nbdUri(t, '')]);
  expect(r.code, r.output).toBe(0);
  return (JSON.parse(r.stdout).exports as Array<{ 'export-name': string }>).map((e) => e['export-name']).sort();
}

/** qemu-io over NBD with the tenant's TLS-PSK credentials. */
function qemuIoNbd(t: Tenant, name: string, commands: string[]): Promise<ToolResult> {
  return tool('qemu-io', [
    '--object',
    `tls-creds-psk,id=tls0,endpoint=client,dir=${pskDir(t)},username=${identity(t)}`,
    '--image-opts',
    `driver=nbd,host=127.0.0.1,port=${lab.nbdPort},export=${name},tls-creds=tls0`,
    ...commands.flatMap((c) => ['-c', c]),
  ]);
}

/** qemu-io over iSCSI, logging in as the tenant's initiator. */
function qemuIoIscsi(initiator: string, lun: number, commands: string[]): Promise<ToolResult> {
  return tool('qemu-io', ['--image-opts', qemuIscsiOpts(portal, lun, { initiatorName: initiator }), ...commands.flatMap((c) => ['-c', c])]);
}

/** A clean qemu-io run: exit 0 and no "Pattern verification failed" (nor any other failure). */
function expectRead(r: ToolResult): void {
  expect(r.code, r.output).toBe(0);
  expect(r.output).not.toMatch(/fail|error/i);
}

beforeAll(async () => {
  dir = makeTempDir('arraylab-tenant-blocks-');
  // No volumes of the admin's: every volume on the array belongs to a tenant.
  lab = await startArraylab({ config: { nbd: { tls: { psk: true, require: true } }, volumes: [] } });
  portal = iscsiPortalOf(lab);
  for (const t of TENANTS) {
    await cliOk(lab, ['tenant', 'add', t, '--max-volumes', '2', '--max-capacity', '32MiB']);
    const { token } = JSON.parse(await cliOk(lab, ['user', 'add', USER[t], '--role', 'operator', '--tenant', t, '--json'])) as { token: string };
    tokenFile[t] = join(dir, `${USER[t]}.token`);
    writeFileSync(tokenFile[t], `${token}\n`, { mode: 0o600 });
  }
  // From here on each operator works with its own token only.
  for (const t of TENANTS) {
    await asOk(t, ['volume', 'create', VOLUME[t], '--size', '8MiB']);
    await asOk(t, ['host', 'add', HOST[t], '--initiator', INITIATOR[t]]);
    const line = /^([^\s:]+:[0-9a-f]{64})$/m.exec(await asOk(t, ['host', 'set', HOST[t], '--nbd-psk']));
    expect(line, 'host set --nbd-psk prints IDENTITY:HEX').not.toBeNull();
    psk[t] = line![1]!;
    await asOk(t, ['host', 'map', HOST[t], VOLUME[t]]);
    serial[t] = String((JSON.parse(await asOk(t, ['volume', 'show', VOLUME[t], '--json'])) as { serial: unknown }).serial);
  }
  // a writes its data through its own NBD export before anything else looks.
  const w = await qemuIoNbd('a', VOLUME.a, [`write -P ${A_BYTE} 0 1M`, `read -P ${A_BYTE} 0 1M`]);
  expectRead(w);
});

afterAll(async () => {
  await lab?.stop();
});

describe('tenant isolation end to end', () => {
  it('each operator is its tenant and lists only its own volume and host', async () => {
    for (const t of TENANTS) {
      expect(JSON.parse(await asOk(t, ['user', 'whoami', '--json']))).toMatchObject({ name: USER[t], role: 'operator', tenant: t });
      const { volumes } = JSON.parse(await asOk(t, ['volume', 'list', '--json'])) as { volumes: Array<{ name: string }> };
      expect(volumes.map((v) => v.name)).toEqual([VOLUME[t]]);
      const hosts = JSON.parse(await asOk(t, ['host', 'list', '--json'])) as { hosts: Array<{ name: string }> };
      expect(hosts.hosts.map((h) => h.name)).toEqual([HOST[t]]);
    }
    // The admin sees both.
    const all = JSON.parse(await cliOk(lab, ['volume', 'list', '--json'])) as { volumes: Array<{ name: string }> };
    expect(all.volumes.map((v) => v.name).sort()).toEqual([VOLUME.a, VOLUME.b]);
  });

  it("NBD: a tenant's PSK lists and opens its own volume only", async () => {
    expect(await nbdList('a')).toEqual([VOLUME.a]);
    expect(await nbdList('b')).toEqual([VOLUME.b]);
    for (const [t, other] of [
      ['a', 'b'],
      ['b', 'a'],
    ] as const) {
      const info = await tool('nbdinfo', [nbdUri(t, VOLUME[other])]);
      expect(info.code, `nbdinfo ${VOLUME[other]} with ${t}'s PSK: ${info.output}`).not.toBe(0);
      const img = await tool('qemu-img', [
        'info',
        '--object',
        `tls-creds-psk,id=tls0,endpoint=client,dir=${pskDir(t)},username=${identity(t)}`,
        '--image-opts',
        `driver=nbd,host=127.0.0.1,port=${lab.nbdPort},export=${VOLUME[other]},tls-creds=tls0`,
      ]);
      expect(img.code, img.output).not.toBe(0);
      // The refusal names the client's own host, and gives nothing of the other tenant away.
      expect(img.stderr).toContain(`map it to the host with arraylab host map ${HOST[t]} ${VOLUME[other]}`);
      expect(img.stderr).not.toContain(HOST[other]);
    }
    // Without TLS (no identity) nothing is listed or opened.
    expect((await tool('nbdinfo', ['--list', `nbd://127.0.0.1:${lab.nbdPort}`])).code).not.toBe(0);
    expect((await tool('nbdinfo', [`nbd://127.0.0.1:${lab.nbdPort}/${VOLUME.a}`])).code).not.toBe(0);
  });

  it("NBD: b's client never reads what a wrote", async () => {
    const read = await qemuIoNbd('b', VOLUME.a, [`read -P ${A_BYTE} 0 1M`]);
    expect(read.code, read.output).not.toBe(0);
    expect(read.output).not.toMatch(/read 1048576\/1048576 bytes/);
    // b's own export is b's volume: zeros, not a's bytes.
    expectRead(await qemuIoNbd('b', VOLUME.b, ['read -P 0 0 1M']));
    // a reads its own data back.
    expectRead(await qemuIoNbd('a', VOLUME.a, [`read -P ${A_BYTE} 0 1M`]));
  });

  it("iSCSI: a tenant's initiator sees one LUN, its own volume, and reads only its own data", async () => {
    for (const t of TENANTS) {
      const ls = await tool('iscsi-ls', ['-s', '-i', INITIATOR[t], portalUrl(portal)]);
      expect(ls.code, ls.output).toBe(0);
      const targets = parseIscsiLs(ls.stdout);
      expect(targets.map((x) => x.targetName)).toEqual([portal.targetName]);
      expect([...targets[0]!.luns.keys()], ls.stdout).toEqual([0]);
      // LUN 0 is the tenant's own volume: VPD page 0x80 carries its serial number.
      const inq = await tool('iscsi-inq', ['-i', INITIATOR[t], '-e', '1', '-c', String(0x80), iscsiUrl(portal, 0)]);
      expect(inq.code, inq.output).toBe(0);
      expect(/^Unit Serial Number:\[(.*)\]$/m.exec(inq.stdout)?.[1]).toBe(serial[t]);
      // qemu-img info iscsi:// as the initiator: 8 MiB, and no LUN 1 to find a's volume at.
      const info = await tool('qemu-img', ['info', '--output=json', '--image-opts', qemuIscsiOpts(portal, 0, { initiatorName: INITIATOR[t] })]);
      expect(info.code, info.output).toBe(0);
      expect(JSON.parse(info.stdout)['virtual-size']).toBe(8 * MiB);
      const lun1 = await tool('qemu-img', ['info', '--image-opts', qemuIscsiOpts(portal, 1, { initiatorName: INITIATOR[t] })]);
      expect(lun1.code, lun1.output).not.toBe(0);
    }
    expectRead(await qemuIoIscsi(INITIATOR.a, 0, [`read -P ${A_BYTE} 0 1M`]));
    expectRead(await qemuIoIscsi(INITIATOR.b, 0, ['read -P 0 0 1M']));
    // An initiator in no host sees nothing at all.
    const stranger = await tool('iscsi-ls', ['-s', '-i', 'iqn.2026-12.lab.example:stranger', portalUrl(portal)]);
    expect(stranger.code, stranger.output).toBe(0);
    expect(parseIscsiLs(stranger.stdout).flatMap((x) => [...x.luns.keys()])).toEqual([]);
  });

  it("b cannot map a's volume to its host, nor its volume to a's host", async () => {
    expectNotFound(await as('b', ['host', 'map', HOST.b, VOLUME.a]), `volume ${VOLUME.a}`, 'b');
    expectNotFound(await as('b', ['host', 'map', HOST.a, VOLUME.b]), `host ${HOST.a}`, 'b');
    expectNotFound(await as('b', ['volume', 'show', VOLUME.a]), `volume ${VOLUME.a}`, 'b');
    // Nothing changed: b's PSK still lists b's volume alone.
    expect(await nbdList('b')).toEqual([VOLUME.b]);
  });

  it("b cannot copy from a's volume, nor over it", async () => {
    expectNotFound(await as('b', ['copy', 'start', '--type', 'opc', '--src', VOLUME.a, '--dst', VOLUME.b]), `volume ${VOLUME.a}`, 'b');
    expectNotFound(await as('b', ['copy', 'start', '--type', 'quickopc', '--src', VOLUME.a, '--dst', VOLUME.b]), `volume ${VOLUME.a}`, 'b');
    expectNotFound(await as('b', ['copy', 'start', '--type', 'opc', '--src', VOLUME.b, '--dst', VOLUME.a]), `volume ${VOLUME.a}`, 'b');
    expect(JSON.parse(await cliOk(lab, ['copy', 'list', '--json']))).toEqual({ sessions: [] });
    // b's volume holds none of a's bytes; a's holds them all.
    expectRead(await qemuIoNbd('b', VOLUME.b, ['read -P 0 0 1M']));
    expectRead(await qemuIoNbd('a', VOLUME.a, [`read -P ${A_BYTE} 0 1M`]));
  });

  it("b cannot restore a record of its volume over a's volume", async () => {
    await asOk('b', ['tape', 'add', 'TB001', '--capacity', '64MiB']);
    await asOk('b', ['tape', 'write', VOLUME.b, '--cartridge', 'TB001']);
    expectNotFound(await as('b', ['tape', 'restore', 'TB001', '1', '--to', VOLUME.a]), `volume ${VOLUME.a}`, 'b');
    expectNotFound(await as('b', ['tape', 'restore', 'TB001', '1', '--to', VOLUME.a, '--force']), `volume ${VOLUME.a}`, 'b');
    // Nor may a restore b's cartridge over its own volume, or even see it.
    expectNotFound(await as('a', ['tape', 'restore', 'TB001', '1', '--to', VOLUME.a]), 'cartridge TB001', 'a');
    expect(JSON.parse(await asOk('a', ['tape', 'list', '--json']))).toEqual({ cartridges: [] });
    // a's data is still there, read over NBD and over iSCSI.
    expectRead(await qemuIoNbd('a', VOLUME.a, [`read -P ${A_BYTE} 0 1M`]));
    expectRead(await qemuIoIscsi(INITIATOR.a, 0, [`read -P ${A_BYTE} 0 1M`]));
  });

  it("records b's refused calls in the audit log, under b's user and tenant", async () => {
    const { entries } = JSON.parse(await cliOk(lab, ['audit', '--user', USER.b, '--json'])) as { entries: AuditEntryView[] };
    const refused = entries.filter((e) => e.target.includes(VOLUME.a));
    for (const rpc of ['MapVolume', 'StartCopy', 'RestoreTape'])
      expect(
        refused.some((e) => e.rpc.endsWith(rpc)),
        `${rpc} in ${JSON.stringify(refused)}`,
      ).toBe(true);
    for (const e of refused) expect(e).toMatchObject({ user: USER.b, tenant: 'b', result: expect.stringMatching(/NOT_FOUND/) });
  });

  it("with CHAP on a's host, b's initiator cannot log in under a's initiator name; b cannot change that CHAP", async () => {
    const secretFile = join(dir, 'a-host.chap');
    writeFileSync(secretFile, 'a-host-secret-17\n', { mode: 0o600 });
    const chap = { username: 'a-host', secret: 'a-host-secret-17' };
    expectNotFound(await as('b', ['host', 'set', HOST.a, '--chap-user', 'b-user', '--chap-secret-file', secretFile]), `host ${HOST.a}`, 'b');
    await asOk('a', ['host', 'set', HOST.a, '--chap-user', chap.username, '--chap-secret-file', secretFile]);
    // An initiator name alone is a claim anyone can make; the host's CHAP secret is the proof.
    const claimed = await tool('iscsi-inq', ['-i', INITIATOR.a, iscsiUrl(portal, 0)]);
    expect(claimed.code, claimed.output).not.toBe(0);
    expect(claimed.output).toMatch(/auth|login/i);
    const ok = await tool('iscsi-inq', ['-i', INITIATOR.a, '-e', '1', '-c', String(0x80), iscsiUrl(portal, 0, { chap })]);
    expect(ok.code, ok.output).toBe(0);
    expect(/^Unit Serial Number:\[(.*)\]$/m.exec(ok.stdout)?.[1]).toBe(serial.a);
    // b's initiator, without CHAP on its host, still sees its own volume only.
    const b = await tool('iscsi-inq', ['-i', INITIATOR.b, '-e', '1', '-c', String(0x80), iscsiUrl(portal, 0)]);
    expect(/^Unit Serial Number:\[(.*)\]$/m.exec(b.stdout)?.[1], b.output).toBe(serial.b);
  });
});
