/**
 * The agent in a real guest (issue 6): `arraylab-agent guest-serve` runs in a qemu guest on the
 * virtio-serial port; the host's `arraylab-agent --guest SOCKET` does backup management against
 * a real arraylab. The guest finds its NBD volume as /dev/vda by the virtio serial, and a backup
 * with --lock freeze of an ext4 mounted in the guest, with a writer running, gives a backup
 * volume that is clean (e2fsck -fn) when the host reads it over NBD.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { launchGuest, type Guest } from '../../../emulator/vm/Guest.js';
import { readGuestImage, type GuestImage } from '../../../emulator/vm/image.js';
import { cliOk, makeTempDir, REPO_ROOT, startArraylab, type Arraylab } from '../../support/arraylab.js';
import { requireTool } from '../../support/tools.js';
import { waitFor } from '../../support/wait.js';

const run = promisify(execFile);
const log = pino({ level: process.env.ARRAYLAB_LOG_LEVEL ?? 'warn' });
const AGENT_CLI = join(REPO_ROOT, 'dist', 'agent', 'cli', 'arraylab-agent.js');

let image: GuestImage;
const guests = new Set<Guest>();
const labs = new Set<Arraylab>();

beforeAll(async () => {
  requireTool('qemu-img');
  requireTool('e2fsck');
  requireTool('debugfs');
  // Cached: rebuilds only when dist/ (this agent included), the script or the packages changed.
  const { stdout } = await run('bash', [join(REPO_ROOT, 'vm-images', 'build.sh')], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 });
  console.log(stdout.trim());
  image = readGuestImage();
  requireTool('qemu-system-x86_64');
}, 600_000);

// Guests always stopped (guest-serve dies with them: its freeze guards thaw), arrays stopped.
afterEach(async () => {
  await Promise.all([...guests].map((g) => g.stop()));
  guests.clear();
  await Promise.all([...labs].map((l) => l.stop()));
  labs.clear();
});
afterAll(async () => {
  await Promise.all([...guests].map((g) => g.stop()));
});

interface AgentRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The host's arraylab-agent CLI (dist/), with the guest's socket. */
function agent(args: string[], timeoutMs = 120_000): Promise<AgentRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [AGENT_CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: '/' });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function agentJson(args: string[]): Promise<unknown> {
  const r = await agent([...args, '--json']);
  if (r.code !== 0) throw new Error(`arraylab-agent ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

describe('the agent in a guest over virtio-serial', () => {
  it("maps the guest's NBD disk by its virtio serial, and backs up a frozen ext4 in the guest with a writer running", async () => {
    const timings: string[] = [];
    const t0 = performance.now();
    const lap = (what: string) => timings.push(`${what} ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    const array = await startArraylab();
    labs.add(array);
    await cliOk(array, ['volume', 'create', 'guesttv', '--size', '64MiB']);
    await cliOk(array, ['volume', 'create', 'guestbv', '--size', '64MiB']);
    const guest = await launchGuest({
      name: 'agentvm',
      kernel: image.kernel,
      initrd: image.initrd,
      log,
      disks: [{ via: 'nbd', host: '127.0.0.1', port: array.nbdPort, export: 'guesttv' }],
    });
    guests.add(guest);
    lap('booted');

    const content = `frozen in the guest ${randomBytes(8).toString('hex')}`;
    await guest.runOk(`mkfs.ext4 -q -F /dev/vda && mkdir -p /mnt/tv && mount /dev/vda /mnt/tv && printf '%s' '${content}' > /mnt/tv/f && sync`);
    // A writer that keeps appending (blocked while frozen, then goes on).
    await guest.runOk(`(i=0; while :; do i=$((i+1)); echo "line $i" >> /mnt/tv/log; sleep 0.05; done) >/dev/null 2>&1 & echo $! > /tmp/writer.pid`);
    await guest.runOk(`arraylab-agent guest-serve >/tmp/ga.log 2>&1 & echo $! > /tmp/ga.pid`);
    lap('guest-serve started');

    // Wait for the agent in the guest (Node starts slowly under TCG).
    const common = ['--guest', guest.agentSocket, '--array', array.apiAddress, '--state-dir', makeTempDir('arraylab-guestagent-')];
    const guestStatus = async () => {
      const r = await agent([...common, 'guest-status', '--json'], 30_000);
      return r.code === 0 ? (JSON.parse(r.stdout) as Record<string, unknown>) : null;
    };
    const hello = await waitFor(guestStatus, (h) => h !== null, { timeoutMs: 60_000, intervalMs: 500 });
    if (!hello) throw new Error(`the guest agent did not come up; its log: ${(await guest.run('cat /tmp/ga.log')).output}`);
    expect(hello).toMatchObject({
      hostname: (await guest.runOk('uname -n')).trim(),
      kernel: image.kernelRelease,
      hookTimeoutMs: 60_000,
      freezeDeadlineMs: 30_000,
    });
    expect(hello.pid).toBe(Number((await guest.runOk('cat /tmp/ga.pid')).trim()));
    lap('guest agent answered');

    // An earlier host that died mid-line, after garbage and 2 MiB without a newline: the next
    // connection resyncs (each CLI run above and below is a new connection through the port).
    await new Promise<void>((resolve, reject) => {
      const s = connect(guest.agentSocket);
      s.once('error', reject);
      s.once('connect', () => s.end(Buffer.concat([Buffer.from('junk\n{"id":1,"method":"unl'), Buffer.alloc(2 << 20, 0x41)])));
      s.once('close', () => resolve());
    });

    // Devices: the guest's /dev/vda is guesttv, known by its virtio serial (= export name).
    const devices = await agentJson([...common, 'devices']);
    expect(devices).toEqual([{ volume: 'guesttv', device: '/dev/vda', how: 'virtio' }]);

    await agentJson([...common, 'register', 'transaction', 'guesttv', '--lock', 'freeze']);
    await agentJson([...common, 'register', 'backup', 'guestbv']);
    const before = Number((await guest.runOk('wc -l < /mnt/tv/log')).trim());
    const report = (await agentJson([...common, 'backup', 'guesttv'])) as {
      ok: boolean;
      volumes: Array<{ ok: boolean; error?: string; generation?: { number: number; backupVolume: string; prep: string; status: string } }>;
    };
    lap('backup done');
    expect(report.volumes[0]!.error).toBeUndefined();
    expect(report.ok).toBe(true);
    expect(report.volumes[0]!.generation).toMatchObject({ number: 1, backupVolume: 'guestbv', prep: 'freeze', status: 'held' });
    const history = (await agentJson([...common, 'history', 'guesttv'])) as Array<{ number: number; generation: number }>;
    expect(history.map((h) => [h.number, h.generation])).toEqual([[1, 1]]);

    // Thawed: the writer went on, and a new write completes at once.
    await guest.runOk('timeout 10 touch /mnt/tv/after-backup');
    await new Promise((res) => setTimeout(res, 500));
    expect(Number((await guest.runOk('wc -l < /mnt/tv/log')).trim())).toBeGreaterThan(before);
    // guest-serve is still the one that started (it served every call).
    expect((await guest.runOk('kill -0 $(cat /tmp/ga.pid) && echo alive')).trim()).toBe('alive');
    expect(await guest.runOk('cat /tmp/ga.log')).not.toMatch(/"level":(50|60)/);

    // The backup volume, read on the host over NBD: a clean ext4 with the file as of the freeze.
    const dir = makeTempDir('arraylab-guestbv-');
    const copy = join(dir, 'guestbv.raw');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', array.nbdUri('guestbv'), copy]);
    await run('e2fsck', ['-fn', copy]); // throws unless clean
    const { stdout } = await run('debugfs', ['-R', 'cat /f', copy]);
    expect(stdout).toBe(content);
    const logCopy = (await run('debugfs', ['-R', 'cat /log', copy])).stdout;
    expect(logCopy).toMatch(/^line 1\n/);
    expect(logCopy.endsWith('\n')).toBe(true); // whole lines: the writer was stopped between writes
    lap('backup volume checked');

    // --guest with --agent, or with a flag that belongs to guest-serve, is a usage error.
    const both = await agent([...common, '--agent', '127.0.0.1:1', 'devices']);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('--guest cannot be used with --agent');
    const hooks = await agent([...common, '--hooks-dir', '/x', 'devices']);
    expect(hooks.code).toBe(2);
    expect(hooks.stderr).toContain('--hooks-dir applies in the guest with --guest');

    await guest.runOk('kill $(cat /tmp/writer.pid)');
    console.log(`agent in a guest: ${timings.join(', ')}`);
  }, 240_000);
});
