/**
 * Real Linux guests on the array: the vm-images/ kernel and initramfs boot under qemu (TCG),
 * reach a shell, carry Node with the native better-sqlite3, and use the array's volumes over
 * NBD (virtio-blk) and iSCSI (libiscsi, SCSI passthrough): what a guest writes is on the volume
 * as the host reads it back, and the guest sees the volume's WWN.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { launchGuest, type Guest } from '../../emulator/vm/Guest.js';
import { readGuestImage, type GuestImage } from '../../emulator/vm/image.js';
import { cliJson, cliOk, makeTempDir, REPO_ROOT, startArraylab, type Arraylab } from '../support/arraylab.js';
import { iscsiPortalOf } from '../support/iscsi.js';
import { requireTool } from '../support/tools.js';

const run = promisify(execFile);
const log = pino({ level: process.env.ARRAYLAB_LOG_LEVEL ?? 'warn' });

let image: GuestImage;
const guests = new Set<Guest>();
const labs = new Set<Arraylab>();
const cleanups: Array<() => Promise<void> | void> = [];

beforeAll(async () => {
  requireTool('qemu-img');
  requireTool('debugfs');
  const started = performance.now();
  // Cached: rebuilds only when the script, the packages copied in, dist/ or the lockfile changed.
  const { stdout } = await run('bash', [join(REPO_ROOT, 'vm-images', 'build.sh')], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 });
  console.log(`${stdout.trim()}\n(vm-images/build.sh took ${((performance.now() - started) / 1000).toFixed(1)} s)`);
  image = readGuestImage();
  requireTool('qemu-system-x86_64');
}, 600_000);

// Guests are always stopped, servers ended and mounts undone, also when a step failed.
afterEach(async () => {
  await Promise.all([...guests].map((g) => g.stop()));
  guests.clear();
  for (const c of cleanups.splice(0).reverse()) await c();
  await Promise.all([...labs].map((l) => l.stop()));
  labs.clear();
});
afterAll(async () => {
  await Promise.all([...guests].map((g) => g.stop()));
});

async function boot(opts: Omit<Parameters<typeof launchGuest>[0], 'kernel' | 'initrd' | 'log'>): Promise<Guest> {
  const guest = await launchGuest({ ...opts, kernel: image.kernel, initrd: image.initrd, log });
  guests.add(guest);
  console.log(`guest ${opts.name}: launch to shell prompt ${(guest.bootMs / 1000).toFixed(2)} s`);
  return guest;
}

async function lab(): Promise<Arraylab> {
  const l = await startArraylab();
  labs.add(l);
  return l;
}

/** Connects to the agent's virtio-serial socket and collects what the guest sends. */
function listenOnAgentPort(path: string): Promise<{ socket: Socket; received: () => string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let data = '';
    socket.setEncoding('utf8').on('data', (d: string) => (data += d));
    socket.once('error', reject);
    socket.once('connect', () => resolve({ socket, received: () => data }));
  });
}

describe('guest image', () => {
  it('boots to a shell on the cloud kernel, runs Node with better-sqlite3, and reaches the host over virtio-serial', async () => {
    const guest = await boot({ name: 'plain' });
    expect(guest.bootMs).toBeLessThan(30_000);
    expect(qemuPidsNamed('plain')).toEqual([guest.pid]);

    expect((await guest.runOk('uname -r')).trim()).toBe(image.kernelRelease);
    expect(image.kernelRelease).toMatch(/-cloud-amd64$/);
    expect((await guest.runOk('node --version')).trim()).toBe(image.node);
    // The agent is its Debian package's files (scripts/package-agent.sh), with nothing of the
    // emulator, and its native module loads in the guest (ESM, from the package's node_modules).
    expect(await guest.runOk('readlink -f /usr/bin/arraylab-agent; ls -1 /usr/lib/arraylab-agent')).toBe(
      '/usr/lib/arraylab-agent/agent/cli/arraylab-agent.js\nagent\nnode_modules\npackage.json\nproto\n',
    );
    const sql = await guest.runOk(
      `cd /usr/lib/arraylab-agent && node --input-type=module -e 'import Database from "better-sqlite3"; const db = new Database(":memory:"); console.log(db.prepare("select 6 * 7 as x").get().x)'`,
      { timeoutMs: 60_000 },
    );
    expect(sql.trim()).toBe('42');

    // A failing command reports its status and output; the console shell survives it.
    const failed = await guest.run('echo to-stderr >&2; exit 3');
    expect(failed).toEqual({ code: 3, output: 'to-stderr\n' });
    expect((await guest.runOk(`printf 'a b\\n"q" %s\\n' "$HOME"`)).split('\n')).toEqual(['a b', '"q" /root', '']);

    // The tools the agent drives are the real ones (util-linux, coreutils), not busybox applets.
    const tools = await guest.runOk(
      'for t in mount umount fsfreeze blockdev losetup sync dd mkfs.ext4 e2fsck mkfs.xfs xfs_repair; do readlink -f "$(command -v $t)"; done',
    );
    expect(tools).not.toMatch(/busybox/);
    expect(tools.trim().split('\n')).toHaveLength(11);
    // ...and they are what runs: busybox's ash would prefer its own applets, so the shell is dash.
    expect(await guest.runOk('readlink -f /proc/$$/exe; mount --version; sync --version | head -1')).toMatch(
      /^\/usr\/bin\/dash\nmount from util-linux [\s\S]*\(GNU coreutils\)/,
    );
    await guest.runOk('sync -f /tmp && dd if=/proc/version of=/dev/null iflag=nocache status=none && test -x /usr/bin/arraylab-agent');

    // The agent's port: what the guest writes to /dev/virtio-ports/org.arraylab.agent arrives on the host socket.
    const port = await listenOnAgentPort(guest.agentSocket);
    try {
      const token = randomBytes(6).toString('hex');
      await guest.runOk(`test -c /dev/virtio-ports/org.arraylab.agent && echo hello-${token} > /dev/virtio-ports/org.arraylab.agent`);
      await expect.poll(() => port.received(), { timeout: 10_000 }).toContain(`hello-${token}`);
    } finally {
      port.socket.destroy();
    }

    // A command that hangs times out; stop() still powers the guest off (Ctrl-C, then poweroff).
    await expect(guest.run('sleep 600', { timeoutMs: 1500 })).rejects.toThrow(/command did not finish: sleep 600/);
    const exit = await guest.stop();
    expect(exit.code).toBe(0); // powered off, not killed
    await expect(guest.run('true')).rejects.toThrow(/qemu exited/);
    expect(qemuPidsNamed('plain')).toEqual([]);
  });

  it('fails to launch with the reason qemu gives when a disk cannot be attached, and leaves no qemu behind', async () => {
    const array = await lab();
    const err = await launchGuest({
      name: 'noexport',
      kernel: image.kernel,
      initrd: image.initrd,
      log,
      disks: [{ via: 'nbd', host: '127.0.0.1', port: array.nbdPort, export: 'no-such-volume' }],
    }).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/guest noexport did not boot to its shell: .*qemu exited \(code 1\); qemu said: .*no-such-volume/s);
    expect(qemuPidsNamed('noexport')).toEqual([]);
  });
});

describe('guest with an array volume', () => {
  it('over NBD: the guest makes an ext4 filesystem and writes a file, and the host reads it back from the volume', async () => {
    const array = await lab();
    await cliOk(array, ['volume', 'create', 'vmnbd', '--size', '64MiB']);
    const content = `written in the guest ${randomBytes(8).toString('hex')}`;

    const started = performance.now();
    const guest = await boot({ name: 'nbd1', disks: [{ via: 'nbd', host: '127.0.0.1', port: array.nbdPort, export: 'vmnbd' }] });
    expect((await guest.runOk('cat /sys/block/vda/serial')).trim()).toBe('vmnbd');
    await guest.runOk('mkfs.ext4 -q -F /dev/vda && mount /dev/vda /mnt');
    const mountedMs = performance.now() - started;
    console.log(`guest nbd1: launch to mounted ext4 on the array volume ${(mountedMs / 1000).toFixed(2)} s (target 10 s)`);
    await guest.runOk(`printf '%s' '${content}' > /mnt/f && sync && umount /mnt`);
    expect((await guest.stop()).code).toBe(0);

    // The host's view of the volume: a copy over NBD, checked and read with e2fsprogs.
    const dir = makeTempDir('arraylab-vm-');
    const copy = join(dir, 'vmnbd.raw');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', array.nbdUri('vmnbd'), copy]);
    await run('e2fsck', ['-fn', copy]); // throws unless clean
    const { stdout } = await run('debugfs', ['-R', 'cat /f', copy]);
    expect(stdout).toBe(content);
  });

  it('over iSCSI: the guest sees the volume with its WWN, makes an xfs filesystem, and the host reads the file back', async () => {
    const array = await lab();
    await cliOk(array, ['volume', 'create', 'vmiscsi', '--size', '320MiB']);
    const shown = await cliJson(array, ['volume', 'show', 'vmiscsi']);
    const wwn = String(shown.wwn);
    const portal = iscsiPortalOf(array);
    const lun = await lunOf(array, 'vmiscsi');
    const content = `xfs in the guest ${randomBytes(8).toString('hex')}`;

    const started = performance.now();
    const guest = await boot({
      name: 'iscsi1',
      disks: [{ via: 'iscsi', portal: `${portal.host}:${portal.port}`, targetName: portal.targetName, lun }],
    });
    const wwid = (await guest.runOk('cat /sys/block/sda/device/wwid')).trim();
    console.log(`guest iscsi1: /sys/block/sda/device/wwid = ${wwid}; array wwn = ${wwn}`);
    expect(wwid.toLowerCase()).toBe(`naa.${wwn.replace(/^naa\./i, '')}`.toLowerCase());
    await guest.runOk('mkfs.xfs -q -f /dev/sda && mount /dev/sda /mnt', { timeoutMs: 90_000 });
    console.log(`guest iscsi1: launch to mounted xfs on the array volume ${((performance.now() - started) / 1000).toFixed(2)} s`);
    await guest.runOk(`printf '%s' '${content}' > /mnt/f && sync && umount /mnt`);
    expect((await guest.stop()).code).toBe(0);

    const dir = makeTempDir('arraylab-vm-');
    const copy = join(dir, 'vmiscsi.raw');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', array.nbdUri('vmiscsi'), copy]);
    await run('xfs_repair', ['-n', copy]); // throws unless clean
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    await run('mount', ['-o', 'ro,loop', copy, mnt]);
    cleanups.push(async () => {
      await run('umount', [mnt]).catch(() => undefined);
      rmSync(mnt, { recursive: true, force: true });
    });
    const { stdout } = await run('cat', [join(mnt, 'f')]);
    expect(stdout).toBe(content);
  });
});

/** Pids of qemu processes started with -name NAME. */
function qemuPidsNamed(name: string): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`qemu-system-x86_64\0-name\0${name}\0`);
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

/** The LUN a volume has on the array's iSCSI target (no host affinity: the default LUN map). */
async function lunOf(array: Arraylab, volume: string): Promise<number> {
  const hosts = await cliJson(array, ['host', 'list']);
  const entry = (hosts.defaultLuns as Array<{ lun: number; volume: string }> | undefined)?.find((d) => d.volume === volume);
  if (entry === undefined) throw new Error(`arraylab host list --json maps no LUN to ${volume}: ${JSON.stringify(hosts)}`);
  return entry.lun;
}
