/**
 * Agent hardening on the host side (it runs as root), in process with injected probes and temp
 * directories: the system disk is never acted on, lock records with bad mount points are
 * refused, a recorded pid of another program is not signalled, the run directory and the API
 * socket are private, plaintext TCP off loopback is refused, and the records are 0600.
 */
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentApiServer, isLoopback } from '../../agent/api/AgentApiServer.js';
import { LinuxHost } from '../../agent/host/LinuxHost.js';
import { mountPointProblem } from '../../agent/host/mountPolicy.js';
import { isFreezeGuardOf, signalIfProgram } from '../../agent/host/processes.js';
import { SystemDiskProbe } from '../../agent/host/systemDisks.js';
import { ensurePrivateDir, ownershipProblem } from '../../agent/host/trust.js';
import { AgentStore } from '../../agent/store/AgentStore.js';
import type { AgentCore, LockRecord } from '../../agent/types.js';

const log = pino({ level: 'silent' });
const root = mkdtempSync(join(tmpdir(), 'agent-hardening-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const uid = process.getuid!();
/** A uid that is not the owner of the files this test makes (nobody, as root). */
const otherUid = uid === 0 ? 65534 : uid + 1;

function put(path: string, text = ''): void {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, text);
}

/**
 * A fake /proc and /sys: / on sda2 (a partition of sda), /boot on nvme0n1p1, swap on the
 * device-mapper dm-1 built on sdc, a swap file on the filesystem of 254:0 (dm-0 over sde);
 * sdb and sdd are free disks.
 */
function fakeTree(): { procRoot: string; sysRoot: string; devNos: Map<string, string> } {
  const t = mkdtempSync(join(root, 'tree-'));
  const procRoot = join(t, 'proc');
  const sysRoot = join(t, 'sys');
  put(
    join(procRoot, 'self', 'mountinfo'),
    [
      '22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw',
      '23 22 259:1 / /boot rw,relatime shared:2 - vfat /dev/nvme0n1p1 rw',
      '24 22 0:5 / /dev rw shared:3 - devtmpfs udev rw',
      '25 22 8:17 / /srv/data rw shared:4 - xfs /dev/sdb1 rw',
    ].join('\n'),
  );
  put(
    join(procRoot, 'swaps'),
    'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/dm-1\tpartition\t1048572\t0\t-2\n/var/swap\\040file\tfile\t1048572\t0\t-3\n',
  );
  const devices = join(sysRoot, 'devices');
  const disk = (name: string, parts: string[] = [], slaves: string[] = []) => {
    const d = join(devices, 'block', name);
    mkdirSync(join(d, 'slaves'), { recursive: true });
    for (const s of slaves) symlinkSync(join(devices, 'block', s), join(d, 'slaves', s));
    for (const p of parts) put(join(d, p, 'partition'), '1\n');
  };
  disk('sda', ['sda2', 'sda3']);
  disk('sdb', ['sdb1']);
  disk('sdc');
  disk('sdd');
  disk('sde');
  disk('nvme0n1', ['nvme0n1p1']);
  disk('dm-1', [], ['sdc']);
  disk('dm-0', [], ['sde']);
  const devNos = new Map<string, string>([
    ['/dev/sda', '8:0'],
    ['/dev/sda2', '8:2'],
    ['/dev/sda3', '8:3'],
    ['/dev/sdb', '8:16'],
    ['/dev/sdb1', '8:17'],
    ['/dev/sdc', '8:32'],
    ['/dev/sdd', '8:48'],
    ['/dev/sde', '8:64'],
    ['/dev/nvme0n1', '259:0'],
    ['/dev/nvme0n1p1', '259:1'],
    ['/dev/dm-1', '253:1'],
    ['/dev/dm-0', '254:0'],
  ]);
  const where: Record<string, string> = {
    '8:0': 'sda',
    '8:2': 'sda/sda2',
    '8:3': 'sda/sda3',
    '8:16': 'sdb',
    '8:17': 'sdb/sdb1',
    '8:32': 'sdc',
    '8:48': 'sdd',
    '8:64': 'sde',
    '259:0': 'nvme0n1',
    '259:1': 'nvme0n1/nvme0n1p1',
    '253:1': 'dm-1',
    '254:0': 'dm-0',
  };
  mkdirSync(join(sysRoot, 'dev', 'block'), { recursive: true });
  mkdirSync(join(sysRoot, 'class', 'block'), { recursive: true });
  for (const [n, path] of Object.entries(where)) {
    symlinkSync(join(devices, 'block', path), join(sysRoot, 'dev', 'block', n));
    symlinkSync(join(devices, 'block', path), join(sysRoot, 'class', 'block', path.split('/').pop()!));
  }
  return { procRoot, sysRoot, devNos };
}

function probeOf(t: ReturnType<typeof fakeTree>): SystemDiskProbe {
  return new SystemDiskProbe({
    procRoot: t.procRoot,
    sysRoot: t.sysRoot,
    deviceNumber: async (p) => t.devNos.get(p) ?? null,
    fileDevice: async (p) => (p === '/var/swap file' ? '254:0' : null),
  });
}

describe('system disks', () => {
  it('finds the disks holding /, /boot and swap (partitions, device-mapper, swap files)', async () => {
    const disks = await probeOf(fakeTree()).systemDisks();
    expect(Object.fromEntries(disks.map((d) => [d.disk, d.why]))).toEqual({
      sda: 'holds / (/dev/sda2)',
      nvme0n1: 'holds /boot (/dev/nvme0n1p1)',
      'dm-1': 'holds the swap area /dev/dm-1',
      sdc: 'holds the swap area /dev/dm-1',
      'dm-0': 'holds the swap file /var/swap file',
      sde: 'holds the swap file /var/swap file',
    });
  });

  it.each([
    ['/dev/sda', 'sda', 'holds / (/dev/sda2)'],
    ['/dev/sda3', 'sda', 'holds / (/dev/sda2)'],
    ['/dev/nvme0n1', 'nvme0n1', 'holds /boot'],
    ['/dev/sdc', 'sdc', 'holds the swap area /dev/dm-1'],
    ['/dev/sde', 'sde', 'holds the swap file /var/swap file'],
  ])('refuses %s (on %s)', async (device, disk, why) => {
    expect(await probeOf(fakeTree()).refusal(device)).toContain(`${device} is on the system disk ${disk}, which ${why}`);
  });

  it.each(['/dev/sdb', '/dev/sdb1', '/dev/sdd', '/dev/not-a-device'])('lets %s be', async (device) => {
    expect(await probeOf(fakeTree()).refusal(device)).toBe('');
  });

  it('the host side refuses to lock, hold, copy onto or invalidate the system disk, whatever the array says', async () => {
    const host = new LinuxHost({ log, systemDisks: probeOf(fakeTree()) });
    const fix = /the agent never acts on the disk holding \/, \/boot or swap, whatever the array or the device map say/;
    await expect(host.lockTransaction('vol1', '/dev/sda', 'unmount')).rejects.toThrow(
      /^refusing to touch \/dev\/sda for transaction volume vol1: \/dev\/sda is on the system disk sda, which holds \/ \(\/dev\/sda2\); /,
    );
    await expect(host.lockTransaction('vol1', '/dev/sda', 'freeze')).rejects.toThrow(fix);
    await expect(host.lockBackup('bv1', '/dev/nvme0n1')).rejects.toThrow(/refusing to touch \/dev\/nvme0n1 for backup volume bv1: .*holds \/boot/);
    await expect(host.copyDevice('/dev/sdd', '/dev/sdc')).rejects.toThrow(/refusing to touch \/dev\/sdc for a copy from \/dev\/sdd: .*swap area/);
    await expect(host.invalidate('/dev/sde')).rejects.toThrow(fix);
  });
});

describe('lock records', () => {
  const rec = (mountPoint: string, action: LockRecord['action'] = 'unmounted'): LockRecord => ({
    volume: 'vol1',
    role: 'transaction',
    device: '/dev/null-device-of-a-test',
    action,
    mounts: [{ mountPoint, fsType: 'ext4', source: '/dev/sdz', mountOptions: 'rw', superOptions: 'rw' }],
    at: new Date().toISOString(),
  });

  it.each([
    ['relative', 'mount point "srv/data" is not an absolute path'],
    ['/srv/../etc', 'mount point "/srv/../etc" has a ".." component'],
    ['/srv//data', 'mount point "/srv//data" is not normalised (it should read "/srv/data")'],
    ['/srv/./data', 'is not normalised'],
    ['/srv/data/', 'is not normalised'],
    ['/', 'mount point / is the root filesystem'],
    ['/boot', 'mount point /boot is /boot, a system directory'],
    ['/boot/efi', 'mount point /boot/efi is under /boot, a system directory'],
    ['/proc/1/root', 'under /proc'],
    ['/sys', 'is /sys'],
    ['/dev/shm', 'under /dev'],
    ['/run/user/0', 'under /run'],
  ])('%s is refused', (mp, words) => {
    expect(mountPointProblem(mp === 'relative' ? 'srv/data' : mp)).toContain(words);
  });

  it('takes absolute normalised paths outside the system directories, or under the configured prefixes only', () => {
    for (const ok of ['/srv/data', '/mnt/tv 1', '/tmp/x', '/var/lib/db', '/bootstrap', '/runner']) expect(mountPointProblem(ok)).toBe('');
    expect(mountPointProblem('/srv/data', ['/srv', '/mnt'])).toBe('');
    expect(mountPointProblem('/srv', ['/srv'])).toBe('');
    expect(mountPointProblem('/srvx/data', ['/srv'])).toBe('mount point /srvx/data is not under an allowed prefix (/srv; config mountPrefixes)');
    expect(mountPointProblem('/run/media/usb', ['/run/media'])).toBe('');
  });

  it('a record with a bad mount point is refused before anything is mounted or thawed', async () => {
    const host = new LinuxHost({ log, systemDisks: { refusal: async () => '' } });
    await expect(host.unlock(rec('/srv/../etc'))).rejects.toThrow(
      /^refusing to undo the unmounted of vol1 from its record: mount point "\/srv\/\.\.\/etc" has a "\.\." component; the record is not one this agent wrote for this host/,
    );
    await expect(host.unlock(rec('/proc/self', 'frozen'))).rejects.toThrow(
      /refusing to undo the frozen of vol1 from its record: mount point \/proc\/self is under \/proc/,
    );
    const prefixed = new LinuxHost({ log, mountPrefixes: ['/srv'], systemDisks: { refusal: async () => '' } });
    await expect(prefixed.unlock(rec('/mnt/data'))).rejects.toThrow(/not under an allowed prefix \(\/srv; config mountPrefixes\)/);
    const badType = { ...rec('/srv/data'), mounts: [{ ...rec('/srv/data').mounts[0]!, fsType: 'ext4 -o suid' }] };
    await expect(host.unlock(badType)).rejects.toThrow(/filesystem type "ext4 -o suid" is not a type name/);
  });
});

describe('recorded pids', () => {
  function fakeProc(pid: number, argv: string[]): string {
    const procRoot = mkdtempSync(join(root, 'proc-'));
    put(join(procRoot, String(pid), 'stat'), `${pid} (x) S 1 ${pid} ${pid} 0 -1`);
    put(join(procRoot, String(pid), 'cmdline'), `${argv.join('\0')}\0`);
    return procRoot;
  }

  it('a stale pid now of another program is not signalled; the freeze guard of that mount point is', async () => {
    const sent: Array<[number, string]> = [];
    const kill = (pid: number, sig: NodeJS.Signals) => void sent.push([pid, sig]);
    const sleeper = fakeProc(4242, ['sleep', '1000']);
    expect(await signalIfProgram(4242, (a) => isFreezeGuardOf(a, '/srv/data'), 'SIGTERM', { procRoot: sleeper, kill })).toBe(false);
    const otherMount = fakeProc(4242, ['/usr/bin/node', '/usr/lib/arraylab-agent/agent/host/freezeGuardMain.js', '/srv/other', '30000']);
    expect(await signalIfProgram(4242, (a) => isFreezeGuardOf(a, '/srv/data'), 'SIGTERM', { procRoot: otherMount, kill })).toBe(false);
    expect(sent).toEqual([]);
    const guard = fakeProc(4242, ['/usr/bin/node', '/usr/lib/arraylab-agent/agent/host/freezeGuardMain.js', '/srv/data', '30000']);
    expect(await signalIfProgram(4242, (a) => isFreezeGuardOf(a, '/srv/data'), 'SIGTERM', { procRoot: guard, kill })).toBe(true);
    expect(sent).toEqual([[4242, 'SIGTERM']]);
  });

  it("the host side's thaw of a frozen record does not signal a recycled guard pid", async () => {
    const sent: number[] = [];
    const procRoot = fakeProc(4343, ['python3', 'server.py']);
    const host = new LinuxHost({ log, procRoot, kill: (pid) => void sent.push(pid), systemDisks: { refusal: async () => '' } });
    const frozen: LockRecord = {
      volume: 'vol1',
      role: 'transaction',
      device: '/dev/sdz',
      action: 'frozen',
      mounts: [{ mountPoint: '/srv/not-mounted-here', fsType: 'ext4', source: '/dev/sdz', mountOptions: 'rw', superOptions: 'rw' }],
      freezeGuardPid: 4343,
      at: new Date().toISOString(),
    };
    await host.unlock(frozen); // not mounted here: nothing to thaw either
    expect(sent).toEqual([]);
  });
});

describe('run directory and files', () => {
  it('is made 0700, and one owned by another user or writable by others is refused with the fix', () => {
    const dir = join(root, 'run-new', 'arraylab-agent');
    ensurePrivateDir(dir, 'run directory');
    expect(statSync(dir).mode & 0o777).toBe(0o700);

    const open = join(root, 'run-open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    expect(() => ensurePrivateDir(open, 'run directory')).toThrow(`the run directory ${open} is writable by others (mode 0777); chmod 700 ${open}`);

    const theirs = join(root, 'run-theirs');
    mkdirSync(theirs, { mode: 0o700 });
    // As root: really another owner; otherwise: the agent is told it is another user.
    if (uid === 0) chownSync(theirs, otherUid, otherUid);
    expect(() => ensurePrivateDir(theirs, 'run directory', uid === 0 ? 0 : otherUid)).toThrow(
      new RegExp(
        `^the run directory ${theirs} is owned by uid \\d+, not by the agent's uid \\d+, .*; chown \\d+ ${theirs} \\(or remove it\\), or choose another$`,
      ),
    );
  });

  it('files others may write or another user owns are not trusted', () => {
    expect(ownershipProblem('/x', { uid: 0, mode: 0o100755 }, 0)).toBe('');
    expect(ownershipProblem('/x', { uid: 1000, mode: 0o100755 }, 1000)).toBe('');
    expect(ownershipProblem('/x', { uid: 0, mode: 0o100777 }, 0)).toBe('/x is writable by group and others (mode 0777; fix: chmod go-w /x)');
    expect(ownershipProblem('/x', { uid: 0, mode: 0o100775 }, 0)).toBe('/x is writable by its group (mode 0775; fix: chmod go-w /x)');
    expect(ownershipProblem('/x', { uid: 1000, mode: 0o100755 }, 0)).toBe('/x is owned by uid 1000, not by root (fix: chown root /x)');
  });

  it("the agent's database and its WAL are 0600, also one made before", () => {
    const dir = mkdtempSync(join(root, 'state-'));
    const store = new AgentStore(join(dir, 'agent.db'));
    store.putPin({ volume: 'v', uuid: 'u', wwn: 'w', pinnedAt: 'now' });
    for (const f of ['agent.db', 'agent.db-wal', 'agent.db-shm']) if (existsSync(join(dir, f))) expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
    expect(existsSync(join(dir, 'agent.db-wal'))).toBe(true);
    store.close();
    chmodSync(join(dir, 'agent.db'), 0o644);
    new AgentStore(join(dir, 'agent.db')).close();
    expect(statSync(join(dir, 'agent.db')).mode & 0o777).toBe(0o600);
  });
});

describe("the agent's API", () => {
  const core = {} as AgentCore;
  const server = () => new AgentApiServer({ core, doctor: async () => [], token: 'x'.repeat(32), log });

  it('refuses plaintext TCP on a non-loopback address, saying how to enable TLS', async () => {
    for (const host of ['0.0.0.0', '::', '192.0.2.10']) {
      const s = server();
      await expect(s.listen(host, 0)).rejects.toThrow(
        /^refusing to serve the agent API in plaintext on .*: its token, and the commands it runs as root, would cross the network in the clear; give a certificate with --tls-cert PEM --tls-key PEM .*or listen on 127\.0\.0\.1 or on a Unix socket \(--listen unix\)$/,
      );
      await s.close();
    }
    expect(['127.0.0.1', '127.1.2.3', '::1', 'localhost', '[::1]'].every(isLoopback)).toBe(true);
    expect(['0.0.0.0', '10.0.0.1', '::', '128.0.0.1'].some(isLoopback)).toBe(false);
    const s = server();
    expect(await s.listen('127.0.0.1', 0)).toBeGreaterThan(0);
    await s.close();
  });

  it('serves a Unix socket 0600 in a private directory, and refuses an open directory', async () => {
    const dir = join(root, 'sock');
    const s = server();
    await s.listenUnix(join(dir, 'agent.sock'));
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, 'agent.sock')).mode & 0o777).toBe(0o600);
    await s.close();

    const open = join(root, 'sock-open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    const s2 = server();
    await expect(s2.listenUnix(join(open, 'agent.sock'))).rejects.toThrow(`the socket directory ${open} is writable by others (mode 0777); chmod 700 ${open}`);
    await s2.close();
  });
});
