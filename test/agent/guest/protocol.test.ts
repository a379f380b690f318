/**
 * The guest agent protocol end to end, without a VM: GuestServer with a real LinuxHost on loop
 * devices, behind a unix socket that behaves like qemu's end of the virtio-serial port
 * (fakeQemuPort.ts), driven by GuestHostSide as the host's agent uses it. Real ext4 frozen and
 * unmounted, real hook scripts, a real device copy; stale bytes and over-long lines in both
 * directions; a host that goes away mid-call and comes back.
 */
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { hostname, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GuestHostSide } from '../../../agent/guest/GuestHostSide.js';
import { GuestServer } from '../../../agent/guest/GuestServer.js';
import { fromWireError, LineReader, toWireError } from '../../../proto/guest/protocol.js';
import { waitForGuestAgent } from '../../../proto/guest/waitAgent.js';
import { LinuxHost } from '../../../agent/host/LinuxHost.js';
import { AgentError, type HostProgress, type HostSide } from '../../../agent/types.js';
import { ARRAYLAB_VERSION } from '../../../proto/util/version.js';
import type { VolumeInfo } from '../../../emulator/array/types.js';
import { cleanupLoops, makeLoopDisk, makeLoopFs, mountLine, writeCompletes } from '../host/loopFs.js';
import { FakeQemuPort } from './fakeQemuPort.js';

const log = pino({ level: process.env.ARRAYLAB_LOG_LEVEL ?? 'silent' });
const HOOK_TIMEOUT_MS = 7000;
const FREEZE_DEADLINE_MS = 20_000;

let dir: string;
let port: FakeQemuPort | undefined;
let server: GuestServer | undefined;
let clients: GuestHostSide[] = [];

function vol(name: string): VolumeInfo {
  return {
    name,
    uuid: '00000000-0000-4000-8000-000000000000',
    wwn: `6001405a00000000000000000000${Buffer.from(name).toString('hex').slice(0, 4).padStart(4, '0')}`,
    serial: `S-${name}`,
    sizeBytes: 64 << 20,
    blockSize: 512,
    provisioning: 'thin',
    readOnly: false,
    description: '',
    createdAt: '2026-12-05T00:00:00.000Z',
    allocatedBytes: 0,
    allocLimitBytes: null,
  };
}

function client(handshakeTimeoutMs = 10_000): GuestHostSide {
  const c = new GuestHostSide(port!.path, { log, handshakeTimeoutMs });
  clients.push(c);
  return c;
}

/** The guest side: a LinuxHost with the test's device map and hooks dir, served over the fake port. */
async function startGuest(deviceMap = '', clockSkewMs = 0): Promise<FakeQemuPort> {
  let host: HostSide = new LinuxHost({
    log,
    hooksDir: join(dir, 'hooks'),
    hookTimeoutMs: HOOK_TIMEOUT_MS,
    freezeDeadlineMs: FREEZE_DEADLINE_MS,
    ...(deviceMap ? { deviceMapFile: deviceMap } : {}),
  });
  if (clockSkewMs) host = skewedClock(host, clockSkewMs);
  port = new FakeQemuPort(join(dir, 'agent.sock'));
  await port.listen();
  const clock = () => Date.now() + clockSkewMs;
  server = new GuestServer({ host, port, log, hookTimeoutMs: HOOK_TIMEOUT_MS, freezeDeadlineMs: FREEZE_DEADLINE_MS, clock });
  void server.start();
  return port;
}

/** A guest whose wall clock is skewMs ahead of this host's: its lock records say its times. */
function skewedClock(host: HostSide, skewMs: number): HostSide {
  const shift = (iso: string) => new Date(Date.parse(iso) + skewMs).toISOString();
  return new Proxy(host, {
    get(target, prop, receiver) {
      if (prop !== 'lockTransaction') return Reflect.get(target, prop, receiver);
      return async (...args: Parameters<HostSide['lockTransaction']>) => {
        const rec = await target.lockTransaction(...args);
        return { ...rec, at: shift(rec.at), ...(rec.thawDeadline ? { thawDeadline: shift(rec.thawDeadline) } : {}) };
      };
    },
  });
}

function hook(name: string, body: string): void {
  const p = join(dir, 'hooks', name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
}

/** A raw host connection: writes bytes, then goes away (an earlier host that died mid-line). */
function rawHost(path: string, data: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once('error', reject);
    s.once('connect', () => s.end(data));
    s.once('close', () => resolve());
  });
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'arraylab-guestproto-'));
  mkdirSync(join(dir, 'hooks'));
});

afterEach(async () => {
  for (const c of clients) await c.close();
  clients = [];
  if (server) await server.stop();
  else await port?.close();
  server = undefined;
  port = undefined;
  cleanupLoops(); // thaws and unmounts whatever a failed test left
  rmSync(dir, { recursive: true, force: true });
});

describe('guest agent over the port', () => {
  it('hello, devices, and an error that keeps its message', async () => {
    const disk = makeLoopDisk(8);
    const map = join(dir, 'devices');
    writeFileSync(map, `tv1 ${disk.device}\n`);
    await startGuest(map);
    const guest = client();

    const hello = await guest.hello();
    expect(hello).toEqual({
      protocol: 1,
      version: ARRAYLAB_VERSION,
      hostname: hostname(),
      kernel: release(),
      pid: process.pid,
      hookTimeoutMs: HOOK_TIMEOUT_MS,
      freezeDeadlineMs: FREEZE_DEADLINE_MS,
      now: expect.any(Number),
    });
    expect(await guest.devices([vol('tv1'), vol('elsewhere')])).toEqual([{ volume: 'tv1', device: disk.device, how: 'map' }]);
    expect(await guest.mountsOf(disk.device)).toEqual([]);

    // The guest's own error, message and all (a freeze of something that is not mounted).
    const direct = await new LinuxHost({ log }).lockTransaction('tv1', disk.device, 'freeze').then(
      () => null,
      (e: Error) => e.message,
    );
    expect(direct).toMatch(/cannot freeze transaction volume tv1: .* is not mounted/);
    await expect(guest.lockTransaction('tv1', disk.device, 'freeze')).rejects.toThrow(direct!);
    // A broken device map is the guest's error too, and the connection goes on working.
    writeFileSync(map, 'tv1\n');
    await expect(guest.devices([vol('tv1')])).rejects.toThrow(`device map ${map} line 1: expected "VOLUME DEVICE"`);
    expect(await guest.mountsOf(disk.device)).toEqual([]);
  });

  it('locks and unlocks a real ext4: freeze blocks writers until unlock; unmount remounts with the same options', async () => {
    const fs = makeLoopFs('ext4', 'noatime');
    await startGuest();
    const guest = client();
    expect((await guest.mountsOf(fs.device)).map((m) => m.mountPoint)).toEqual([fs.mountPoint]);

    const frozen = await guest.lockTransaction('tv1', fs.device, 'freeze', { freezeDeadlineMs: 15_000 });
    expect(frozen).toMatchObject({ volume: 'tv1', role: 'transaction', device: fs.device, action: 'frozen' });
    expect(Date.parse(frozen.thawDeadline!) - Date.parse(frozen.at)).toBeGreaterThan(13_000);
    expect(await guest.isFrozen(fs.mountPoint)).toBe(true);
    expect(await writeCompletes(fs.mountPoint, 500)).toBe(false);
    await guest.unlock(frozen);
    expect(await writeCompletes(fs.mountPoint, 5000)).toBe(true);
    expect(await guest.isFrozen(fs.mountPoint)).toBe(false);

    const before = mountLine(fs.mountPoint);
    const unmounted = await guest.lockTransaction('tv1', fs.device, 'unmount');
    expect(unmounted.action).toBe('unmounted');
    expect(mountLine(fs.mountPoint)).toBeUndefined();
    await guest.unlock(unmounted);
    expect(mountLine(fs.mountPoint)).toEqual(before);
    await guest.unlock(unmounted); // idempotent, as resource-match needs
  });

  it("a guest clock an hour off: the thaw deadline comes back on this host's clock, so the backup manager judges the freeze right", async () => {
    for (const skew of [3_600_000, -3_600_000]) {
      const fs = makeLoopFs('ext4', 'noatime');
      await startGuest('', skew);
      const guest = client();
      const before = Date.now();
      const frozen = await guest.lockTransaction('tv1', fs.device, 'freeze', { freezeDeadlineMs: 15_000 });
      const after = Date.now();
      const thawAt = Date.parse(frozen.thawDeadline!);
      // The guard thaws 15 s after it froze, between before and after on this host's clock; the
      // translation may only make it earlier, by at most the hello round trip.
      expect(thawAt).toBeLessThanOrEqual(after + 15_000);
      expect(thawAt).toBeGreaterThan(before + 15_000 - 1000);
      await guest.unlock(frozen);
      expect(await writeCompletes(fs.mountPoint, 5000)).toBe(true);
      for (const c of clients) await c.close();
      clients = [];
      await server!.stop();
      server = undefined;
    }
  });

  it("runs hooks in the guest: environment, the user's exit code, concurrent calls", async () => {
    await startGuest();
    const out = join(dir, 'hook.out');
    hook('backup-pre', `echo "$1 $ARRAYLAB_VOLUME $ARRAYLAB_MOUNTPOINT $ARRAYLAB_GENERATION" > '${out}'; sleep 1`);
    hook('backup-post', 'echo "disk full" >&2; exit 123');
    const guest = client();

    const started = Date.now();
    const [pre, hello] = await Promise.all([
      guest.runHook({ phase: 'backup-pre', volume: 'tv1', device: '/dev/vda', mountPoint: '/mnt/a b', generation: 4 }),
      guest.hello().then((h) => ({ h, at: Date.now() - started })),
    ]);
    // The hello was answered while the hook still ran (calls are concurrent, by id).
    expect(hello.at).toBeLessThan(900);
    expect(pre).toMatchObject({ phase: 'backup-pre', verdict: 'ok', exitCode: 0, script: join(dir, 'hooks', 'backup-pre') });
    expect(readFileSync(out, 'utf8')).toBe('backup-pre tv1 /mnt/a b 4\n');

    const post = await guest.runHook({ phase: 'backup-post', volume: 'tv1', device: '/dev/vda', mountPoint: '' }, { timeoutMs: 3000 });
    expect(post).toMatchObject({ verdict: 'user-error', exitCode: 123 });
    expect(post.output).toContain('disk full');
    expect(post.message).toContain('123');
  });

  it('copies a device with progress reports', async () => {
    const from = makeLoopDisk(96);
    const to = makeLoopDisk(96);
    writeFileSync(from.image, Buffer.alloc(96 << 20, 0x5a), { flag: 'r+' });
    await startGuest();
    const guest = client();
    const progress: HostProgress[] = [];
    await guest.copyDevice(from.device, to.device, (p) => progress.push(p));
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.at(-1)).toEqual({ doneBytes: 96 << 20, totalBytes: 96 << 20 });
    for (let i = 1; i < progress.length; i++) expect(progress[i]!.doneBytes).toBeGreaterThanOrEqual(progress[i - 1]!.doneBytes);
    const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
    expect(sha(to.device)).toBe(sha(from.device));
    await expect(guest.copyDevice(from.device, join(dir, 'no-such-device'))).rejects.toThrow(/cannot copy onto .*no-such-device/);
  });
});

describe('resync', () => {
  it('survives stale garbage and 2 MiB lines before the handshake, in both directions', async () => {
    const p = await startGuest();
    // An earlier host died mid-line after garbage and a 2 MiB line without its newline.
    await rawHost(p.path, Buffer.concat([Buffer.from('garbage \x00\xff not json\n{"id":1,"meth'), Buffer.alloc(2 << 20, 0x41)]));
    // ...and the guest has stale output for it: an answer, garbage, a 2 MiB line, half a line.
    p.injectToHost(`{"id":7,"result":"stale"}\nnoise\n${'B'.repeat(2 << 20)}\n{"id":8,"resu`);
    const guest = client();
    expect((await guest.hello()).version).toBe(ARRAYLAB_VERSION);
    expect(await guest.devices([vol('tv1')])).toEqual([]);
    expect(server!.inFlight).toBe(0);
  });

  it('a host that reconnects mid-way: the freeze it left is undone by the next host; old answers are not delivered', async () => {
    const fs = makeLoopFs('ext4');
    const p = await startGuest();
    const written: string[] = [];
    const write = p.write.bind(p);
    p.write = (data: string) => {
      written.push(data);
      return write(data);
    };
    hook('backup-pre', 'sleep 2; echo late');
    const first = client();
    const rec = await first.lockTransaction('tv1', fs.device, 'freeze');
    expect(rec.action).toBe('frozen');
    // The first host goes away with a hook still running in the guest.
    const hookCall = first.runHook({ phase: 'backup-pre', volume: 'tv1', device: fs.device, mountPoint: fs.mountPoint });
    await new Promise((r) => setTimeout(r, 300));
    await first.close();
    await expect(hookCall).rejects.toThrow(/connection to the guest agent on .* was closed .*during runHook/);
    expect(await writeCompletes(fs.mountPoint, 300)).toBe(false); // still frozen: the guest kept it

    const second = client();
    expect(await second.isFrozen(fs.mountPoint)).toBe(true);
    await second.unlock(rec); // thaws through the guard the first host's call started
    expect(await writeCompletes(fs.mountPoint, 5000)).toBe(true);
    // The hook's answer (for the first host) comes meanwhile and must not reach the second.
    await new Promise((r) => setTimeout(r, 2200));
    expect(await second.mountsOf(fs.device)).toHaveLength(1);
    expect(port!.connections).toBe(2);
    expect(written.some((l) => l.includes('"verdict"'))).toBe(false); // the hook's answer was dropped
    expect(written.filter((l) => l.includes('"frozen"'))).toHaveLength(1); // ...the lock's was not
  });

  it('after the handshake, a line over 1 MiB from the guest drops the connection; the next call reconnects', async () => {
    const p = await startGuest();
    hook('backup-pre', 'sleep 1');
    const guest = client();
    await guest.hello();
    const call = guest.runHook({ phase: 'backup-pre', volume: 'tv1', device: '', mountPoint: '' });
    p.injectToHost(`{"id":1,"result":"${'x'.repeat((1 << 20) + 10)}"}\n`);
    await expect(call).rejects.toThrow(/sent a line longer than 1 MiB .*dropped.* \(during runHook\)/);
    expect(await guest.devices([])).toEqual([]);
    expect(p.connections).toBe(2);
  });

  it('waitForGuestAgent: waits for the socket, then for guest-serve to open the port', async () => {
    const p = new FakeQemuPort(join(dir, 'agent.sock'));
    port = p;
    const waiting = waitForGuestAgent(p.path, 20_000, log);
    await new Promise((r) => setTimeout(r, 600)); // no socket yet (qemu not started)
    await p.listen();
    await new Promise((r) => setTimeout(r, 600)); // qemu listening, guest-serve not reading yet
    server = new GuestServer({ host: new LinuxHost({ log }), port: p, log, hookTimeoutMs: 1000, freezeDeadlineMs: 2000 });
    void server.start();
    expect(await waiting).toMatchObject({ pid: process.pid, hookTimeoutMs: 1000, freezeDeadlineMs: 2000 });
    await expect(waitForGuestAgent(join(dir, 'nothing.sock'), 1500, log)).rejects.toThrow(/did not answer on .*nothing\.sock within 2 s \(cannot reach/);
  });

  it('no guest agent: the host says what to start', async () => {
    // A socket nobody answers on (qemu listening, guest-serve not running).
    port = new FakeQemuPort(join(dir, 'silent.sock'));
    await port.listen();
    const silent = client(1500);
    await expect(silent.hello()).rejects.toThrow(/did not answer within 2 s; is `arraylab-agent guest-serve` running in the guest/);
    const none = new GuestHostSide(join(dir, 'nothing.sock'), { log });
    await expect(none.devices([])).rejects.toThrow(/cannot reach the guest agent on .*nothing\.sock: no guest is listening there/);
  });
});

describe('protocol pieces', () => {
  it('LineReader: bounded lines, split across chunks, over-long ones skipped to the next newline', () => {
    const lines: string[] = [];
    const over: number[] = [];
    const r = new LineReader(
      (l) => lines.push(l),
      (n) => over.push(n),
      16,
    );
    r.push(Buffer.from('ab'));
    r.push(Buffer.from('c\nde'));
    r.push(Buffer.from(`f\n${'x'.repeat(10)}`));
    r.push(Buffer.from(`${'y'.repeat(10)}zz\nok\n`));
    expect(lines).toEqual(['abc', 'def', 'ok']);
    expect(over).toEqual([22]); // given up on at the chunk that went past 16
    r.push(Buffer.from('partial'));
    r.reset();
    r.push(Buffer.from('new\n'));
    expect(lines.at(-1)).toBe('new');
  });

  it('errors cross the wire with message, name and AgentError code', () => {
    const e = fromWireError(toWireError(new AgentError('FAILED_PRECONDITION', 'tv1 is busy; stop it')));
    expect(e).toBeInstanceOf(AgentError);
    expect(e).toMatchObject({ code: 'FAILED_PRECONDITION', message: 'tv1 is busy; stop it' });
    const plain = fromWireError(toWireError(new Error('cannot lock x')));
    expect(plain.message).toBe('cannot lock x');
    expect(plain).not.toBeInstanceOf(AgentError);
  });
});
