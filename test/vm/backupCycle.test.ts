/**
 * The end-to-end test of issue 6, over NBD and over iSCSI: a guest boots on a transaction
 * volume with its agent started by init (arraylab.agent=on); in the guest an ext4 is made,
 * mounted and written by a writer; from the host, `arraylab-agent --guest SOCK backup tv`
 * has the in-guest agent freeze the filesystem while the array copies, and thaw it; the backup
 * volume, read on the host (FUSE + loop, through a throwaway overlay), is a clean ext4 whose
 * writer file is a whole-line prefix of the live one; after the files in the guest are
 * damaged, `restore tv` (the guest agent unmounts, the array copies back, the agent remounts)
 * gives back exactly the backup's files inside the guest. Timings are printed.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { waitForGuestAgent } from '../../proto/guest/waitAgent.js';
import { launchGuest, type Guest, type GuestDisk } from '../../emulator/vm/Guest.js';
import { readGuestImage, type GuestImage } from '../../emulator/vm/image.js';
import { cliJson, cliOk, makeTempDir, REPO_ROOT, startArraylab, type Arraylab } from '../support/arraylab.js';
import { attachNbd } from '../support/blockAttach.js';
import { iscsiPortalOf } from '../support/iscsi.js';
import { requireTool } from '../support/tools.js';
import { waitFor } from '../support/wait.js';
import { checkWriterLines, hostAgent, hostAgentJson, sha256, STOP_WRITER, startWriterScript, stopwatch } from './guestBackup.js';

const run = promisify(execFile);
const log = pino({ level: process.env.ARRAYLAB_LOG_LEVEL ?? 'warn' });
const FILES = ['writer.log', 'data.bin'] as const;

let image: GuestImage;
const guests = new Set<Guest>();
const arrays = new Set<Arraylab>();
let undo: Array<() => unknown> = [];

beforeAll(async () => {
  for (const tool of ['qemu-system-x86_64', 'qemu-storage-daemon', 'qemu-img', 'losetup', 'mount', 'umount', 'e2fsck']) requireTool(tool);
  // Cached: rebuilds only when dist/ (the agent in the image), the script or the packages changed.
  const { stdout } = await run('bash', [join(REPO_ROOT, 'vm-images', 'build.sh')], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 });
  console.log(stdout.trim());
  image = readGuestImage();
}, 600_000);

// Host mounts and FUSE exports first (last made, first undone), then the guests (their
// guest-serve dies with them, so no freeze outlives a failure), then the arrays.
async function cleanup(): Promise<void> {
  const failures: string[] = [];
  for (const fn of undo.reverse()) {
    try {
      await fn();
    } catch (err) {
      failures.push(String(err));
    }
  }
  undo = [];
  await Promise.all([...guests].map((g) => g.stop()));
  guests.clear();
  await Promise.all([...arrays].map((a) => a.stop().catch((err: unknown) => failures.push(String(err)))));
  arrays.clear();
  if (failures.length) throw new Error(`cleanup: ${failures.join('; ')}`);
}
afterEach(cleanup, 60_000);
afterAll(cleanup, 60_000);

/** The LUN a volume has on the array's iSCSI target (no host affinity: the default LUN map). */
async function lunOf(array: Arraylab, volume: string): Promise<number> {
  const hosts = await cliJson(array, ['host', 'list']);
  const entry = (hosts.defaultLuns as Array<{ lun: number; volume: string }> | undefined)?.find((d) => d.volume === volume);
  if (entry === undefined) throw new Error(`arraylab host list --json maps no LUN to ${volume}: ${JSON.stringify(hosts)}`);
  return entry.lun;
}

/** Lines in the guest's writer file now. */
async function guestLines(guest: Guest): Promise<number> {
  return Number((await guest.runOk('wc -l < /mnt/tv/writer.log')).trim());
}

async function waitForLines(guest: Guest, atLeast: number, ms: number): Promise<number> {
  // The file appears with the writer's first line.
  const lines = async () => Number((await guest.runOk('cat /mnt/tv/writer.log 2>/dev/null | wc -l')).trim());
  const n = await waitFor(lines, (k) => k >= atLeast, { timeoutMs: ms, intervalMs: 300 });
  if (n < atLeast)
    throw new Error(
      `the writer in the guest has ${n} lines after ${ms} ms, expected at least ${atLeast}; its output: ${await guest.runOk('cat /tmp/writer.out; ls -l /tmp/writer.*')}`,
    );
  return n;
}

/** sha256 of each file in the guest, by sha256sum. */
async function guestSums(guest: Guest, files: readonly string[]): Promise<Record<string, string>> {
  const out = await guest.runOk(`cd /mnt/tv && sha256sum ${files.join(' ')}`);
  const sums: Record<string, string> = {};
  for (const line of out.trim().split('\n')) {
    const m = /^([0-9a-f]{64})\s+(\S+)$/.exec(line.trim());
    if (m) sums[m[2]!] = m[1]!;
  }
  return sums;
}

interface BackupReport {
  ok: boolean;
  volumes: Array<{ volume: string; ok: boolean; error?: string; generation?: { number: number; backupVolume: string; prep: string; status: string } }>;
}

describe.each([{ via: 'nbd' as const }, { via: 'iscsi' as const }])('a VM backup and restore cycle over $via', ({ via }) => {
  it('backs up a frozen ext4 with a writer running in the guest, checks the copy on the host, and restores it into the guest', async () => {
    const sw = stopwatch();
    const array = await startArraylab();
    arrays.add(array);
    for (const v of ['tv', 'bv1', 'bv2']) await cliOk(array, ['volume', 'create', v, '--size', '128MiB']);

    let disk: GuestDisk;
    let dev: string;
    if (via === 'nbd') {
      disk = { via: 'nbd', host: '127.0.0.1', port: array.nbdPort, export: 'tv' };
      dev = '/dev/vda';
    } else {
      const portal = iscsiPortalOf(array);
      disk = { via: 'iscsi', portal: `${portal.host}:${portal.port}`, targetName: portal.targetName, lun: await lunOf(array, 'tv') };
      dev = '/dev/sda';
    }
    sw.lap('array');

    // 1. Boot with tv attached; init starts guest-serve on the agent port.
    const guest = await launchGuest({ name: `cycle-${via}`, kernel: image.kernel, initrd: image.initrd, log, disks: [disk], cmdline: 'arraylab.agent=on' });
    guests.add(guest);
    sw.lap('boot');
    const hello = await waitForGuestAgent(guest.agentSocket, 120_000, log);
    sw.lap('agent up');
    const status = await hostAgentJson<{ hostname: string; kernel: string; pid: number }>(['--guest', guest.agentSocket, 'guest-status']);
    expect(status).toMatchObject({ hostname: (await guest.runOk('uname -n')).trim(), kernel: image.kernelRelease, pid: hello.pid });
    const common = ['--guest', guest.agentSocket, '--array', array.apiAddress, '--state-dir', makeTempDir('arraylab-cycle-state-')];
    const devices = await hostAgentJson<Array<{ volume: string; device: string; how: string; wwn?: string }>>([...common, 'devices']);
    // Over iSCSI the guest sees the array's WWN, which the agent reports (and pins volumes to).
    const wwn = via === 'iscsi' ? { wwn: (await cliJson(array, ['volume', 'show', 'tv'])).wwn } : {};
    expect(devices).toEqual([{ volume: 'tv', device: dev, how: via === 'nbd' ? 'virtio' : 'wwn', ...wwn }]);

    // 2. In the guest: ext4, a file that stays put, and the writer.
    await guest.runOk(`mkfs.ext4 -q -F ${dev} && mkdir -p /mnt/tv && mount ${dev} /mnt/tv && head -c 4194304 /dev/urandom > /mnt/tv/data.bin && sync`, {
      timeoutMs: 90_000,
    });
    await guest.runOk(startWriterScript('/mnt/tv/writer.log'));
    await waitForLines(guest, 10, 30_000);
    sw.lap('mkfs, mount, writer');

    // 3. Backup from the host: the guest agent freezes, the array copies, the agent thaws.
    await hostAgentJson([...common, 'register', 'transaction', 'tv', '--lock', 'freeze', '--generations', '2']);
    await hostAgentJson([...common, 'register', 'backup', 'bv1']);
    await hostAgentJson([...common, 'register', 'backup', 'bv2']);
    const beforeBackup = await guestLines(guest);
    const report = await hostAgentJson<BackupReport>([...common, 'backup', 'tv']);
    const backupS = sw.lap('backup');
    expect(report.volumes[0]?.error).toBeUndefined();
    expect(report.ok).toBe(true);
    const gen = report.volumes[0]!.generation!;
    expect(gen).toMatchObject({ number: 1, prep: 'freeze', status: 'held' });
    expect(['bv1', 'bv2']).toContain(gen.backupVolume);
    const afterBackup = await guestLines(guest);
    // Thawed: the writer goes on (a frozen ext4 would block its next echo for good).
    await waitForLines(guest, afterBackup + 5, 20_000);
    expect((await guest.runOk('grep " /mnt/tv " /proc/mounts')).trim()).toMatch(new RegExp(`^${dev} /mnt/tv ext4 rw`));
    // In the guest, it was guest-serve that froze and then thawed /mnt/tv (its log, JSON lines).
    const agentLog = (await guest.runOk('cat /var/log/arraylab-agent.log'))
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg?: string; volume?: string; mountPoint?: string });
    const froze = agentLog.findIndex((e) => e.msg === 'frozen' && e.volume === 'tv' && e.mountPoint === '/mnt/tv');
    expect(froze, JSON.stringify(agentLog)).toBeGreaterThanOrEqual(0);
    expect(
      agentLog.slice(froze).some((e) => e.msg === 'thawed' && e.volume === 'tv'),
      JSON.stringify(agentLog),
    ).toBe(true);
    const history = await hostAgentJson<Array<{ number: number; generation: number; backupVolume?: string }>>([...common, 'history', 'tv']);
    expect(history.map((h) => [h.number, h.generation])).toEqual([[1, 1]]);

    // 4. The backup volume on the host, read-only (journal replay, if any, into an overlay).
    const dir = makeTempDir('arraylab-cycle-');
    const bv = await attachNbd({ port: array.nbdPort, exportName: gen.backupVolume, dir, overlay: true });
    undo.push(() => bv.detach());
    const fsck = spawnSync('e2fsck', ['-fn', bv.loop], { encoding: 'utf8' });
    expect(fsck.status, `e2fsck -fn of ${gen.backupVolume}:\n${fsck.stdout}${fsck.stderr}`).toBe(0);
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    await run('mount', ['-o', 'ro', bv.loop, mnt]);
    let mounted = true;
    const unmount = async () => {
      if (mounted) await run('umount', [mnt]);
      mounted = false;
    };
    undo.push(unmount);
    const backupLog = readFileSync(join(mnt, 'writer.log'));
    const backupSums = Object.fromEntries(FILES.map((f) => [f, sha256(readFileSync(join(mnt, f)))]));
    await unmount();
    await bv.detach();

    // Every line whole and good, none torn; at least the lines written before the backup began.
    const checked = checkWriterLines(backupLog);
    expect(checked.problem).toBe('');
    expect(checked.lines).toBeGreaterThanOrEqual(beforeBackup);
    // A prefix of the live file, which grew after the thaw.
    const livePrefix = (await guest.runOk(`head -c ${backupLog.length} /mnt/tv/writer.log | sha256sum`)).trim().split(/\s+/)[0];
    expect(livePrefix).toBe(backupSums['writer.log']);
    expect(await guestLines(guest)).toBeGreaterThan(checked.lines);
    sw.lap('backup checked on the host');

    // 5. Stop the writer, damage the files, restore, and check inside the guest.
    await guest.runOk(STOP_WRITER, { timeoutMs: 60_000 });
    const liveSums = await guestSums(guest, FILES);
    expect(liveSums['data.bin']).toBe(backupSums['data.bin']);
    expect(liveSums['writer.log']).not.toBe(backupSums['writer.log']); // the restore has work to do
    await guest.runOk('rm /mnt/tv/data.bin && printf "damaged\\n" > /mnt/tv/writer.log && sync');
    const restore = await hostAgent([...common, 'restore', 'tv', '--json']);
    expect(restore.code, `restore tv: ${restore.stdout}${restore.stderr}`).toBe(0);
    sw.lap('restore');
    expect((await guest.runOk('grep " /mnt/tv " /proc/mounts')).trim()).toMatch(new RegExp(`^${dev} /mnt/tv ext4 rw`));
    expect(await guestSums(guest, FILES)).toEqual(backupSums);
    // The guest's agent served everything without an error of its own.
    expect(await guest.runOk('cat /var/log/arraylab-agent.log')).not.toMatch(/"level":(50|60)/);

    console.log(`backup cycle over ${via}: ${sw.report()} (backup ${backupS.toFixed(1)} s, ${checked.lines} lines in the backup)`);
  }, 300_000);
});
