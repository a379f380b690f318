/**
 * `arraylab vm start|list|console|stop` with a real arraylab: a detached qemu guest with one
 * volume over NBD and one over iSCSI, which it sees as /dev/vda (the export name as serial) and
 * /dev/sda (the array's WWN); commands through the console socket; a clean poweroff. Errors:
 * unknown volume, a name taken, stop of an unknown VM, a bad --attach. Under host affinity on an
 * array with nbd.tls.psk: --nbd-psk-file attaches the host's volume over TLS-PSK; without it, or
 * with a volume the host does not map, vm start refuses before qemu runs, naming the fix.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { stopDetachedGuest } from '../../emulator/vm/detached.js';
import { isQemuAlive, listRecords } from '../../emulator/vm/registry.js';
import { cliJson, makeTempDir, REPO_ROOT, runCli, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';

const run = promisify(execFile);
const log = pino({ level: 'warn' });
let array: Arraylab;
let runDir: string;

/** Every VM this file started is stopped, also when a test failed or the worker exits. */
async function stopAll(): Promise<void> {
  for (const rec of listRecords(runDir)) await stopDetachedGuest(rec, { force: true, runDir, log });
}
process.once('exit', () => {
  if (!runDir) return;
  for (const rec of listRecords(runDir)) if (isQemuAlive(rec)) process.kill(rec.pid, 'SIGKILL');
});

beforeAll(async () => {
  requireTool('qemu-system-x86_64');
  await run('bash', [join(REPO_ROOT, 'vm-images', 'build.sh')], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 });
  runDir = join(makeTempDir('arraylab-vms-'), 'vms');
  array = await startArraylab();
  for (const v of ['v1', 'v2']) await cliJson(array, ['volume', 'create', v, '--size', '64MiB']);
}, 600_000);

afterEach(async () => {
  await stopAll();
}, 60_000);
afterAll(async () => {
  await stopAll();
  await array?.stop();
}, 60_000);

function vm(args: string[], opts: { stdin?: string } = {}) {
  return array.cli(['vm', ...args, '--run-dir', runDir], { timeoutMs: 150_000, ...opts });
}

describe('arraylab vm', () => {
  it('starts a guest with an NBD and an iSCSI volume, lists it, runs commands on its console, and powers it off', async () => {
    const started = await vm(['start', 'g1', '--attach', 'v1,v2:iscsi', '--memory', '768', '--wait-agent', '--json']);
    expect(started.stderr).toBe('');
    expect(started.code).toBe(0);
    const rec = JSON.parse(started.stdout) as {
      name: string;
      pid: number;
      bootMs: number;
      disks: Array<{ volume: string; via: string; guestDevice: string }>;
      sockets: { console: string; qmp: string; agent: string };
    };
    console.log(`vm g1: launch to shell prompt ${(rec.bootMs / 1000).toFixed(2)} s`);
    expect(rec.bootMs).toBeGreaterThan(0);
    expect(rec.bootMs).toBeLessThan(90_000);
    // The agent in the guest came up on its own (init starts it for `vm start`) and answered.
    expect((rec as unknown as { agentHello: { hostname: string; version: string } }).agentHello).toMatchObject({
      hostname: 'arraylab-guest',
      version: expect.any(String),
    });
    expect(rec.disks.map((d) => [d.volume, d.via, d.guestDevice])).toEqual([
      ['v1', 'nbd', '/dev/vda'],
      ['v2', 'iscsi', '/dev/sda'],
    ]);
    for (const s of Object.values(rec.sockets)) expect(existsSync(s)).toBe(true);
    // Detached: qemu outlives the CLI that started it.
    expect(isQemuAlive(rec)).toBe(true);
    expect(readFileSync(`/proc/${rec.pid}/cmdline`, 'utf8').split('\0')).toContain('g1');

    const list = JSON.parse((await vm(['list', '--json'])).stdout) as Array<{
      name: string;
      state: string;
      pid: number;
      uptimeSeconds: number;
      sockets: { agent: string };
    }>;
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ name: 'g1', state: 'running', pid: rec.pid, sockets: { agent: rec.sockets.agent } });
    const table = (await vm(['list'])).stdout;
    expect(table).toMatch(/^NAME\s+STATE\s+PID\s+UPTIME\s+BOOT\s+DISKS/);
    expect(table).toContain('v1:nbd:vda,v2:iscsi:sda');

    // The guest sees the NBD volume by its export name and the iSCSI one by the array's WWN.
    const wwn = String((await cliJson(array, ['volume', 'show', 'v2'])).wwn).toLowerCase();
    const seen = await vm([
      'console',
      'g1',
      '--command',
      'cat /sys/block/vda/serial; echo; cat /sys/block/sda/device/wwid; blockdev --getsize64 /dev/vda /dev/sda',
    ]);
    expect(seen.stderr).toBe('');
    expect(seen.stdout.trim().split('\n')).toEqual(['v1', `naa.${wwn.replace(/^naa\./, '')}`, String(64 << 20), String(64 << 20)]);

    // Written in the guest, read back on the array.
    await vm(['console', 'g1', '-c', 'printf from-the-guest | dd of=/dev/vda bs=512 conv=sync,fsync status=none']);
    const { stdout: onArray } = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -v 0 14', array.nbdUri('v1')]);
    expect(onArray).toContain('66 72 6f 6d 2d 74 68 65 2d 67 75 65 73 74  from.the.guest'); // qemu-io -v: hex, then text

    // A failing command: its output, then exit 1 with the status.
    const failed = await vm(['console', 'g1', '-c', 'echo oops; exit 3']);
    expect(failed.code).toBe(1);
    expect(failed.stdout).toBe('oops\n');
    expect(failed.stderr).toBe('arraylab: vm g1: `echo oops; exit 3` exited 3\n');

    // Plain attach, fed from a pipe: what it types runs, and the command detaches once the console is quiet.
    const attached = await vm(['console', 'g1'], { stdin: 'echo marker-$((6*7))\n' });
    expect(attached.code).toBe(0);
    expect(attached.stdout).toContain('marker-42');

    // The name is taken while it runs.
    const dup = await vm(['start', 'g1', '--attach', 'v1']);
    expect(dup.code).toBe(1);
    expect(dup.stderr).toMatch(
      /^arraylab: vm name g1 is taken: it is running \(pid \d+, since .*\); stop it with: arraylab vm stop g1, or choose another name\n$/,
    );

    const stopped = await vm(['stop', 'g1', '--json']);
    expect(JSON.parse(stopped.stdout)).toMatchObject({ name: 'g1', stopped: 'powered off' });
    expect(isQemuAlive(rec)).toBe(false);
    expect(existsSync(rec.sockets.console)).toBe(false);
    expect(JSON.parse((await vm(['list', '--json'])).stdout)).toEqual([]);
  }, 240_000);

  it('refuses unknown volumes (listing those there are), a stop of an unknown VM, and a bad --attach, and leaves no qemu', async () => {
    const unknown = await vm(['start', 'g2', '--attach', 'v1,nope']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toBe(
      `arraylab: unknown volume nope on the array at ${array.apiAddress} (it has demo, v1, v2); create it with: arraylab volume create nope --size 1GiB\n`,
    );
    expect(listRecords(runDir)).toEqual([]);

    const stop = await vm(['stop', 'nosuch']);
    expect(stop.code).toBe(1);
    expect(stop.stderr).toBe(
      `arraylab: no vm named nosuch in ${runDir} (there are none); list them with: arraylab vm list, or give the --run-dir it was started with\n`,
    );

    const bad = await vm(['start', 'g2', '--attach', 'v1:fc']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--attach: "v1:fc" is not VOLUME or VOLUME:nbd or VOLUME:iscsi/);

    const badName = await vm(['start', 'bad/name', '--attach', 'v1']);
    expect(badName.code).toBe(1);
    expect(badName.stderr).toMatch(/vm name "bad\/name" is not valid; use 1 to 63 letters/);

    const noArray = await runCli(['vm', 'start', 'g3', '--attach', 'v1', '--api', '127.0.0.1:1', '--run-dir', runDir]);
    expect(noArray.code).toBe(1);
    expect(noArray.stderr).toMatch(/127\.0\.0\.1:1/);
  }, 60_000);
});

describe('arraylab vm start --nbd-psk-file', () => {
  let psk: Arraylab;
  afterAll(async () => {
    await stopAll();
    await psk?.stop();
  }, 60_000);

  it("attaches its host's volume over NBD TLS-PSK under host affinity, and refuses NBD without an identity", async () => {
    psk = await startArraylab({ config: { nbd: { tls: { psk: true } } } });
    for (const v of ['mine', 'theirs']) await cliJson(psk, ['volume', 'create', v, '--size', '16MiB']);
    await cliJson(psk, ['host', 'add', 'web', '--initiator', 'iqn.2026-01.lab.test:web']);
    await cliJson(psk, ['host', 'map', 'web', 'mine']);
    const set = await cliJson(psk, ['host', 'set', 'web', '--nbd-psk']);
    const keyFile = join(runDir, '..', 'web.psk');
    writeFileSync(keyFile, `${(set.nbdPsk as { pskFileLine: string }).pskFileLine}\n`, { mode: 0o600 });
    const start = (name: string, args: string[]) => psk.cli(['vm', 'start', name, ...args, '--run-dir', runDir], { timeoutMs: 150_000 });

    // Refused before qemu runs: no identity, and a volume its host does not map.
    const anon = await start('p0', ['--attach', 'mine']);
    expect(anon.code).toBe(1);
    expect(anon.stderr).toBe(
      `arraylab: vm p0: host affinity is on at ${psk.apiAddress}, and an NBD client without a TLS identity sees no volume (here: mine); give the VM's host a key with: arraylab host set HOST --nbd-psk, save the line it prints in a file and start with --nbd-psk-file FILE (or attach via iscsi)\n`,
    );
    const other = await start('p0', ['--attach', 'theirs', '--nbd-psk-file', keyFile]);
    expect(other.stderr).toBe('arraylab: vm p0: volume theirs is not mapped to host web (NBD PSK identity web); map it with: arraylab host map web theirs\n');
    expect(listRecords(runDir)).toEqual([]);

    const ok = await start('p1', ['--attach', 'mine', '--nbd-psk-file', keyFile, '--json']);
    expect(ok.stderr).toBe('');
    const rec = JSON.parse(ok.stdout) as { argv: string[]; disks: Array<{ attach: { tls?: { identity: string; pskDir: string } } }> };
    const pskDir = join(runDir, 'p1', 'nbd-psk');
    expect(rec.disks[0]!.attach.tls).toEqual({ identity: 'web', pskDir });
    expect(rec.argv).toContain(`tls-creds-psk,id=tls0,endpoint=client,dir=${pskDir},username=web`);
    expect(statSync(join(pskDir, 'keys.psk')).mode & 0o777).toBe(0o600);
    // The guest's disk is the host's volume, read and written over TLS.
    const serial = await psk.cli([
      'vm',
      'console',
      'p1',
      '--run-dir',
      runDir,
      '-c',
      'cat /sys/block/vda/serial && echo tls-psk-ok | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null && echo written',
    ]);
    expect(serial.stdout).toBe('minewritten\n');
    await psk.cli(['vm', 'stop', 'p1', '--run-dir', runDir]);
    expect(existsSync(pskDir)).toBe(false);
  }, 240_000);
});
