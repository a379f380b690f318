/**
 * `arraylab-agent serve` with the real backup manager behind it, driven by the same CLI with
 * --agent: the daemon makes a 0600 token file, refuses a wrong token, runs backups and restores
 * for remote callers with the records they would get locally, answers doctor, and stops cleanly
 * on SIGTERM; plaintext off loopback is refused, and a Unix socket is served privately. (The
 * volumes here have no device on this host: the filesystem side is covered by test/agent/e2e.)
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_CLI } from '../support/agentLab.js';
import { makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';

const run = promisify(execFile);

let lab: Arraylab;
let daemon: ChildProcess;
let stateDir: string;
let agentAddress: string;
let exited: Promise<number | null>;

async function agent(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [AGENT_CLI, ...args], { env: { ...process.env, ...env }, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const remote = () => ['--agent', agentAddress, '--agent-token-file', join(stateDir, 'agent.token'), '--json'];

beforeAll(async () => {
  lab = await startArraylab();
  for (const [name, size] of [
    ['tv', '16MiB'],
    ['bv1', '16MiB'],
    ['bv2', '16MiB'],
  ] as const)
    await lab.cli(['volume', 'create', name, '--size', size]);
  stateDir = makeTempDir('agent-serve-');
  daemon = spawn(
    process.execPath,
    [AGENT_CLI, 'serve', '--listen', '127.0.0.1:0', '--array', lab.apiAddress, '--state-dir', stateDir, '--json', '--log-level', 'warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  exited = new Promise((resolve) => daemon.once('exit', (code) => resolve(code)));
  let errText = '';
  daemon.stderr!.on('data', (d) => (errText += d));
  const first = await new Promise<string>((resolve, reject) => {
    createInterface({ input: daemon.stdout! }).once('line', resolve);
    daemon.once('exit', () => reject(new Error(`arraylab-agent serve exited: ${errText}`)));
  });
  const info = JSON.parse(first) as { listen: { host: string; port: number } };
  agentAddress = `${info.listen.host}:${info.listen.port}`;
});

afterAll(async () => {
  if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
  await lab?.stop();
});

describe('arraylab-agent serve', () => {
  it('makes a token file only root can read, and refuses a wrong token', async () => {
    expect(statSync(join(stateDir, 'agent.token')).mode & 0o777).toBe(0o600);
    const wrong = join(stateDir, 'wrong.token');
    writeFileSync(wrong, `${'x'.repeat(40)}\n`, { mode: 0o600 });
    const r = await agent(['status', '--agent', agentAddress, '--agent-token-file', wrong]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^arraylab-agent: the agent at 127\.0\.0\.1:\d+ refused the call: missing or wrong token/);
  });

  it('registers, backs up with generation rotation, and keeps history, for a remote caller', async () => {
    expect((await agent(['register', 'transaction', 'tv', '--lock', 'none', '--generations', '1', ...remote()])).code).toBe(0); // filled over NBD: nothing to lock here
    for (const bv of ['bv1', 'bv2']) expect((await agent(['register', 'backup', bv, ...remote()])).code).toBe(0);
    const first = await agent(['backup', 'tv', ...remote()]);
    expect(first.code).toBe(0);
    const r1 = JSON.parse(first.stdout);
    expect(r1).toMatchObject({ ok: true, volumes: [{ volume: 'tv', ok: true, generation: { number: 1, generation: 1, type: 'opc', status: 'held' } }] });
    const second = JSON.parse((await agent(['backup', 'tv', ...remote()])).stdout);
    // One generation kept: the oldest was released before the copy and its volume reused.
    expect(second.volumes[0].generation).toMatchObject({ number: 2, generation: 1, backupVolume: r1.volumes[0].generation.backupVolume });
    const history = JSON.parse((await agent(['history', 'tv', ...remote()])).stdout) as Array<{ number: number; status: string }>;
    expect(history.map((h) => [h.number, h.status])).toEqual([
      [2, 'held'],
      [1, 'released'],
    ]);
    // The same records are there for a local command on the same state directory.
    const local = JSON.parse((await agent(['history', 'tv', '--array', lab.apiAddress, '--state-dir', stateDir, '--json'])).stdout);
    expect(local).toEqual(history);
  });

  it('reports a failed volume in the report with exit status 1, and refusals with their message', async () => {
    const r = await agent(['backup', 'tv', 'nosuch', ...remote()]);
    expect(r.code).toBe(1);
    const report = JSON.parse(r.stdout);
    expect(report.ok).toBe(false);
    expect(report.volumes.find((v: { volume: string }) => v.volume === 'tv')).toMatchObject({ ok: true });
    expect(report.volumes.find((v: { volume: string }) => v.volume === 'nosuch')).toMatchObject({ ok: false, error: expect.stringMatching(/nosuch/) });
    const cancel = await agent(['cancel-sync', 'tv', ...remote()]);
    expect(cancel.code).toBe(1);
    expect(cancel.stderr).toMatch(/^arraylab-agent: .*tv.*sync/);
  });

  it('restores for a remote caller and answers doctor', async () => {
    const qemuIo = requireTool('qemu-io');
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', lab.nbdUri('tv')]);
    expect(JSON.parse((await agent(['backup', 'tv', ...remote()])).stdout).ok).toBe(true);
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x11 0 1M', lab.nbdUri('tv')]);
    const r = await agent(['restore', 'tv', ...remote()]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ volume: 'tv', target: 'tv', from: 'disk' });
    await run(qemuIo, ['-r', '-f', 'raw', '-c', 'read -P 0x5a 0 1M', lab.nbdUri('tv')]);
    const doctor = JSON.parse((await agent(['doctor', ...remote()])).stdout) as Array<{ name: string; ok: boolean }>;
    expect(doctor.find((c) => c.name === 'array')).toMatchObject({ ok: true });
    expect(doctor.find((c) => c.name === 'root')).toMatchObject({ ok: true });
  });

  it('refuses a plaintext listener off loopback, saying how to enable TLS', async () => {
    const r = await agent(['serve', '--listen', '0.0.0.0:0', '--array', lab.apiAddress, '--state-dir', makeTempDir('agent-serve-open-')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^arraylab-agent: refusing to serve the agent API in plaintext on 0\.0\.0\.0:0: .*--tls-cert PEM --tls-key PEM.*--listen unix/);
  });

  it('serves on a Unix socket (0600, in a 0700 directory) for --agent unix:/PATH', async () => {
    const dir = join(makeTempDir('agent-serve-unix-'), 'run');
    const socket = join(dir, 'agent.sock');
    const state = makeTempDir('agent-serve-unix-state-');
    const d = spawn(process.execPath, [AGENT_CLI, 'serve', '--listen', `unix:${socket}`, '--array', lab.apiAddress, '--state-dir', state, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const first = await new Promise<string>((resolve, reject) => {
        createInterface({ input: d.stdout! }).once('line', resolve);
        d.once('exit', () => reject(new Error('arraylab-agent serve on a Unix socket exited')));
      });
      expect(JSON.parse(first).listen).toEqual({ socket });
      expect(statSync(dir).mode & 0o777).toBe(0o700);
      expect(statSync(socket).mode & 0o777).toBe(0o600);
      const r = await agent(['status', '--agent', `unix:${socket}`, '--agent-token-file', join(state, 'agent.token'), '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ transactionVolumes: [] });
      // --token-file is the array's token: with --agent it is a mistake, said so.
      const mixed = await agent(['status', '--agent', `unix:${socket}`, '--token-file', join(state, 'agent.token')]);
      expect(mixed.code).toBe(2);
      expect(mixed.stderr).toMatch(/--token-file is the array API's token, .*give the daemon's token with --agent-token-file FILE/);
    } finally {
      d.kill('SIGTERM');
    }
  });

  it('stops on SIGTERM with exit status 0', async () => {
    daemon.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
