/**
 * Agent hardening in backup management: a registered volume is pinned to its WWN and UUID, and
 * a device (or an array answer) of another identity is refused; lock records taken in a guest
 * are never replayed on the host.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VolumeInfo } from '../../../emulator/array/types.js';
import type { DeviceMapping, LockRecord } from '../../../agent/types.js';
import { RecordingHost } from './RecordingHost.js';
import { registerAttached, rejects, startLab, type Lab } from './harness.js';

let L: Lab;
const scratch = mkdtempSync(join(tmpdir(), 'agent-hardening-'));

beforeAll(async () => {
  L = await startLab();
});

afterAll(async () => {
  await L?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

/** A host whose devices report a WWN of their own (SCSI disks): by default the volume's. */
class WwnHost extends RecordingHost {
  readonly wwnOverride = new Map<string, string>();
  override async devices(volumes: VolumeInfo[]): Promise<DeviceMapping[]> {
    const mapped = await super.devices(volumes);
    return mapped.map((d) => ({ ...d, wwn: this.wwnOverride.get(d.volume) ?? volumes.find((v) => v.name === d.volume)!.wwn }));
  }
}

describe('volume pins', () => {
  it('a device whose WWN is not the pinned one is refused, naming the volume, both WWNs and the fix', async () => {
    await L.mk(['pin-tv', 'pin-bv']);
    const host = new WwnHost();
    const { m } = await L.manager({ host });
    await registerAttached(m, host, 'pin-tv');
    await m.registerBackup('pin-bv');
    const pinned = (await L.array.getVolume('pin-tv')).wwn;
    // The device map (or a confused discovery) now points pin-tv at another disk.
    host.wwnOverride.set('pin-tv', '600144f0deadbeefdeadbeefdeadbeef');
    const r = await m.backup(['pin-tv']);
    expect(r.volumes[0]).toMatchObject({ ok: false, code: 'FAILED_PRECONDITION' });
    const msg = r.volumes[0]!.error!;
    expect(msg).toContain('refusing to act on /dev/fake-pin-tv for transaction volume pin-tv');
    expect(msg).toContain(`pinned at its registration`);
    expect(msg).toContain(`WWN ${pinned}`);
    expect(msg).toContain('reports WWN 600144f0deadbeefdeadbeefdeadbeef');
    expect(msg).toContain('re-register it: arraylab-agent register transaction pin-tv');
    // Nothing was done on the host for it.
    expect(host.callsOf('lockTransaction', 'pin-tv')).toEqual([]);
    expect(host.callsOf('lockBackup')).toEqual([]);

    // With the right device back, the backup goes through.
    host.wwnOverride.delete('pin-tv');
    expect((await m.backup(['pin-tv'])).ok).toBe(true);
  });

  it('a volume deleted and created again under its name is refused until re-registered', async () => {
    await L.mk(['pin2-tv', 'pin2-bv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'pin2-tv');
    await m.registerBackup('pin2-bv');
    const before = await L.array.getVolume('pin2-tv');
    await L.array.deleteVolume('pin2-tv');
    await L.mk(['pin2-tv']);
    const after = await L.array.getVolume('pin2-tv');
    expect(after.wwn).not.toBe(before.wwn);

    const r = await m.backup(['pin2-tv']);
    expect(r.volumes[0]).toMatchObject({ ok: false, code: 'FAILED_PRECONDITION' });
    expect(r.volumes[0]!.error).toContain(`pinned at its registration`);
    expect(r.volumes[0]!.error).toContain(`to WWN ${before.wwn} (UUID ${before.uuid})`);
    expect(r.volumes[0]!.error).toContain(`the array now reports WWN ${after.wwn} (UUID ${after.uuid})`);
    expect(host.callsOf('lockTransaction', 'pin2-tv')).toEqual([]);

    // Re-registering pins it to the new volume.
    await m.registerTransaction('pin2-tv');
    expect((await m.backup(['pin2-tv'])).ok).toBe(true);
  });

  it('a restore onto a backup volume whose device is another disk is refused', async () => {
    await L.mk(['pin3-tv', 'pin3-bv']);
    const host = new WwnHost();
    const { m } = await L.manager({ host });
    await registerAttached(m, host, 'pin3-tv');
    await m.registerBackup('pin3-bv');
    expect((await m.backup(['pin3-tv'])).ok).toBe(true);
    host.wwnOverride.set('pin3-tv', '600144f0000000000000000000000001');
    const e = await rejects(m.restore('pin3-tv'));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toMatch(/refusing to act on \/dev\/fake-pin3-tv for transaction volume pin3-tv: .*reports WWN 600144f0000000000000000000000001/);
    expect(host.callsOf('lockTransaction', 'pin3-tv').length).toBe(1); // the backup's only
  });
});

describe('guest lock records', () => {
  const frozen = (volume: string): LockRecord => ({
    volume,
    role: 'transaction',
    device: '/dev/vda',
    action: 'unmounted',
    mounts: [{ mountPoint: '/srv/guestdata', fsType: 'ext4', source: '/dev/vda', mountOptions: 'rw', superOptions: 'rw' }],
    at: new Date().toISOString(),
  });

  it('a record written on behalf of a guest is not replayed on the host', async () => {
    await L.mk(['gr-tv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'gr-tv');
    const socket = join(scratch, 'guest-agent.sock');
    writeFileSync(socket, ''); // the guest's socket is there: the guest may still hold the lock
    // A dead process's lock, taken through the guest on that socket.
    m.store.addLock('gr-tv', 'another-owner', 999_999_999, frozen('gr-tv'), socket);

    const report = await m.resourceMatch();
    expect(host.callsOf('unlock')).toEqual([]);
    expect(report.remaining.join('\n')).toContain(
      `gr-tv: its unmounted lock was taken in the guest on ${socket}, and is undone only there: run arraylab-agent --guest ${socket} resource-match`,
    );
    expect(m.store.listLocks().map((l) => l.guest)).toEqual([socket]);
    expect((await m.status()).transactionVolumes.find((t) => t.volume === 'gr-tv')!.needsResourceMatch).toMatch(/taken in the guest/);

    // Once the guest is gone (its socket removed), the record goes, still without a replay here.
    rmSync(socket);
    const again = await m.resourceMatch();
    expect(host.callsOf('unlock')).toEqual([]);
    expect(again.repaired.join('\n')).toContain(`dropped the unmounted record of gr-tv taken in the guest on ${socket}, whose socket is gone`);
    expect(m.store.listLocks()).toEqual([]);
  });

  it("a host's own record is replayed on the host", async () => {
    await L.mk(['hr-tv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'hr-tv');
    m.store.addLock('hr-tv', 'another-owner', 999_999_999, frozen('hr-tv'));
    const report = await m.resourceMatch();
    expect(host.callsOf('unlock').length).toBe(1);
    expect(report.repaired.join('\n')).toContain('undid the unmounted of hr-tv');
  });
});
