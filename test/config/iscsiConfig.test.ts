/** The iSCSI keys of the config: listen.iscsi, the iscsi section (target name, host affinity, CHAP) and their flags. */
import { describe, expect, it } from 'vitest';
import { applyOverrides, ConfigError, defaultTargetName, loadConfig, parseConfig } from '../../emulator/config.js';

const SRC = '/etc/arraylab.yaml';
const parse = (yaml: string) => parseConfig(yaml, SRC, '/etc');
const errorOf = (yaml: string): string => {
  try {
    parse(yaml);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error(`accepted: ${yaml}`);
};

describe('iSCSI config', () => {
  it('listens on 127.0.0.1:3260 in the built-in default, and not at all when a config file leaves listen.iscsi out', () => {
    expect(loadConfig().listen.iscsi).toEqual({ host: '127.0.0.1', port: 3260 });
    expect(parse('volumes: []').listen.iscsi).toBeNull();
    expect(parse('listen: {iscsi: "0.0.0.0:3261"}').listen.iscsi).toEqual({ host: '0.0.0.0', port: 3261 });
    expect(errorOf('listen: {iscsi: "3260"}')).toBe(
      'config /etc/arraylab.yaml: listen.iscsi: "3260" is not an address; use HOST:PORT such as 127.0.0.1:10809 (port 0 picks a free port)',
    );
  });

  it('reads the target name (canonical), requireHostAffinity and CHAP', () => {
    const c = parse(`
listen: {iscsi: "127.0.0.1:3260"}
iscsi:
  targetName: IQN.2026-11.lab.Arraylab:Lab1
  requireHostAffinity: true
  chap: {username: lab, secret: twelve-chars, mutualUsername: array, mutualSecret: other-secret-16}
`);
    expect(c.iscsi).toEqual({
      targetName: 'iqn.2026-11.lab.arraylab:lab1',
      requireHostAffinity: true,
      chap: { username: 'lab', secret: 'twelve-chars', mutualUsername: 'array', mutualSecret: 'other-secret-16' },
    });
    expect(parse('iscsi: {chap: {username: u, secret: "123456789012"}}').iscsi.chap).toEqual({ username: 'u', secret: '123456789012' });
    expect(parse('iscsi: {}').iscsi).toEqual({ targetName: null, requireHostAffinity: false, chap: null });
    expect(defaultTargetName('0123456789ab')).toBe('iqn.2026-11.lab.arraylab:array-0123456789ab');
  });

  it.each([
    ['iscsi: true', 'iscsi: must be a mapping, e.g. iscsi: {requireHostAffinity: true}'],
    ['iscsi: {targetname: x}', 'iscsi.targetname: unknown key; expected one of targetName, requireHostAffinity, chap'],
    ['iscsi: {targetName: array1}', 'iscsi.targetName: "array1" is not an iSCSI name; use iqn.YYYY-MM.reversed.domain[:name]'],
    ['iscsi: {targetName: "iqn.2026-13.lab.x:a"}', 'iscsi.targetName: "iqn.2026-13.lab.x:a" is not an iqn. name: month 13 is not 01 to 12'],
    ['iscsi: {requireHostAffinity: "yes"}', 'iscsi.requireHostAffinity: "yes" is not true or false'],
    ['iscsi: {chap: on}', 'iscsi.chap: must be a mapping with username and secret'],
    ['iscsi: {chap: {secret: "123456789012"}}', 'iscsi.chap.username: is missing; give the user name initiators log in with (their CHAP_N)'],
    ['iscsi: {chap: {username: u}}', 'iscsi.chap.secret: is missing; give the secret initiators log in with, 12 to 16 characters'],
    ['iscsi: {chap: {username: u, secret: short}}', 'iscsi.chap.secret: is 5 bytes; a CHAP secret needs at least 12 bytes (96 bits, RFC 7143)'],
    ['iscsi: {chap: {username: u, secret: 123456789012}}', 'iscsi.chap.secret: is not text; quote it'],
    ['iscsi: {chap: {username: 7, secret: "123456789012"}}', 'iscsi.chap.username: 7 is not text; quote it'],
    ['iscsi: {chap: {username: "", secret: "123456789012"}}', 'iscsi.chap.username: is empty; give a value or remove the key'],
    [
      `iscsi: {chap: {username: "${'u'.repeat(256)}", secret: "123456789012"}}`,
      'iscsi.chap.username: is 256 bytes, more than the 255 initiators accept; shorten it',
    ],
    ['iscsi: {chap: {username: "a\\tb", secret: "123456789012"}}', 'iscsi.chap.username: contains a control character; use printable characters only'],
    [
      'iscsi: {chap: {username: u, secret: "123456789012", mutualUsername: t}}',
      'iscsi.chap.mutualSecret: is missing; mutual CHAP needs both mutualUsername and mutualSecret',
    ],
    ['iscsi: {chap: {username: u, secret: "123456789012", mutualSecret: "abcdefghijkl"}}', 'iscsi.chap.mutualUsername: is missing; mutual CHAP needs both'],
    [
      'iscsi: {chap: {username: u, secret: "123456789012", mutualUsername: t, mutualSecret: "12345"}}',
      'iscsi.chap.mutualSecret: is 5 bytes; a CHAP secret needs at least 12 bytes',
    ],
    [
      'iscsi: {chap: {username: u, secret: "123456789012", mutualUsername: t, mutualSecret: "123456789012"}}',
      'iscsi.chap.mutualSecret: is the same as secret; RFC 7143 forbids one secret for both directions: give the target its own secret',
    ],
    [
      'iscsi: {chap: {username: u, secret: "123456789012", colour: red}}',
      'iscsi.chap.colour: unknown key; expected one of username, secret, mutualUsername, mutualSecret',
    ],
  ])('refuses %j', (yaml, message) => {
    const m = errorOf(yaml);
    expect(m.startsWith(`config ${SRC}: ${message}`), m).toBe(true);
  });

  it('reads iscsi.chapAlgorithms: names in any case, in order; leaving MD5 out refuses it', () => {
    expect(parse('iscsi: {}').iscsi.chapAlgorithms).toBeUndefined(); // all four
    expect(parse('iscsi: {chapAlgorithms: [sha-256, SHA3-256]}').iscsi.chapAlgorithms).toEqual([7, 8]);
    expect(parse('iscsi: {chapAlgorithms: [MD5]}').iscsi.chapAlgorithms).toEqual([5]);
    expect(errorOf('iscsi: {chapAlgorithms: []}')).toBe(
      'config /etc/arraylab.yaml: iscsi.chapAlgorithms: must be a non-empty list of SHA3-256, SHA-256, SHA-1, MD5, e.g. [SHA-256, SHA3-256] to refuse MD5',
    );
    expect(errorOf('iscsi: {chapAlgorithms: SHA-256}')).toMatch(/iscsi.chapAlgorithms: must be a non-empty list/);
    expect(errorOf('iscsi: {chapAlgorithms: [SHA-256, SHA512]}')).toBe(
      'config /etc/arraylab.yaml: iscsi.chapAlgorithms[1]: "SHA512" is not a CHAP algorithm; use SHA3-256, SHA-256, SHA-1, MD5',
    );
    expect(errorOf('iscsi: {chapAlgorithms: [SHA-1, sha-1]}')).toMatch(/iscsi.chapAlgorithms\[1\]: SHA-1 is listed twice/);
  });

  it('never shows a secret in an error', () => {
    for (const yaml of [
      'iscsi: {chap: {username: u, secret: "s3cr3t"}}',
      'iscsi: {chap: {username: u, secret: "s3cr3t-s3cr3t", mutualUsername: t, mutualSecret: "s3cr3t-s3cr3t"}}',
      'iscsi: {chap: {username: u, secret: "s3cr3t\\u0001s3cr3t"}}',
    ]) {
      expect(errorOf(yaml)).not.toMatch(/s3cr3t/);
    }
  });

  it('takes --iscsi and --require-host-affinity over the config', () => {
    const base = parse('listen: {iscsi: "127.0.0.1:3260"}\niscsi: {requireHostAffinity: false}');
    const c = applyOverrides(base, { iscsi: '127.0.0.1:0', requireHostAffinity: true });
    expect(c.listen.iscsi).toEqual({ host: '127.0.0.1', port: 0 });
    expect(c.iscsi.requireHostAffinity).toBe(true);
    // No flags: the config stands (a flag cannot turn requireHostAffinity off; the config says so).
    expect(applyOverrides(parse('iscsi: {requireHostAffinity: true}'), {}).iscsi.requireHostAffinity).toBe(true);
    expect(applyOverrides(parse(''), { iscsi: '[::1]:3260' }).listen.iscsi).toEqual({ host: '::1', port: 3260 });
    expect(() => applyOverrides(base, { iscsi: 'nope' })).toThrow('--iscsi: "nope" is not an address');
  });
});
