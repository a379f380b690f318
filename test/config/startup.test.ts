/** Config files at start-up: declared volumes are created or grown, never shrunk; bad files are refused. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeTempDir, runCli, startArraylab } from '../support/arraylab.js';

const MiB = 2 ** 20;

function writeConfig(yaml: string): string {
  const file = join(makeTempDir('arraylab-config-'), 'arraylab.yaml');
  writeFileSync(file, yaml);
  return file;
}

describe('config-declared volumes', () => {
  it('creates missing volumes, grows smaller ones, and keeps data across restarts', async () => {
    const dataDir = makeTempDir();
    const first = await startArraylab({
      dataDir,
      config: {
        volumes: [
          { name: 'a', size: '8MiB', description: 'from config' },
          { name: 'b', size: '1MiB', blockSize: 4096, provisioning: 'thick' },
        ],
      },
    });
    expect(first.info.volumes.map((v) => [v.name, v.sizeBytes, v.blockSize])).toEqual([
      ['a', 8 * MiB, 512],
      ['b', MiB, 4096],
    ]);
    const created = JSON.parse((await first.cli(['volume', 'show', 'a', '--json'])).stdout);
    await first.cli(['volume', 'create', 'extra', '--size', '1MiB']);
    await first.stop();

    const second = await startArraylab({
      dataDir,
      config: {
        volumes: [
          { name: 'a', size: '16MiB' },
          { name: 'b', size: '1MiB', blockSize: 4096 },
        ],
      },
    });
    const a = JSON.parse((await second.cli(['volume', 'show', 'a', '--json'])).stdout);
    expect(a).toMatchObject({ sizeBytes: 16 * MiB, uuid: created.uuid, description: 'from config' });
    expect(second.info.volumes.map((v) => v.name).sort()).toEqual(['a', 'b', 'extra']);
    await second.stop();
  });

  it('refuses to start when a volume is larger than declared, and loses nothing', async () => {
    const dataDir = makeTempDir();
    const first = await startArraylab({ dataDir, config: { volumes: [{ name: 'big', size: '4MiB' }] } });
    await first.stop();
    const file = writeConfig('volumes:\n  - {name: big, size: 2MiB}\n');
    const r = await runCli(['serve', '--config', file, '--data-dir', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'], {
      env: { ARRAYLAB_LOG_LEVEL: 'silent' },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `arraylab: config ${file}: volumes[0]: volume big exists with 4 MiB (4194304 bytes), more than the 2 MiB declared; volumes never shrink: raise size to at least 4194304 or delete the volume\n`,
    );
    const again = await startArraylab({ dataDir, config: { volumes: [{ name: 'big', size: '4MiB' }] } });
    expect(again.info.volumes).toEqual([expect.objectContaining({ name: 'big', sizeBytes: 4 * MiB })]);
    await again.stop();
  });

  it('refuses to start when a volume has another block size', async () => {
    const dataDir = makeTempDir();
    const first = await startArraylab({ dataDir, config: { volumes: [{ name: 'v', size: '1MiB', blockSize: 512 }] } });
    await first.stop();
    const file = writeConfig('volumes:\n  - {name: v, size: 1MiB, blockSize: 4096}\n');
    const r = await runCli(['serve', '--config', file, '--data-dir', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'], {
      env: { ARRAYLAB_LOG_LEVEL: 'silent' },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `arraylab: config ${file}: volumes[0]: volume v exists with block size 512, not 4096; the block size cannot change: set blockSize: 512 or delete the volume\n`,
    );
  });

  it('takes dataDir and listen addresses from the config, and flags over them', async () => {
    const dir = makeTempDir();
    const file = writeConfig(`dataDir: ${join(dir, 'data')}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\nvolumes: []\n`);
    const lab = await startArraylab({ configFile: file });
    expect(lab.dataDir).toBe(join(dir, 'data'));
    expect(lab.info.volumes).toEqual([]);
    await lab.stop();
  });
});

describe('corrupt config files', () => {
  const serveWith = (yaml: string) => {
    const file = writeConfig(yaml);
    return { file, result: runCli(['serve', '--config', file, '--memory']) };
  };

  it.each([
    [
      'volumes:\n  - {name: a, size: 1GiB}\n  - {name: b, size: 10XB}\n',
      'volumes[1].size: "10XB" is not a size: unknown unit "XB"; use a number with a unit such as 64MiB or 10GiB',
    ],
    ['volumes:\n  - name: a\n   size: 3\n', /^YAML syntax error at line 3, column \d+: .*; fix the YAML$/],
    ['listen:\n  nbd: 10809\n', 'listen.nbd: 10809 is not an address; use HOST:PORT such as 127.0.0.1:10809'],
    ['volume: []\n', 'volume: unknown key; expected one of dataDir, backend, listen, nbd, api, iscsi, log, volumes, tape'],
    ['log: {level: verbose}\n', 'log.level: "verbose" is not a log level; use one of fatal, error, warn, info, debug, trace, silent'],
  ])('refuses %j with one line naming the file, key and fix (exit 2)', async (yaml, message) => {
    const { file, result } = serveWith(yaml);
    const r = await result;
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    const prefix = `arraylab: config ${file}: `;
    expect(r.stderr.startsWith(prefix)).toBe(true);
    expect(r.stderr.endsWith('\n')).toBe(true);
    expect(r.stderr.split('\n')).toHaveLength(2);
    const rest = r.stderr.slice(prefix.length, -1);
    if (typeof message === 'string') expect(rest).toBe(message);
    else expect(rest).toMatch(message);
  });

  it('says when the config file is missing', async () => {
    const r = await runCli(['serve', '--config', '/nonexistent/arraylab.yaml']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('arraylab: config /nonexistent/arraylab.yaml: cannot read it: no such file; check the --config path\n');
  });

  it('names the TLS file it cannot read', async () => {
    const file = writeConfig('nbd: {tls: {cert: missing.crt, key: missing.key}}\nvolumes: []\n');
    const r = await runCli(['serve', '--config', file, '--memory', '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'], { env: { ARRAYLAB_LOG_LEVEL: 'silent' } });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`arraylab: config ${file}: nbd.tls.cert: cannot read ${join(file, '..', 'missing.crt')}: ENOENT; fix the path\n`);
  });
});
