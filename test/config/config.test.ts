import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { applyOverrides, ConfigError, DEFAULT_CONFIG_SOURCE, loadConfig, parseConfig, parseHostPort } from '../../emulator/config.js';

const SRC = '/etc/arraylab.yaml';
const parse = (yaml: string) => parseConfig(yaml, SRC, '/etc');
const expectError = (yaml: string, message: string | RegExp) => {
  expect(() => parse(yaml)).toThrow(ConfigError);
  expect(() => parse(yaml)).toThrow(message);
};

describe('built-in default config', () => {
  it('serves the demo volume on the standard loopback ports', () => {
    const c = loadConfig();
    expect(c.source).toBe(DEFAULT_CONFIG_SOURCE);
    expect(c.dataDir).toBe(join(process.cwd(), 'arraylab-data'));
    expect(c.backend).toBe('file');
    expect(c.listen).toEqual({
      nbd: { host: '127.0.0.1', port: 10809 },
      iscsi: { host: '127.0.0.1', port: 3260 },
      api: { host: '127.0.0.1', port: 7390 },
      metrics: { host: '127.0.0.1', port: 9390 },
    });
    // Nobody asked for it: a busy port is a warning, not a failed start (test/metrics/unit).
    expect(c.metrics).toEqual({ perVolume: true, listener: 'default' });
    expect(c.log.level).toBe('info');
    expect(c.iscsi).toEqual({ targetName: null, requireHostAffinity: false, chap: null });
    expect(c.volumes).toEqual([expect.objectContaining({ name: 'demo', sizeBytes: 2 ** 30, blockSize: 512, provisioning: 'thin', readOnly: false })]);
  });
});

describe('parseConfig', () => {
  it('reads every key', () => {
    const c = parse(`
dataDir: data
backend: memory
listen: {nbd: "0.0.0.0:0", api: "[::1]:7391", iscsi: null}
nbd:
  tls: {cert: tls/server.crt, key: /abs/server.key, ca: ca.pem, require: true}
log: {level: debug}
volumes:
  - {name: a, size: 64MiB}
  - {name: b.2, size: 4096, blockSize: 4096, provisioning: thick, readOnly: true, description: "the b volume"}
`);
    expect(c.dataDir).toBe('/etc/data');
    expect(c.backend).toBe('memory');
    expect(c.listen).toEqual({ nbd: { host: '0.0.0.0', port: 0 }, api: { host: '::1', port: 7391 }, iscsi: null });
    expect(c.nbd.tls).toEqual({ cert: '/etc/tls/server.crt', key: '/abs/server.key', ca: '/etc/ca.pem', psk: false, require: true });
    expect(c.log.level).toBe('debug');
    expect(c.volumes).toEqual([
      { name: 'a', sizeBytes: 64 * 2 ** 20, blockSize: 512, provisioning: 'thin', readOnly: false, description: '', origin: `config ${SRC}: volumes[0]` },
      {
        name: 'b.2',
        sizeBytes: 4096,
        blockSize: 4096,
        provisioning: 'thick',
        readOnly: true,
        description: 'the b volume',
        origin: `config ${SRC}: volumes[1]`,
      },
    ]);
  });

  it('fills in defaults for an empty file, without the demo volume', () => {
    const c = parse('');
    expect(c.listen.nbd).toEqual({ host: '127.0.0.1', port: 10809 });
    expect(c.listen.api).toEqual({ host: '127.0.0.1', port: 7390 });
    expect(c.listen.iscsi).toBeNull();
    expect(c.volumes).toEqual([]);
  });

  it('names the file, the key path and the fix for a bad size', () => {
    expectError(
      'volumes:\n  - {name: a, size: 1GiB}\n  - {name: b, size: 10XB}\n',
      'config /etc/arraylab.yaml: volumes[1].size: "10XB" is not a size: unknown unit "XB"; use a number with a unit such as 64MiB or 10GiB',
    );
  });

  it('gives line and column for YAML syntax errors', () => {
    expectError('volumes:\n  - name: a\n   size: 3\n', /^config \/etc\/arraylab.yaml: YAML syntax error at line 3, column \d+: .+; fix the YAML$/);
    expectError('a: 1\na: 2\n', /YAML syntax error at line 2, column 1: Map keys must be unique/);
  });

  it.each([
    ['[1, 2]', 'config /etc/arraylab.yaml: the top level must be a mapping'],
    ['dataDirr: x', 'config /etc/arraylab.yaml: dataDirr: unknown key; expected one of dataDir, backend, listen, nbd, api, iscsi, log, volumes'],
    ['backend: disk', 'backend: "disk" is not a backend; use file or memory'],
    ['listen: {nbd: localhost}', 'listen.nbd: "localhost" is not an address; use HOST:PORT such as 127.0.0.1:10809'],
    ['listen: {nbd: "1.2.3.4:70000"}', 'listen.nbd: "1.2.3.4:70000" is not an address'],
    ['listen: {api: 7390}', 'listen.api: 7390 is not an address'],
    ['listen: {nbdd: ":1"}', 'listen.nbdd: unknown key; expected one of nbd, iscsi, api'],
    ['nbd: {tls: {cert: a.pem}}', 'nbd.tls.key: is missing; give the path of the PEM key file'],
    ['nbd: {tls: {cert: a, key: b, require: "yes"}}', 'nbd.tls.require: "yes" is not true or false'],
    ['log: {level: loud}', 'log.level: "loud" is not a log level; use one of fatal, error, warn, info, debug, trace, silent'],
    ['volumes: {name: a}', 'volumes: must be a list of volumes'],
    ['volumes: [a]', 'volumes[0]: must be a mapping with at least name and size'],
    ['volumes: [{size: 1G}]', 'volumes[0].name: is missing; every volume needs a name'],
    ['volumes: [{name: "a/b", size: 1G}]', 'volumes[0].name: "a/b" is not a volume name'],
    ['volumes: [{name: a}]', 'volumes[0].size: is missing; give a size such as 64MiB or 10GiB'],
    ['volumes: [{name: a, size: -5}]', 'volumes[0].size: -5 is negative'],
    ['volumes: [{name: a, size: 0}]', 'volumes[0].size: is zero'],
    ['volumes: [{name: a, size: 1000}]', 'volumes[0].size: 1000 bytes is not a multiple of the block size 512; round it to a multiple, e.g. 1024'],
    ['volumes: [{name: a, size: 1M, blockSize: 1024}]', 'volumes[0].blockSize: 1024 is not a block size; use 512 or 4096'],
    ['volumes: [{name: a, size: 1M, provisioning: fat}]', 'volumes[0].provisioning: "fat" is not a provisioning type; use thin or thick'],
    ['volumes: [{name: a, size: 1M, readOnly: 1}]', 'volumes[0].readOnly: 1 is not true or false'],
    ['volumes: [{name: a, size: 1M, colour: red}]', 'volumes[0].colour: unknown key; expected one of name, size, blockSize'],
    ['volumes: [{name: a, size: 1M}, {name: a, size: 2M}]', 'volumes[1].name: volume a is declared twice (also volumes[0]); remove one'],
  ])('refuses %j', (yaml, message) => {
    expectError(yaml, message);
  });
});

describe('loadConfig', () => {
  it('resolves relative paths against the config file and names the file in errors', () => {
    const dir = mkdtempSync(join(tmpdir(), 'arraylab-config-'));
    const file = join(dir, 'arraylab.yaml');
    writeFileSync(file, 'dataDir: vols\nvolumes: [{name: v, size: 2MiB}]\n');
    const c = loadConfig(file);
    expect(c.source).toBe(file);
    expect(c.dataDir).toBe(join(dir, 'vols'));
    writeFileSync(file, 'volumes: [{name: v, size: 2XiB}]\n');
    expect(() => loadConfig(file)).toThrow(`config ${file}: volumes[0].size: "2XiB" is not a size`);
  });

  it('says when the file is missing', () => {
    expect(() => loadConfig('/nonexistent/arraylab.yaml')).toThrow('config /nonexistent/arraylab.yaml: cannot read it: no such file; check the --config path');
  });
});

describe('applyOverrides', () => {
  it('lets flags win over the config', () => {
    const c = applyOverrides(loadConfig(), { dataDir: '/tmp/x', memory: true, nbd: '127.0.0.1:0', api: ':0' });
    expect(c.dataDir).toBe('/tmp/x');
    expect(c.backend).toBe('memory');
    expect(c.listen.nbd).toEqual({ host: '127.0.0.1', port: 0 });
    expect(c.listen.api).toEqual({ host: '0.0.0.0', port: 0 });
    expect(c.volumes.map((v) => v.name)).toEqual(['demo']);
  });

  it('names the flag in errors', () => {
    expect(() => applyOverrides(loadConfig(), { nbd: 'nope' })).toThrow('--nbd: "nope" is not an address');
  });
});

describe('parseHostPort', () => {
  it('reads IPv4, IPv6 and wildcard addresses', () => {
    expect(parseHostPort('127.0.0.1:10809')).toEqual({ host: '127.0.0.1', port: 10809 });
    expect(parseHostPort('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseHostPort('localhost:7390')).toEqual({ host: 'localhost', port: 7390 });
    expect(parseHostPort(':7390')).toEqual({ host: '0.0.0.0', port: 7390 });
    expect(() => parseHostPort('7390')).toThrow(/is not an address/);
    expect(() => parseHostPort('::1:7390')).toThrow(/is not an address/);
  });
});
