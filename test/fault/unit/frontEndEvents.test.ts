/**
 * The protocol front ends' side of HandleEvents, in process over MemoryProvider, where every
 * handle's close() is counted: what the real-server tests cannot see directly.
 *
 * NBD: a disconnect (from outside, or from inside a device call as a triggered fault sends it)
 * closes the socket without a reply and closes the handle exactly once; a reset changes
 * nothing; a refused GO carries the provider's message. iSCSI: a disconnect closes the
 * session's connection and handles once; resets signalled on several handles in one tick give
 * one unit attention; a refusal with a BlockDeviceError fails the login with 0x0301, anything
 * else thrown leaves the LUN out as before.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { BlockDeviceError } from '../../../emulator/block/BlockDevice.js';
import * as op from '../../../emulator/iscsi/opcodes.js';
import { CMD, OPT, REP, WireClient } from '../../support/nbdWire.js';
import { DeviceWrapper, MemoryProvider } from '../../support/memoryProvider.js';
import { RawInitiator, rw10, startTarget, type TargetFixture } from '../../support/iscsiTestInitiator.js';
import { until } from '../../support/wait.js';
import { startServer, type Started } from '../../nbd/harness.js';

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Signals a disconnect from inside read() at `offset` and fails the read, as the disconnect injector does. */
class DisconnectOnRead extends DeviceWrapper {
  provider: MemoryProvider | undefined;
  override read(offset: number, into: Buffer): Promise<void> {
    if (offset === 4096 && this.provider !== undefined) {
      this.provider.signal('disk', { kind: 'disconnect', reason: 'test fault dropped the connection' });
      return Promise.reject(new BlockDeviceError('ESHUTDOWN', 'dropped'));
    }
    return this.inner.read(offset, into);
  }
}

describe('NBD', () => {
  async function serve(): Promise<{ s: Started; provider: MemoryProvider; dev: DisconnectOnRead }> {
    const provider = new MemoryProvider();
    let dev: DisconnectOnRead | undefined;
    provider.add('disk', {
      size: 4 * MiB,
      wrap: (store) => {
        dev = new DisconnectOnRead(store);
        return dev;
      },
    });
    dev!.provider = provider;
    const s = await startServer(provider);
    cleanups.push(async () => {
      await s.server.close();
      expect(provider.allClosedOnce).toBe(true);
    });
    return { s, provider, dev: dev! };
  }

  it('a disconnect from outside closes the socket and the handle, once; a reset does nothing', async () => {
    const { s, provider } = await serve();
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk', { structured: true });
    expect(provider.signal('disk', { kind: 'reset', scope: 'lun' })).toBe(1);
    c.sendRequest(CMD.READ, { cookie: 1n, offset: 0, length: 512 });
    expect((await c.readReply(512)).error).toBe(0);
    expect(provider.signal('disk', { kind: 'disconnect', reason: 'test' })).toBe(1);
    expect(await c.closedWithin(2000)).toBe(true);
    await until('the handle to close', () => provider.openCount === 0, { timeoutMs: 2000, intervalMs: 10 });
    // Signalled again after the close: nobody listens any more.
    expect(provider.signal('disk', { kind: 'disconnect', reason: 'test' })).toBe(0);
    expect(s.at('warn').some((e) => String(e.msg).includes('connection dropped by the array: test'))).toBe(true);
  });

  it('a disconnect from inside a device call drops that connection without a reply; others go on', async () => {
    const { s, provider } = await serve();
    const a = await WireClient.connect(s.port);
    await a.connectExport('disk', { structured: true });
    // A second client of the same export is signalled too (the export's every handle is).
    const b = await WireClient.connect(s.port);
    await b.connectExport('disk', { structured: true });
    a.sendRequest(CMD.READ, { cookie: 7n, offset: 4096, length: 512 });
    expect(await a.closedWithin(2000)).toBe(true);
    expect(await b.closedWithin(2000)).toBe(true);
    await until('both handles to close', () => provider.openCount === 0, { timeoutMs: 2000, intervalMs: 10 });
    // The server still serves.
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk', { structured: true });
    c.sendRequest(CMD.READ, { cookie: 2n, offset: 0, length: 512 });
    expect((await c.readReply(512)).error).toBe(0);
    c.close();
    expect(s.at('error')).toEqual([]);
  });

  it('a refused open answers GO with NBD_REP_ERR_POLICY and the provider message', async () => {
    const { s, provider } = await serve();
    provider.refuseOpen.set('disk', () => new BlockDeviceError('ESHUTDOWN', 'export disk refuses connections for 3 s more (fault f9)'));
    const c = await WireClient.connect(s.port);
    await c.greet();
    c.sendOption(OPT.GO, WireClient.goData('disk'));
    const r = await c.readOptionReply();
    expect(r.type).toBe(REP.ERR_POLICY);
    expect(r.data.toString()).toBe('export disk refuses connections for 3 s more (fault f9)');
    provider.refuseOpen.delete('disk');
    c.sendOption(OPT.GO, WireClient.goData('disk'));
    expect((await c.readOptionReplies()).at(-1)?.type).toBe(REP.ACK);
    c.close();
  });
});

describe('iSCSI', () => {
  async function target(): Promise<TargetFixture> {
    const t = await startTarget({
      exports: [
        { name: 'vol0', size: 4 * MiB },
        { name: 'vol1', size: 4 * MiB },
      ],
    });
    cleanups.push(async () => {
      await t.close();
      expect(t.provider.allClosedOnce).toBe(true);
    });
    return t;
  }

  async function login(t: TargetFixture, name: string): Promise<RawInitiator> {
    const ini = await RawInitiator.connect(t.port);
    cleanups.push(() => ini.close());
    const r = await ini.login({ initiatorName: name });
    expect(r.bhs[36]).toBe(0);
    return ini;
  }

  /** Status and sense (KEY/ASC/ASCQ) of a TEST UNIT READY. */
  async function tur(ini: RawInitiator, lun = 0): Promise<string> {
    const itt = ini.command({ cdb: [0, 0, 0, 0, 0, 0], lun, edtl: 0 });
    for (;;) {
      const p = await ini.recv(5000);
      if (p === null) throw new Error('no answer to TEST UNIT READY');
      if (p.itt !== itt || p.opcode !== op.OP_SCSI_RESP) continue;
      if (p.bhs[3] === 0) return 'GOOD';
      const s = p.data.subarray(2);
      return [s[2]! & 0xf, s[12]!, s[13]!].map((n) => n.toString(16).padStart(2, '0')).join('/');
    }
  }

  async function clearPowerOn(ini: RawInitiator): Promise<void> {
    for (const lun of [0, 1]) for (let i = 0; i < 4 && (await tur(ini, lun)) !== 'GOOD'; i++);
  }

  it('a disconnect closes the session connection; its handles close once', async () => {
    const t = await target();
    const ini = await login(t, 'iqn.2026-11.test:a');
    expect(t.provider.openCount).toBe(2);
    expect(t.provider.signal('vol1', { kind: 'disconnect', reason: 'test' })).toBe(1);
    await ini.closed;
    await until('the handles to close', () => t.provider.openCount === 0, { timeoutMs: 2000, intervalMs: 10 });
  });

  it('resets signalled on every handle at once give each nexus one unit attention', async () => {
    const t = await target();
    const a = await login(t, 'iqn.2026-11.test:a');
    const b = await login(t, 'iqn.2026-11.test:b');
    await clearPowerOn(a);
    await clearPowerOn(b);
    expect(t.provider.signal('vol0', { kind: 'reset', scope: 'lun' })).toBe(2);
    for (const ini of [a, b]) {
      expect(await tur(ini, 0)).toBe('06/29/03');
      expect(await tur(ini, 0)).toBe('GOOD');
      expect(await tur(ini, 1)).toBe('GOOD');
    }
    expect(t.provider.signal('vol0', { kind: 'reset', scope: 'target' })).toBe(2);
    for (const ini of [a, b]) {
      for (const lun of [0, 1]) {
        expect(await tur(ini, lun)).toBe('06/29/02');
        expect(await tur(ini, lun)).toBe('GOOD');
      }
    }
  });

  it('an open refused with a BlockDeviceError fails the login with 0x0301; any other throw leaves the LUN out', async () => {
    const t = await target();
    t.provider.refuseOpen.set('vol1', () => new BlockDeviceError('EACCES', 'vol1 refuses connections'));
    const ini = await RawInitiator.connect(t.port);
    cleanups.push(() => ini.close());
    const r = await ini.login({ initiatorName: 'iqn.2026-11.test:a' });
    expect([r.bhs[36], r.bhs[37]]).toEqual([3, 1]);
    // vol0 was opened for the refused session, and closed again.
    expect(t.provider.openCount).toBe(0);
    expect(t.provider.opens.length).toBe(1);
    t.provider.refuseOpen.set('vol1', () => new Error('a bug in the provider'));
    const ok = await login(t, 'iqn.2026-11.test:a');
    await clearPowerOn(ok);
    const itt = ok.command({ cdb: rw10(0x28, 0, 1), lun: 1, read: true, edtl: 512 });
    const p = await ok.expect(op.OP_SCSI_RESP);
    expect(p.itt).toBe(itt);
    expect(p.bhs[3]).toBe(0x02); // LOGICAL UNIT NOT SUPPORTED
  });
});
