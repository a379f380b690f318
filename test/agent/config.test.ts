/** The agent's settings: precedence, and a corrupt config file refused with the file, key and fix. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveSettings } from '../../agent/config.js';

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
});
