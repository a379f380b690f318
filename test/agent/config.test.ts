/** The agent's settings: precedence, and a corrupt config file refused with the file, key and fix. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveSettings } from '../../agent/config.js';
import { arrayToken } from '../../agent/runtime.js';

const dir = mkdtempSync(join(tmpdir(), 'agent-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('agent settings', () => {
  it('takes flags over environment over the file over defaults', () => {
    const cfg = file('a.yaml', 'array: 10.0.0.1:7000\nstateDir: /srv/agent\nhookTimeoutSeconds: 5\nfreezeDeadlineSeconds: 12\nlogLevel: debug\n');
    const fromFile = resolveSettings({ config: cfg }, {});
    expect(fromFile).toMatchObject({
      array: '10.0.0.1:7000',
      stateDir: '/srv/agent',
      hooksDir: '/srv/agent/hooks',
      tokenFile: '/srv/agent/agent.token',
      hookTimeoutMs: 5000,
      freezeDeadlineMs: 12000,
      logLevel: 'debug',
      configFile: cfg,
      tls: null,
    });
    const fromEnv = resolveSettings({ config: cfg }, { ARRAYLAB_API: '10.0.0.2:7001', ARRAYLAB_AGENT_STATE: '/var/x' });
    expect(fromEnv).toMatchObject({ array: '10.0.0.2:7001', stateDir: '/var/x', hookTimeoutMs: 5000 });
    const fromFlags = resolveSettings({ config: cfg, array: '127.0.0.1:9', stateDir: '/tmp/s', freezeDeadline: 2.5 }, { ARRAYLAB_API: '10.0.0.2:7001' });
    expect(fromFlags).toMatchObject({ array: '127.0.0.1:9', stateDir: '/tmp/s', freezeDeadlineMs: 2500 });
    const defaults = resolveSettings({ config: file('empty.yaml', '') }, {});
    expect(defaults).toMatchObject({
      array: '127.0.0.1:7390',
      stateDir: '/var/lib/arraylab-agent',
      hookTimeoutMs: 60000,
      freezeDeadlineMs: 30000,
      listen: '127.0.0.1:7391',
    });
  });

  it('refuses an unknown key, naming the file, the key and the keys there are', () => {
    const cfg = file('typo.yaml', 'freezeDeadline: 10\n');
    expect(() => resolveSettings({ config: cfg }, {})).toThrow(`${cfg}: unknown key "freezeDeadline"; the keys are array, stateDir`);
  });

  it('refuses values of the wrong kind with the fix', () => {
    expect(() => resolveSettings({ config: file('b1.yaml', 'hookTimeoutSeconds: -1\n') }, {})).toThrow(
      /hookTimeoutSeconds must be a number of seconds between 0 and 86400/,
    );
    expect(() => resolveSettings({ config: file('b2.yaml', 'array: nohostport\n') }, {})).toThrow(/b2\.yaml: array: /);
    expect(() => resolveSettings({ config: file('b3.yaml', 'tls: {cert: a}\n') }, {})).toThrow(/tls must be \{cert: PEM file, key: PEM file\}/);
    expect(() => resolveSettings({ config: file('b4.yaml', 'array: [1\n') }, {})).toThrow(/is not valid YAML: .*; fix the file/);
    expect(() => resolveSettings({ config: file('b5.yaml', '- a\n- b\n') }, {})).toThrow(/the config must be a mapping/);
    expect(() => resolveSettings({ config: join(dir, 'nope.yaml') }, {})).toThrow(/cannot read the agent config .*nope\.yaml: ENOENT; check the path/);
    expect(() => resolveSettings({ config: file('c.yaml', ''), hookTimeout: 0 }, {})).toThrow(/--hook-timeout: give a number of seconds/);
    expect(() => resolveSettings({ config: file('c.yaml', ''), tlsCert: '/x' }, {})).toThrow(/--tls-cert and --tls-key go together/);
    expect(() => resolveSettings({ config: file('c.yaml', ''), logLevel: 'loud' }, {})).toThrow(/log level "loud" is not one of/);
  });

  it("takes the array API's token from --token-file, then ARRAYLAB_TOKEN, then the config's arrayTokenFile", () => {
    const cfg = file('tok.yaml', 'arrayTokenFile: /etc/arraylab-agent/array.token\n');
    expect(resolveSettings({ config: cfg }, {})).toMatchObject({ arrayTokenFile: '/etc/arraylab-agent/array.token', arrayToken: '' });
    expect(resolveSettings({ config: cfg }, { ARRAYLAB_TOKEN: 'from-env' })).toMatchObject({ arrayTokenFile: '', arrayToken: 'from-env' });
    expect(resolveSettings({ config: cfg, arrayTokenFile: '/tmp/t' }, { ARRAYLAB_TOKEN: 'from-env' })).toMatchObject({
      arrayTokenFile: '/tmp/t',
      arrayToken: '',
    });
    // The daemon's own token is another file.
    expect(resolveSettings({ config: cfg, agentTokenFile: '/tmp/agent.token' }, {}).tokenFile).toBe('/tmp/agent.token');
  });

  it('puts the run directory under /run as root, else under XDG_RUNTIME_DIR; listen unix is its socket', () => {
    const cfg = file('run.yaml', 'stateDir: /srv/agent\n');
    expect(resolveSettings({ config: cfg }, {}, 0).runDir).toBe('/run/arraylab-agent');
    expect(resolveSettings({ config: cfg }, { XDG_RUNTIME_DIR: '/run/user/1000' }, 1000).runDir).toBe('/run/user/1000/arraylab-agent');
    expect(resolveSettings({ config: cfg }, {}, 1000).runDir).toBe('/srv/agent/run');
    expect(resolveSettings({ config: cfg, listen: 'unix' }, {}, 0).listen).toBe('unix:/run/arraylab-agent/agent.sock');
    expect(resolveSettings({ config: cfg, listen: 'unix:/tmp/a.sock' }, {}, 0).listen).toBe('unix:/tmp/a.sock');
    expect(() => resolveSettings({ config: cfg, listen: 'unix:rel.sock' }, {}, 0)).toThrow(
      /--listen: "unix:rel.sock": give the socket as unix:\/ABSOLUTE\/PATH/,
    );
    expect(resolveSettings({ config: file('run2.yaml', 'runDir: /var/run/agent\nlisten: unix\n') }, {}, 0)).toMatchObject({
      runDir: '/var/run/agent',
      listen: 'unix:/var/run/agent/agent.sock',
    });
    expect(() => resolveSettings({ config: file('run3.yaml', 'runDir: run\n') }, {})).toThrow(/runDir must be an absolute path/);
  });

  it('takes mount prefixes as absolute normalised paths', () => {
    expect(resolveSettings({ config: file('mp.yaml', 'mountPrefixes: [/srv, /mnt]\n') }, {}).mountPrefixes).toEqual(['/srv', '/mnt']);
    expect(resolveSettings({ config: file('mp0.yaml', '') }, {}).mountPrefixes).toEqual([]);
    expect(() => resolveSettings({ config: file('mp1.yaml', 'mountPrefixes: /srv\n') }, {})).toThrow(/mountPrefixes must be a list of absolute paths/);
    expect(() => resolveSettings({ config: file('mp2.yaml', 'mountPrefixes: [/srv/../etc]\n') }, {})).toThrow(
      /mountPrefixes: "\/srv\/..\/etc" is not an absolute, normalised path/,
    );
  });

  it("reads the array API's token file, and says what to fix when it cannot", () => {
    const f = file('array.token', 'abc123\n');
    expect(arrayToken({ arrayToken: '', arrayTokenFile: f })).toBe('abc123');
    expect(arrayToken({ arrayToken: 'env-token', arrayTokenFile: '' })).toBe('env-token');
    expect(arrayToken({ arrayToken: '', arrayTokenFile: '' })).toBeUndefined();
    expect(() => arrayToken({ arrayToken: '', arrayTokenFile: join(dir, 'none.token') })).toThrow(
      /cannot read the array token .*none\.token: ENOENT; check --token-file \(or arrayTokenFile in the config\), or set ARRAYLAB_TOKEN/,
    );
    expect(() => arrayToken({ arrayToken: '', arrayTokenFile: file('two.token', 'a b\n') })).toThrow(/must hold one token on one line/);
  });
});
