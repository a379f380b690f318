/**
 * `arraylab-agent serve --guest SOCKET`: the daemon on a VM's host, its host side the agent in the
 * guest. The guest here is guest-serve's GuestServer in-process behind a socket that behaves like
 * qemu's end of the virtio-serial port, with a real LinuxHost on a loop ext4; the daemon is the
 * real CLI against a real array, driven by remote callers (--agent).
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestServer } from '../../../agent/guest/GuestServer.js';
import { LinuxHost } from '../../../agent/host/LinuxHost.js';
import type { HostSide, LockRecord } from '../../../agent/types.js';
import { AGENT_CLI } from '../../support/agentLab.js';
import { makeTempDir, startArraylab, type Arraylab } from '../../support/arraylab.js';
import { cleanupLoops, makeLoopFs, writeCompletes, type LoopFs } from '../host/loopFs.js';
import { FakeQemuPort } from './fakeQemuPort.js';

const run = promisify(execFile);
const log = pino({ level: process.env.ARRAYLAB_LOG_LEVEL ?? 'silent' });

let lab: Arraylab;
let fs: LoopFs;
let port: FakeQemuPort;
let server: GuestServer;
let daemon: ChildProcess;
let remote: string[];
let guestHooks: string;
/** What the guest's host side locked, as the guest saw it. */
const locked: LockRecord[] = [];

async function agent(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [AGENT_CLI, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

beforeAll(async () => {
  lab = await startArraylab();
  for (const name of ['tv', 'bv']) await lab.cli(['volume', 'create', name, '--size', '16MiB']);
  const dir = makeTempDir('agent-serve-guest-');
  mkdirSync(join(dir, 'hooks'));

  // The guest: its device map says the loop ext4 is the transaction volume.
  fs = makeLoopFs('ext4');
  writeFileSync(join(dir, 'devices'), `tv ${fs.device}\n`);
  const linux = new LinuxHost({ log, deviceMapFile: join(dir, 'devices'), hooksDir: join(dir, 'hooks'), hookTimeoutMs: 10_000, freezeDeadlineMs: 30_000 });
  const host = new Proxy(linux, {
    get(target, prop, receiver) {
      if (prop !== 'lockTransaction') return Reflect.get(target, prop, receiver);
      return async (...args: Parameters<HostSide['lockTransaction']>) => {
        const rec = await target.lockTransaction(...args);
        locked.push(rec);
        return rec;
      };
    },
  });
  port = new FakeQemuPort(join(dir, 'agent.sock'));
  await port.listen();
  guestHooks = join(dir, 'hooks');
  server = new GuestServer({ host, port, log, hooksDir: guestHooks, hookTimeoutMs: 10_000, freezeDeadlineMs: 30_000 });
  void server.start();

  const stateDir = join(dir, 'state');
  daemon = spawn(
    process.execPath,
    [AGENT_CLI, 'serve', '--listen', '127.0.0.1:0', '--array', lab.apiAddress, '--state-dir', stateDir, '--guest', port.path, '--json', '--log-level', 'warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let errText = '';
  daemon.stderr!.on('data', (d) => (errText += d));
  const first = await new Promise<string>((resolve, reject) => {
    createInterface({ input: daemon.stdout! }).once('line', resolve);
    daemon.once('exit', () => reject(new Error(`arraylab-agent serve --guest exited: ${errText}`)));
  });
  const info = JSON.parse(first) as { listen: { host: string; port: number }; guest: string };
  expect(info.guest).toBe(port.path);
  remote = ['--agent', `${info.listen.host}:${info.listen.port}`, '--agent-token-file', join(stateDir, 'agent.token'), '--json'];
});

afterAll(async () => {
  if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
  await server?.stop();
  cleanupLoops();
  await lab?.stop();
});

describe('arraylab-agent serve --guest', () => {
  it("answers remote callers with the guest's devices, and backs up with the freeze done in the guest", async () => {
    const devices = JSON.parse((await agent(['devices', ...remote])).stdout) as Array<{ volume: string; device: string; how: string }>;
    expect(devices).toContainEqual(expect.objectContaining({ volume: 'tv', device: fs.device, how: 'map' }));

    expect((await agent(['register', 'transaction', 'tv', '--lock', 'freeze', ...remote])).code).toBe(0);
    expect((await agent(['register', 'backup', 'bv', ...remote])).code).toBe(0);
    const backup = await agent(['backup', 'tv', ...remote]);
    expect(backup.code, backup.stderr).toBe(0);
    expect(JSON.parse(backup.stdout)).toMatchObject({ ok: true, volumes: [{ volume: 'tv', ok: true, generation: { number: 1, status: 'held' } }] });
    // The guest froze its filesystem for the copy and thawed it after.
    expect(locked.map((r) => [r.volume, r.device, r.action])).toEqual([['tv', fs.device, 'frozen']]);
    expect(await writeCompletes(fs.mountPoint, 5000)).toBe(true);
  });

  it("doctor checks root, tools and hooks in the guest, with guest-serve's hooks directory", async () => {
    type Check = { name: string; ok: boolean; detail: string; fix: string };
    const doctor = async () => JSON.parse((await agent(['doctor', ...remote])).stdout) as Check[];
    const first = await doctor();
    expect(first.find((c) => c.name === 'guest root')).toMatchObject({ ok: true });
    expect(first.find((c) => c.name === 'guest tools')).toMatchObject({ ok: true, detail: expect.stringMatching(/fsfreeze/) });
    expect(first.find((c) => c.name === 'guest hooks')).toMatchObject({ ok: true, detail: `${guestHooks} holds no scripts` });
    // This host's own root/tools/hooks are not what matters with --guest.
    expect(first.map((c) => c.name)).not.toContain('hooks');

    writeFileSync(join(guestHooks, 'pre-backp'), '#!/bin/sh\n', { mode: 0o755 });
    const second = await doctor();
    expect(second.find((c) => c.name === 'guest hooks')).toMatchObject({ ok: false, detail: expect.stringMatching(/pre-backp is not a phase/) });
    rmSync(join(guestHooks, 'pre-backp'));
  });

  it('refuses host-side settings that belong to guest-serve, before starting', async () => {
    const r = await agent(['serve', '--guest', port.path, '--hook-timeout', '5']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--hook-timeout applies in the guest with --guest; give it to `arraylab-agent guest-serve`/);
  });
});
