/**
 * The array's NBD side in process (emulator/array/nbdExports.ts): the access policy over a
 * stand-in for host affinity, and the reservation check over a stand-in for the iSCSI target's
 * reservation book. The real peers are in test/nbd/arrayAccess and test/nbd/reservations.
 */
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockDeviceError, type ClientInfo } from '../../emulator/block/BlockDevice.js';
import { nbdAccess, NbdExports, type LuReservationState, type NbdHosts } from '../../emulator/array/nbdExports.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import type { NbdPeer } from '../../emulator/nbd/index.js';

const logger = pino({ level: 'silent' });
const client: ClientInfo = { protocol: 'nbd', connectionId: 'nbd-1', remoteAddress: '127.0.0.1:1', readOnly: false };

function hosts(volumes: ReadonlySet<string> | 'all', host: string | undefined): NbdHosts & { asked: Array<NbdPeer | undefined> } {
  const asked: Array<NbdPeer | undefined> = [];
  return {
    asked,
    hostAffinity: volumes !== 'all',
    hostForNbdPeer: () => host,
    nbdPsk: () => undefined,
    nbdVolumesFor: (peer) => {
      asked.push(peer);
      return volumes;
    },
  };
}

describe('nbdAccess', () => {
  it('passes host affinity through; REC data connections are always in scope', () => {
    expect(nbdAccess(hosts('all', undefined)).exportsFor(undefined)).toBe('all');
    const h = hosts(new Set(['vol1']), 'web');
    const scope = nbdAccess(h).exportsFor({ pskIdentity: 'web' });
    expect(scope).not.toBe('all');
    if (scope === 'all') return;
    expect([scope.has('vol1'), scope.has('vol2'), scope.has('.rec/p1/secret')]).toEqual([true, false, true]);
    expect(h.asked).toEqual([{ pskIdentity: 'web' }]);
  });

  it('says what to do, by what the client is', () => {
    const none = nbdAccess(hosts(new Set(), undefined));
    expect(none.refusal(undefined, 'vol2')).toMatch(
      /^no export named "vol2" for this client: host affinity is on, and a client without a TLS identity sees no volume; connect with TLS-PSK/,
    );
    expect(nbdAccess(hosts(new Set(), undefined), false).refusal(undefined, 'vol2')).toMatch(/this array serves NBD without TLS: set nbd\.tls in its config/);
    expect(none.refusal({ pskIdentity: 'ci' }, 'vol2')).toBe(
      'no export named "vol2" for this client: TLS-PSK identity "ci" belongs to no host; give it to one with arraylab host set HOST --nbd-psk --nbd-psk-identity ci',
    );
    expect(none.refusal({ certFingerprint256: 'AB:CD', certSubjectCN: 'ci.lab' }, 'vol2')).toBe(
      'no export named "vol2" for this client: client certificate SHA-256 AB:CD (CN ci.lab) belongs to no host; give it to one with arraylab host set HOST --nbd-cert-fingerprint AB:CD',
    );
    expect(nbdAccess(hosts(new Set(), 'web')).refusal({ pskIdentity: 'web' }, 'vol2')).toBe(
      'no export named "vol2" for this client (host web, TLS-PSK identity "web"): if volume vol2 exists, map it to the host with arraylab host map web vol2',
    );
  });
});

describe('NbdExports: the reservation check', () => {
  let array: StorageArray | undefined;
  afterEach(async () => {
    await array?.close();
    array = undefined;
  });

  async function setup(): Promise<{
    exports: NbdExports;
    state: { spc2: LuReservationState['spc2']; reservation: LuReservationState['reservation'] };
    looked: string[];
  }> {
    array = await StorageArray.open({ backend: 'memory', logger });
    await array.createVolume({ name: 'vol1', sizeBytes: 1 << 20, blockSize: 512, provisioning: 'thin', readOnly: false, description: '' });
    const exports = new NbdExports(array, logger);
    const state: { spc2: LuReservationState['spc2']; reservation: LuReservationState['reservation'] } = { spc2: undefined, reservation: undefined };
    const looked: string[] = [];
    exports.reservations = {
      of: (wwn) => {
        looked.push(wwn);
        return state;
      },
    };
    return { exports, state, looked };
  }

  async function outcome(p: Promise<unknown>): Promise<string> {
    try {
      await p;
      return 'ok';
    } catch (err) {
      return err instanceof BlockDeviceError ? err.code : String(err);
    }
  }

  it('refuses writes under any reservation and reads under Exclusive Access, writing nothing; looks the LU up once', async () => {
    const { exports, state, looked } = await setup();
    const h = exports.openExport('vol1', client)!;
    const dev = h.device;
    const ops = async () => ({
      write: await outcome(dev.write(0, Buffer.alloc(512, 9))),
      trim: await outcome(dev.trim(0, 512)),
      zero: await outcome(dev.writeZeroes(0, 512)),
      read: await outcome(dev.read(0, Buffer.alloc(512))),
      flush: await outcome(dev.flush()),
    });
    expect(await ops()).toEqual({ write: 'ok', trim: 'ok', zero: 'ok', read: 'ok', flush: 'ok' });
    await dev.write(512, Buffer.alloc(512, 1));
    state.reservation = { type: 1, holder: { initiatorPort: 'iqn.x,i,0x1' } };
    expect(await ops()).toEqual({ write: 'EACCES', trim: 'EACCES', zero: 'EACCES', read: 'ok', flush: 'ok' });
    const before = Buffer.alloc(512);
    await outcome(dev.write(512, Buffer.alloc(512, 2)));
    await dev.read(512, before);
    expect(before.every((b) => b === 1)).toBe(true);
    state.reservation = { type: 8, holder: undefined };
    expect(await ops()).toEqual({ write: 'EACCES', trim: 'EACCES', zero: 'EACCES', read: 'EACCES', flush: 'ok' });
    state.reservation = undefined;
    state.spc2 = { initiatorPort: 'iqn.x,i,0x1' };
    expect((await ops()).read).toBe('EACCES');
    state.spc2 = undefined;
    expect(await ops()).toEqual({ write: 'ok', trim: 'ok', zero: 'ok', read: 'ok', flush: 'ok' });
    expect(looked).toEqual([array!.getVolume('vol1').wwn]);
    h.close();
  });

  it('without iSCSI (no reservation book) nothing is checked; REC data connections are not wrapped', async () => {
    const { exports } = await setup();
    exports.reservations = undefined;
    const h = exports.openExport('vol1', client)!;
    expect(await outcome(h.device.write(0, Buffer.alloc(512)))).toBe('ok');
    expect(h.name).toBe('vol1');
    expect(h.identity?.wwn).toBe(array!.getVolume('vol1').wwn);
    h.close();
    expect(exports.openExport('.rec/nopair/nosecret', client)).toBeUndefined();
  });
});
