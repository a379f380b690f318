/** `arraylab serve`: what it prints, how it stops, and how it refuses bad start-ups. */
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI_PATH, holdNbdConnection, makeTempDir, runCli, startArraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';

const run = promisify(execFile);

/** Starts serve without --json and collects stdout until the NBD/API/iSCSI/DATA lines are in. */
function serveHuman(args: string[]) {
  const child = spawn(process.execPath, [CLI_PATH, 'serve', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ARRAYLAB_LOG_LEVEL: 'warn' },
  });
  let stdout = '';
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const ready = new Promise<string>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (/^DATA .*\n/m.test(stdout)) resolve(stdout);
    });
    void exited.then((code) => reject(new Error(`serve exited ${code}: ${stderr}`)));
  });
  return { child, ready, exited, stderr: () => stderr };
}

const children: ReturnType<typeof spawn>[] = [];
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
});

describe('arraylab serve', () => {
  it('prints one line per listener with the real ports, and exits 0 on SIGINT', async () => {
    const dataDir = makeTempDir();
    const s = serveHuman(['--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--iscsi', '127.0.0.1:0', '--data-dir', dataDir]);
    children.push(s.child);
    const out = await s.ready;
    const lines = out.trimEnd().split('\n');
    expect(lines).toHaveLength(5);
    expect(lines[0]).toMatch(/^NBD {5}nbd:\/\/127\.0\.0\.1:([1-9]\d*)\/ {2}\(exports: demo\)$/);
    expect(lines[1]).toMatch(/^API {5}127\.0\.0\.1:([1-9]\d*) {2}\(arraylab status --api 127\.0\.0\.1:\d+\)$/);
    expect(lines[2]).toMatch(
      /^iSCSI {3}iscsi:\/\/127\.0\.0\.1:([1-9]\d*)\/iqn\.2026-11\.lab\.arraylab:array-[0-9a-f]{12} {2}\(every initiator sees every volume until a host is defined\)$/,
    );
    expect(lines[3]).toBe(`DATA    ${dataDir}`);
    expect(lines[4]).toBe(`AUTH    on; admin token in ${dataDir}/admin.token (this user's CLI finds it; others: --token-file or ARRAYLAB_TOKEN)`);
    const apiPort = /127\.0\.0\.1:(\d+)/.exec(lines[1]!)![1];
    const status = await runCli(['status', '--json', '--api', `127.0.0.1:${apiPort}`]);
    expect(status.code, status.stderr).toBe(0);
    s.child.kill('SIGINT');
    expect(await s.exited).toBe(0);
  });

  it('prints one JSON line with --json, and exits 0 on SIGTERM', async () => {
    const lab = await startArraylab();
    expect(lab.info).toMatchObject({
      nbd: { host: '127.0.0.1', port: lab.nbdPort },
      api: { host: '127.0.0.1', port: lab.apiPort },
      backend: 'file',
      dataDir: lab.dataDir,
      pid: lab.pid,
      volumes: [expect.objectContaining({ name: 'demo', sizeBytes: 2 ** 30, blockSize: 512, provisioning: 'thin' })],
    });
    expect(lab.nbdPort).toBeGreaterThan(0);
    expect(lab.apiPort).toBeGreaterThan(0);
    expect(lab.stdout().trimEnd().split('\n')).toHaveLength(1);
    await lab.stop('SIGTERM');
    expect(lab.logs()).toMatch(/"msg":"stopped"/);
  });

  it('stops on SIGTERM with a client connected, exits 0, and keeps what was written', async () => {
    const qemuIo = requireTool('qemu-io');
    const dataDir = makeTempDir();
    const lab = await startArraylab({ dataDir });
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0xab 1M 1M', lab.nbdUri('demo')]);
    const held = await holdNbdConnection(lab.nbdPort, 'demo');
    const closed = new Promise<void>((r) => held.once('close', () => r()));
    await lab.stop('SIGTERM');
    await closed;
    const again = await startArraylab({ dataDir });
    const { stdout } = await run(qemuIo, ['-f', 'raw', '-r', '-c', 'read -P 0xab 1M 1M', '-c', 'read -P 0 0 1M', again.nbdUri('demo')]);
    expect(stdout).not.toMatch(/Pattern verification failed/);
    await again.stop('SIGINT');
  });

  it('reports its status, with the iSCSI portal and target name', async () => {
    const lab = await startArraylab({ extraArgs: ['--iscsi', '127.0.0.1:0'] });
    const iscsi = (lab.info as unknown as { iscsi: { host: string; port: number; targetName: string } }).iscsi;
    expect(iscsi).toEqual({
      host: '127.0.0.1',
      port: expect.any(Number),
      targetName: expect.stringMatching(/^iqn\.2026-11\.lab\.arraylab:array-[0-9a-f]{12}$/),
    });
    const r = await lab.cli(['status', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s).toMatchObject({
      backend: 'file',
      dataDir: lab.dataDir,
      pid: lab.pid,
      volumeCount: 1,
      totalBytes: 2 ** 30,
      connectionCount: 0,
      listeners: {
        nbd: { available: true, host: '127.0.0.1', port: lab.nbdPort },
        api: { available: true, host: '127.0.0.1', port: lab.apiPort },
        iscsi: { available: true, host: '127.0.0.1', port: iscsi.port, note: '' },
      },
      iscsiTargetName: iscsi.targetName,
      iscsiSessionCount: 0,
    });
    expect(s.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(s.uptimeSeconds).toBeGreaterThanOrEqual(0);
    const human = await lab.cli(['status']);
    expect(human.stdout).toMatch(new RegExp(`^nbd:\\s+nbd://127\\.0\\.0\\.1:${lab.nbdPort}/  \\(plaintext, open\\)$`, 'm'));
    expect(human.stdout).toMatch(new RegExp(`^iscsi:\\s+iscsi://127\\.0\\.0\\.1:${iscsi.port}/  \\(plaintext, open\\)$`, 'm'));
    expect(human.stdout).toMatch(new RegExp(`^api:\\s+127\\.0\\.0\\.1:${lab.apiPort}  \\(auth\\)$`, 'm'));
    expect(human.stdout).toMatch(new RegExp(`^iscsi target:\\s+${iscsi.targetName.replace(/\./g, '\\.')}$`, 'm'));
    expect(human.stdout).toMatch(/^volumes:\s+1$/m);
    expect(human.stdout).toMatch(/^provisioned:\s+1 GiB$/m);
    await lab.stop();
  });

  it('serves from memory with --memory', async () => {
    const lab = await startArraylab({ memory: true });
    expect(lab.info.backend).toBe('memory');
    expect(lab.dataDir).toBeNull();
    const r = await lab.cli(['status', '--json']);
    expect(JSON.parse(r.stdout)).toMatchObject({ backend: 'memory', dataDir: '' });
    await lab.stop();
  });

  it('refuses a bad --iscsi address with one clear line', async () => {
    const r = await runCli(['serve', '--iscsi', '3260', '--memory']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('arraylab: --iscsi: "3260" is not an address; use HOST:PORT such as 127.0.0.1:10809 (port 0 picks a free port)\n');
    expect(r.stdout).toBe('');
  });

  it('refuses a bad listen address or log level', async () => {
    const bad = await runCli(['serve', '--memory', '--nbd', 'localhost']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe('arraylab: --nbd: "localhost" is not an address; use HOST:PORT such as 127.0.0.1:10809 (port 0 picks a free port)\n');
    const level = await runCli(['serve', '--memory', '--log-level', 'loud']);
    expect(level.code).toBe(2);
    expect(level.stderr.split('\n')[0]).toBe('arraylab: --log-level "loud" is not a log level; use one of fatal, error, warn, info, debug, trace, silent');
    const env = await runCli(['serve', '--memory'], { env: { ARRAYLAB_LOG_LEVEL: 'chatty' } });
    expect(env.code).toBe(2);
    expect(env.stderr.split('\n')[0]).toMatch(/^arraylab: ARRAYLAB_LOG_LEVEL="chatty" is not a log level/);
  });

  it('fails with exit 1 and one line when the NBD port is taken', async () => {
    const lab = await startArraylab({ memory: true });
    const r = await runCli(['serve', '--memory', '--nbd', `127.0.0.1:${lab.nbdPort}`, '--api', '127.0.0.1:0'], { env: { ARRAYLAB_LOG_LEVEL: 'silent' } });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `arraylab: cannot listen for NBD on 127.0.0.1:${lab.nbdPort}: the address is in use (is another arraylab running?); use --nbd HOST:PORT or listen.nbd in the config to pick another address\n`,
    );
    await lab.stop();
  });

  it('refuses a data dir another server is using', async () => {
    const lab = await startArraylab();
    const r = await runCli(['serve', '--data-dir', lab.dataDir!, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'], { env: { ARRAYLAB_LOG_LEVEL: 'silent' } });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^arraylab: .*in use.*\n$/);
    await lab.stop();
  });

  it('logs at the level asked for, as JSON on stderr when not a TTY', async () => {
    const lab = await startArraylab({ memory: true, env: { ARRAYLAB_LOG_LEVEL: 'debug' } });
    await lab.cli(['volume', 'list']);
    await lab.stop();
    const lines = lab
      .logs()
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { level: number; msg: string });
    expect(lines.some((l) => l.level === 20)).toBe(true);
    const quiet = await startArraylab({ memory: true, extraArgs: ['--log-level', 'warn'] });
    await quiet.stop();
    expect(quiet.logs()).toBe('');
  });
});

describe('arraylab --help and --version', () => {
  it('prints help for every command', async () => {
    const top = await runCli(['--help']);
    expect(top.code).toBe(0);
    expect(top.stdout).toMatch(/arraylab serve/);
    expect(top.stdout).toMatch(/arraylab volume/);
    expect(top.stdout).toMatch(/ARRAYLAB_API/);
    for (const cmd of [['serve'], ['volume'], ['volume', 'create'], ['volume', 'resize'], ['export'], ['export', 'list'], ['status']]) {
      const r = await runCli([...cmd, '--help']);
      expect(r.code, cmd.join(' ')).toBe(0);
      expect(r.stdout).toMatch(/--json/);
    }
  });

  it('prints the version', async () => {
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\d+\.\d+\.\d+\S*\n$/);
  });

  it('asks for a command', async () => {
    const r = await runCli([]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      "arraylab: give a command: serve, volume, copy, host, export, tape, fault, power-cut, status, user, tenant, audit, vm or lab (see 'arraylab --help')\n",
    );
  });
});
