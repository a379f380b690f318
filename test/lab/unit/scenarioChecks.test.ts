/**
 * The scenario check kinds (emulator/lab/scenario/checks/), in process against an array in
 * process: each passes on what it asks for and otherwise says what is missing; data is read
 * through the array's NBD server; a timeout polls until the check passes.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArrayServer } from '../../../emulator/ArrayServer.js';
import { readAdminToken } from '../../../emulator/auth/adminCredential.js';
import { parseConfig } from '../../../emulator/config.js';
import { type CheckContext, runCheck } from '../../../emulator/lab/scenario/checks/index.js';
import type { CheckSpec, ScenarioCheck } from '../../../emulator/lab/scenario/schema.js';
import { NbdClient } from '../../../emulator/remote/NbdClient.js';
import { ArrayClient } from '../../../proto/ArrayClient.js';

const MiB = 2 ** 20;
let server: ArrayServer;
let dataDir: string;
let admin: ArrayClient;
let nbdPort: number;
let ctx: CheckContext;

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'arraylab-scn-checks-'));
  const config = parseConfig(
    `dataDir: ${dataDir}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\nnbd: {tls: {psk: true}}\nvolumes: [{name: tv1, size: 4MiB}, {name: bv1, size: 4MiB}, {name: bv2, size: 4MiB}]\n`,
    'test',
    '/tmp',
  );
  server = new ArrayServer(config, pino({ level: 'silent' }), { noCredentialLink: true });
  const l = await server.start();
  nbdPort = l.nbd.port;
  admin = new ArrayClient(`127.0.0.1:${l.api.port}`, { token: readAdminToken(dataDir) });
  ctx = { client: () => admin, where: () => '', shell: { cwd: dataDir, env: {} }, stepStartedAt: new Date() };
});

afterAll(async () => {
  admin?.close();
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

const check = (spec: CheckSpec, extra: Partial<ScenarioCheck> = {}) => runCheck({ spec, timeoutMs: 0, at: 'steps[0].check[0]', ...extra }, ctx);

async function write(volume: string, offset: number, data: Buffer): Promise<void> {
  const c = await NbdClient.connect({ host: '127.0.0.1', port: nbdPort, exportName: volume });
  await c.write(offset, data);
  await c.flush();
  await c.close();
}

describe('scenario checks', () => {
  it('volume: exists, at least that large and that full', async () => {
    expect(await check({ kind: 'volume', name: 'tv1' })).toMatchObject({ ok: true, message: 'volume tv1 exists (4 MiB, 0 B allocated)' });
    expect(await check({ kind: 'volume', name: 'nope' })).toMatchObject({ ok: false, message: 'volume nope does not exist' });
    expect(await check({ kind: 'volume', name: 'tv1', sizeAtLeast: 8 * MiB })).toMatchObject({
      ok: false,
      message: 'volume tv1 is 4 MiB; it should be at least 8 MiB',
    });
    expect(await check({ kind: 'volume', name: 'bv2', allocatedAtLeast: MiB })).toMatchObject({
      ok: false,
      message: 'volume bv2 holds 0 B of data; it should hold at least 1 MiB',
    });
    // The scenario's own message first, then what was found.
    expect(await check({ kind: 'volume', name: 'nope' }, { message: 'create nope first' })).toMatchObject({
      ok: false,
      message: 'create nope first (volume nope does not exist)',
    });
  });

  it('data: byte-equal to another volume or a SHA-256, read through the array', async () => {
    const bytes = Buffer.alloc(64 * 1024, 7);
    await write('tv1', MiB, bytes);
    expect(await check({ kind: 'data', volume: 'bv1', sameAs: 'tv1', offset: 0 })).toMatchObject({
      ok: false,
      message: `volume bv1 differs from tv1 at byte ${MiB}`,
    });
    await write('bv1', MiB, bytes);
    expect(await check({ kind: 'data', volume: 'bv1', sameAs: 'tv1', offset: 0 })).toMatchObject({
      ok: true,
      message: 'volume bv1 holds the same 4 MiB as tv1',
    });
    const sha = createHash('sha256').update(bytes).digest('hex');
    expect(await check({ kind: 'data', volume: 'tv1', sha256: sha, offset: MiB, length: bytes.length })).toMatchObject({ ok: true });
    const whole = createHash('sha256')
      .update(Buffer.alloc(4 * MiB))
      .digest('hex');
    expect(await check({ kind: 'data', volume: 'bv2', sha256: whole, offset: 0 })).toMatchObject({ ok: true, message: `volume bv2 has SHA-256 ${whole}` });
    expect(await check({ kind: 'data', volume: 'tv1', sha256: whole, offset: 0 })).toMatchObject({
      ok: false,
      message: expect.stringMatching(/^volume tv1 has SHA-256 [0-9a-f]{64}, not /),
    });
    expect(await check({ kind: 'data', volume: 'tv1', sha256: whole, offset: 0, length: 8 * MiB })).toMatchObject({
      ok: false,
      message: expect.stringMatching(/^volume tv1 is 4 MiB, shorter than/),
    });
  });

  it('session and absent session: a copy in a state, with progress; gone once cancelled', async () => {
    expect(await check({ kind: 'session', source: 'tv1', destination: 'bv2' })).toMatchObject({
      ok: false,
      message: 'there is no copy session from tv1 to bv2',
    });
    const s = await admin.startCopy({ type: 'quickopc', source: 'tv1', destination: 'bv2' });
    expect(await check({ kind: 'session', source: 'tv1', destination: 'bv2', type: 'opc' })).toMatchObject({
      ok: false,
      message: 'the session tv1 -> bv2 is quickopc, not opc',
    });
    expect(await check({ kind: 'session', source: 'tv1', destination: 'bv2', state: ['split'] })).toMatchObject({
      ok: false,
      message: expect.stringMatching(/^the session tv1 -> bv2 is (copying|tracking); it should be split$/),
    });
    expect(
      await check({ kind: 'session', source: 'tv1', destination: 'bv2', type: 'quickopc', state: ['tracking'], progressAtLeast: 100 }, { timeoutMs: 10_000 }),
    ).toMatchObject({
      ok: true,
      message: 'the quickopc session tv1 -> bv2 is tracking (100% copied)',
    });
    expect(await check({ kind: 'absent', session: { source: 'tv1', destination: 'bv2' } })).toMatchObject({
      ok: false,
      message: expect.stringMatching(/is still there, tracking; cancel it$/),
    });
    // event: seen since the step began.
    expect(await check({ kind: 'event', eventKind: 'copy', subject: 'tv1' })).toMatchObject({ ok: true });
    expect(await check({ kind: 'event', eventKind: 'tape' })).toMatchObject({ ok: false, message: 'the array logged no tape event since this step began' });
    await admin.cancelCopy(s.id);
    expect(await check({ kind: 'absent', session: { source: 'tv1', destination: 'bv2' } })).toMatchObject({ ok: true });
  });

  it('fault and absent fault: set, then removed', async () => {
    expect(await check({ kind: 'fault', faultKind: 'error', target: 'volume:bv2' })).toMatchObject({
      ok: false,
      message: 'no error fault on volume:bv2 is set',
    });
    const f = await admin.addFault({ kind: 'error', target: 'volume:bv2', ops: ['read'] });
    expect(await check({ kind: 'fault', faultKind: 'error', target: 'volume:bv2' })).toMatchObject({ ok: true });
    expect(await check({ kind: 'absent', fault: { kind: 'error' } })).toMatchObject({
      ok: false,
      message: `the error fault (${f.id}) is still set; remove it`,
    });
    await admin.removeFault(f.id);
    expect(await check({ kind: 'absent', fault: { kind: 'error', target: 'volume:bv2' } })).toMatchObject({
      ok: true,
      message: 'no error fault on volume:bv2',
    });
  });

  // Last: once the array has a host, a plain NBD client sees no volume.
  it("data under host affinity: read over TLS-PSK with a lab host's key; says why when no key shows the volume", async () => {
    await admin.createHost('h1', ['iqn.2026-11.lab.arraylab.guest:h1']);
    const { nbdPsk } = await admin.setHostCredentials('h1', { generateNbdPsk: true, nbdPskIdentity: 'h1' });
    await admin.mapVolume('h1', 'tv1');
    const zeros = createHash('sha256')
      .update(Buffer.alloc(4 * MiB))
      .digest('hex');
    const noKeys = await check({ kind: 'data', volume: 'bv2', sha256: zeros, offset: 0 });
    expect(noKeys).toMatchObject({
      ok: false,
      message: expect.stringMatching(/^cannot read volume bv2 over NBD: the array has hosts, .*the lab holds no host key/),
    });
    const withKeys: CheckContext = { ...ctx, nbdKeys: () => [nbdPsk!] };
    const spec = { kind: 'data' as const, volume: 'tv1', sha256: zeros, offset: 0 };
    const r = await runCheck({ spec, timeoutMs: 0, at: 'x' }, withKeys);
    // tv1 holds the bytes written above: the read went through.
    expect(r).toMatchObject({ ok: false, message: expect.stringMatching(/^volume tv1 has SHA-256 [0-9a-f]{64}, not /) });
    expect(await runCheck({ spec: { kind: 'data', volume: 'tv1', sameAs: 'bv1', offset: 0 }, timeoutMs: 0, at: 'x' }, withKeys)).toMatchObject({
      ok: false,
      message: expect.stringMatching(/^cannot read volume bv1 over NBD: .*none of the lab's host keys shows bv1 \(h1: /),
    });
    await admin.mapVolume('h1', 'bv1');
    expect(await runCheck({ spec: { kind: 'data', volume: 'tv1', sameAs: 'bv1', offset: 0 }, timeoutMs: 0, at: 'x' }, withKeys)).toMatchObject({
      ok: true,
      message: 'volume tv1 holds the same 4 MiB as bv1',
    });
  });

  it('polls until its timeout: passes once the array gets there, fails after waiting', async () => {
    setTimeout(() => void admin.createVolume({ name: 'late', sizeBytes: MiB }), 700);
    expect(await check({ kind: 'volume', name: 'late' })).toMatchObject({ ok: false });
    const t = Date.now();
    expect(await check({ kind: 'volume', name: 'late' }, { timeoutMs: 5000 })).toMatchObject({ ok: true });
    expect(Date.now() - t).toBeLessThan(4000);
    expect(await check({ kind: 'absent', volume: 'late' }, { timeoutMs: 1000 })).toMatchObject({
      ok: false,
      message: 'volume late still exists; delete it (waited 1 s)',
    });
  });
});
