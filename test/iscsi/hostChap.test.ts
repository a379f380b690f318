/**
 * Who must pass which CHAP, in process with hand-made logins: an initiator whose host has CHAP
 * must pass that one (not the target's, not none), any other initiator the target's iscsi.chap;
 * MD5 refused by the algorithm list; failed logins throttled per address.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { CHAP_MD5, CHAP_SHA256, chapResponse } from '../../emulator/iscsi/chap.js';
import * as op from '../../emulator/iscsi/opcodes.js';
import { decodeBinary, encodeHex, parseText, type TextPair } from '../../emulator/iscsi/text.js';
import type { IscsiAuthOptions } from '../../emulator/iscsi/types.js';
import { INITIATOR_IQN, RawInitiator, startTarget, TARGET_IQN, type FixtureOptions, type TargetFixture } from '../support/iscsiTestInitiator.js';

const WEB = 'iqn.1994-05.com.redhat:web1';
const HOST_CHAP: IscsiAuthOptions = { initiator: { username: 'web', secret: 'web-host-secret-1' }, label: 'host web' };
const GLOBAL: IscsiAuthOptions = { initiator: { username: 'lab', secret: 'lab-global-secret' } };

let f: TargetFixture | undefined;
const clients: RawInitiator[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await f?.close();
  f = undefined;
});

async function target(o: FixtureOptions): Promise<TargetFixture> {
  f = await startTarget({ chapFor: (name) => (name.toLowerCase() === WEB ? HOST_CHAP : undefined), ...o });
  return f;
}

interface Attempt {
  initiator?: string;
  /** Absent: AuthMethod=None. */
  chap?: { user: string; secret: string; algorithms?: string };
}

/** Logs in as an initiator would (security stage, then operational); returns the status of the last response, 0 for success. */
async function login(port: number, a: Attempt): Promise<number> {
  const c = await RawInitiator.connect(port);
  clients.push(c);
  const isid = 0x400001370000;
  const status = (r: { bhs: Buffer }) => (r.bhs[36]! << 8) | r.bhs[37]!;
  const first: TextPair[] = [
    ['InitiatorName', a.initiator ?? INITIATOR_IQN],
    ['SessionType', 'Normal'],
    ['TargetName', TARGET_IQN],
    ['AuthMethod', a.chap ? 'CHAP,None' : 'None'],
  ];
  let r = await c.loginRequest({ csg: 0, nsg: 1, transit: !a.chap, isid }, first);
  if (status(r) !== 0) return status(r);
  if (a.chap) {
    r = await c.loginRequest({ csg: 0, nsg: 1, transit: false, isid }, [['CHAP_A', a.chap.algorithms ?? '5']]);
    if (status(r) !== 0) return status(r);
    const got = new Map(parseText(r.data));
    const challenge = decodeBinary(got.get('CHAP_C')!)!;
    const response = chapResponse(Number(got.get('CHAP_A')), Number(got.get('CHAP_I')), a.chap.secret, challenge);
    r = await c.loginRequest({ csg: 0, nsg: 1, transit: true, isid }, [
      ['CHAP_N', a.chap.user],
      ['CHAP_R', encodeHex(response)],
    ]);
    if (status(r) !== 0) return status(r);
  }
  r = await c.loginRequest({ csg: 1, nsg: 3, transit: true, isid }, [['MaxRecvDataSegmentLength', '65536']]);
  return status(r);
}

const AUTH_FAILED = (op.LOGIN_CLASS_INITIATOR_ERROR << 8) | op.LOGIN_AUTH_FAILED;
const hostChap = { user: 'web', secret: 'web-host-secret-1' };
const globalChap = { user: 'lab', secret: 'lab-global-secret' };

describe('per-host CHAP', () => {
  it("an initiator of a host with CHAP must pass its host's CHAP: not the target's, and not none", async () => {
    const t = await target({ auth: GLOBAL });
    expect(await login(t.port, { initiator: WEB, chap: hostChap })).toBe(0);
    expect(await login(t.port, { initiator: WEB, chap: globalChap })).toBe(AUTH_FAILED);
    expect(await login(t.port, { initiator: WEB })).toBe(AUTH_FAILED);
    const refused = t.logger.find('warn', 'login refused');
    expect(refused.map((r) => r.fields.chap)).toEqual(['host web', 'host web']);
    expect(String(refused[0]!.fields.reason)).toMatch(/user "lab" is not the configured CHAP user \(CHAP of host web\)/);
    expect(JSON.stringify(t.logger.records)).not.toContain(hostChap.secret);
  });

  it("any other initiator passes the target's iscsi.chap", async () => {
    const t = await target({ auth: GLOBAL });
    expect(await login(t.port, { chap: globalChap })).toBe(0);
    expect(await login(t.port, { chap: hostChap })).toBe(AUTH_FAILED);
    expect(await login(t.port, {})).toBe(AUTH_FAILED);
    expect(t.logger.find('info', 'initiator logged in')[0]!.fields.chap).toBe('iscsi.chap');
  });

  it('without iscsi.chap, a host with CHAP still requires it while other initiators log in without', async () => {
    const t = await target({});
    expect(await login(t.port, {})).toBe(0);
    expect(await login(t.port, { initiator: WEB })).toBe(AUTH_FAILED);
    expect(await login(t.port, { initiator: WEB, chap: { ...hostChap, secret: 'wrong-secret-123' } })).toBe(AUTH_FAILED);
    expect(await login(t.port, { initiator: WEB, chap: hostChap })).toBe(0);
  });
});

describe('CHAP algorithms', () => {
  it('refuses MD5 when the list leaves it out, and says why in the log', async () => {
    const t = await target({ auth: GLOBAL, chapAlgorithms: [CHAP_SHA256], loginThrottle: false });
    expect(await login(t.port, { chap: { ...globalChap, algorithms: String(CHAP_MD5) } })).toBe(AUTH_FAILED);
    const reason = String(t.logger.find('warn', 'login refused')[0]!.fields.reason);
    expect(reason).toMatch(/offers CHAP_A=5 \(MD5\), none of which this target accepts \(SHA-256\); MD5 is refused by iscsi.chapAlgorithms/);
    // An initiator that offers SHA-256 too gets it.
    expect(await login(t.port, { chap: { ...globalChap, algorithms: '5,7' } })).toBe(0);
  });

  it('accepts MD5 by default (libiscsi offers nothing else)', async () => {
    const t = await target({ auth: GLOBAL });
    expect(await login(t.port, { chap: { ...globalChap, algorithms: '5' } })).toBe(0);
  });
});

describe('failed-login throttle', () => {
  it('refuses an address after 5 authentication failures, logs it once, and lets it in again after the block', async () => {
    const t = await target({ auth: GLOBAL, loginThrottle: { blockMs: 300, maxBlockMs: 1200 } });
    const wrong = { ...globalChap, secret: 'not-the-secret-1' };
    for (let i = 0; i < 5; i++) expect(await login(t.port, { chap: wrong })).toBe(AUTH_FAILED);
    const blocks = t.logger.find('warn', 'failed iSCSI logins from 127.0.0.1');
    expect(blocks.length).toBe(1);
    expect(blocks[0]!.msg).toMatch(/5 failed iSCSI logins from 127.0.0.1 within 60 s: refusing its connections for 0.3 s/);
    // Even the right secret is turned away while the block lasts: the connection just closes.
    const c = await RawInitiator.connect(t.port);
    clients.push(c);
    expect(await c.recv(1000)).toBeNull();
    expect(c.ended).toBe(true);
    await new Promise((r) => setTimeout(r, 350));
    expect(await login(t.port, { chap: globalChap })).toBe(0);
    // The success started the count over: 4 more failures do not block.
    for (let i = 0; i < 4; i++) expect(await login(t.port, { chap: wrong })).toBe(AUTH_FAILED);
    expect(await login(t.port, { chap: globalChap })).toBe(0);
  });

  it('does not count failures other than authentication', async () => {
    const t = await target({ loginThrottle: { maxFailures: 2 } });
    for (let i = 0; i < 3; i++) {
      const c = await RawInitiator.connect(t.port);
      clients.push(c);
      const r = await c.loginRequest({ csg: 0, nsg: 1, transit: true, isid: 1 }, [
        ['InitiatorName', INITIATOR_IQN],
        ['SessionType', 'Normal'],
        ['TargetName', 'iqn.2026-11.lab.example:not-this-one'],
        ['AuthMethod', 'None'],
      ]);
      expect([r.bhs[36], r.bhs[37]]).toEqual([op.LOGIN_CLASS_INITIATOR_ERROR, op.LOGIN_NOT_FOUND]);
    }
    expect(await login(t.port, {})).toBe(0);
  });
});
