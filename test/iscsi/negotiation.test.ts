import { describe, expect, it } from 'vitest';
import {
  DEFAULT_TARGET_CONFIG,
  isIscsiName,
  NegotiationError,
  Negotiator,
  sendTargetsResponse,
  type TargetNegotiationConfig,
} from '../../emulator/iscsi/negotiation.js';
import * as op from '../../emulator/iscsi/opcodes.js';
import type { TextPair } from '../../emulator/iscsi/text.js';

const INITIATOR = 'iqn.2004-10.com.ubuntu:01:5e1d7c2a9f';
const TARGET = 'iqn.2026-01.lab.arraylab:vol1';

function kv(s: string): TextPair[] {
  return s
    .trim()
    .split(/\s+/)
    .map((p) => {
      const i = p.indexOf('=');
      return [p.slice(0, i), p.slice(i + 1)] as const;
    });
}

/** A negotiator past the security stage of a Normal session. */
function normal(config: Partial<TargetNegotiationConfig> = {}): Negotiator {
  const n = new Negotiator({ ...DEFAULT_TARGET_CONFIG, ...config });
  n.login(kv(`InitiatorName=${INITIATOR} TargetName=${TARGET} SessionType=Normal AuthMethod=None`), 'security');
  return n;
}

function answer(n: Negotiator, key: string, value: string): string | undefined {
  return n.login([[key, value]], 'operational').response.find(([k]) => k === key)?.[1];
}

describe('open-iscsi and libiscsi default offers', () => {
  it('accepts open-iscsi: security stage then operational stage', () => {
    const n = new Negotiator();
    const sec = n.login(kv(`InitiatorName=${INITIATOR} InitiatorAlias=host1 TargetName=${TARGET} SessionType=Normal AuthMethod=None`), 'security');
    expect(sec.response).toEqual([
      ['AuthMethod', 'None'],
      ['TargetPortalGroupTag', '1'],
    ]);
    const ops = n.login(
      kv(`HeaderDigest=None DataDigest=None DefaultTime2Wait=2 DefaultTime2Retain=0 IFMarker=No OFMarker=No ErrorRecoveryLevel=0
          InitialR2T=No ImmediateData=Yes MaxBurstLength=16776192 FirstBurstLength=262144 MaxOutstandingR2T=1 MaxConnections=1
          DataPDUInOrder=Yes DataSequenceInOrder=Yes MaxRecvDataSegmentLength=262144`),
      'operational',
    );
    expect(ops.response).toEqual(
      kv(`HeaderDigest=None DataDigest=None DefaultTime2Wait=2 DefaultTime2Retain=0 IFMarker=No OFMarker=No ErrorRecoveryLevel=0
          InitialR2T=No ImmediateData=Yes MaxBurstLength=1048576 FirstBurstLength=65536 MaxOutstandingR2T=1 MaxConnections=1
          DataPDUInOrder=Yes DataSequenceInOrder=Yes MaxRecvDataSegmentLength=262144`),
    );
    expect(n.finish()).toEqual([]); // already declared
    expect(n.params).toMatchObject({
      sessionType: 'Normal',
      initiatorName: INITIATOR,
      initiatorAlias: 'host1',
      targetName: TARGET,
      authMethod: 'None',
      headerDigest: false,
      dataDigest: false,
      initialR2T: false,
      immediateData: true,
      maxBurstLength: 1048576,
      firstBurstLength: 65536,
      initiatorMaxRecvDataSegmentLength: 262144,
      targetMaxRecvDataSegmentLength: 262144,
      defaultTime2Wait: 2,
      defaultTime2Retain: 0,
      errorRecoveryLevel: 0,
      maxOutstandingR2T: 1,
    });
  });

  it('accepts libiscsi: digest lists, login straight into the operational stage', () => {
    const n = new Negotiator();
    const r = n.login(
      kv(`InitiatorName=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test TargetName=${TARGET} SessionType=Normal
          HeaderDigest=None,CRC32C DataDigest=None InitialR2T=Yes ImmediateData=Yes MaxBurstLength=262144 FirstBurstLength=262144
          MaxRecvDataSegmentLength=262144 DataPDUInOrder=Yes DataSequenceInOrder=Yes DefaultTime2Wait=2 DefaultTime2Retain=0
          IFMarker=No OFMarker=No ErrorRecoveryLevel=0 MaxOutstandingR2T=1 MaxConnections=1`),
      'operational',
    );
    const m = new Map(r.response);
    expect(m.get('HeaderDigest')).toBe('None');
    expect(m.get('InitialR2T')).toBe('Yes');
    expect(m.get('FirstBurstLength')).toBe('65536');
    expect(m.get('MaxBurstLength')).toBe('262144');
    expect(m.get('TargetPortalGroupTag')).toBe('1');
    expect(n.params.initialR2T).toBe(true);
  });

  it('open-iscsi discovery session: operational keys of Normal sessions are Irrelevant', () => {
    const n = new Negotiator();
    n.login(kv(`InitiatorName=${INITIATOR} SessionType=Discovery AuthMethod=None`), 'security');
    const r = n.login(
      kv('HeaderDigest=None DataDigest=None DefaultTime2Wait=2 ErrorRecoveryLevel=0 MaxRecvDataSegmentLength=32768 MaxBurstLength=262144 InitialR2T=No'),
      'operational',
    );
    expect(r.response).toEqual(
      kv(
        'HeaderDigest=None DataDigest=None DefaultTime2Wait=2 ErrorRecoveryLevel=0 MaxRecvDataSegmentLength=262144 MaxBurstLength=Irrelevant InitialR2T=Irrelevant',
      ),
    );
    expect(n.params.sessionType).toBe('Discovery');
    expect(n.params.initiatorMaxRecvDataSegmentLength).toBe(32768);
  });
});

describe("each key's result function", () => {
  it("digests: first of the initiator's list that we support", () => {
    expect(answer(normal(), 'HeaderDigest', 'CRC32C,None')).toBe('CRC32C');
    expect(answer(normal(), 'HeaderDigest', 'None,CRC32C')).toBe('None');
    expect(answer(normal({ headerDigests: ['CRC32C'] }), 'HeaderDigest', 'None,CRC32C')).toBe('CRC32C');
    expect(answer(normal({ dataDigests: ['None'] }), 'DataDigest', 'CRC32C')).toBe('Reject');
    expect(answer(normal(), 'DataDigest', 'MD5,CRC32C')).toBe('CRC32C');
    expect(answer(normal(), 'DataDigest', 'None,,CRC32C')).toBe('Reject');
    const n = normal();
    n.login(kv('HeaderDigest=CRC32C DataDigest=CRC32C'), 'operational');
    expect(n.params.headerDigest && n.params.dataDigest).toBe(true);
  });

  it('booleans: InitialR2T OR, ImmediateData AND, in-order keys OR', () => {
    expect(answer(normal({ initialR2T: false }), 'InitialR2T', 'No')).toBe('No');
    expect(answer(normal({ initialR2T: true }), 'InitialR2T', 'No')).toBe('Yes');
    expect(answer(normal({ initialR2T: false }), 'InitialR2T', 'Yes')).toBe('Yes');
    expect(answer(normal({ immediateData: true }), 'ImmediateData', 'No')).toBe('No');
    expect(answer(normal({ immediateData: false }), 'ImmediateData', 'Yes')).toBe('No');
    expect(answer(normal(), 'ImmediateData', 'Yes')).toBe('Yes');
    expect(answer(normal(), 'DataPDUInOrder', 'No')).toBe('Yes');
    expect(answer(normal(), 'DataSequenceInOrder', 'No')).toBe('Yes');
    expect(answer(normal(), 'ImmediateData', 'yes')).toBe('Reject');
  });

  it('numbers: min, max and ranges', () => {
    expect(answer(normal(), 'MaxBurstLength', '16776192')).toBe('1048576');
    expect(answer(normal(), 'MaxBurstLength', '4096')).toBe('4096');
    expect(answer(normal(), 'FirstBurstLength', '8192')).toBe('8192');
    expect(answer(normal(), 'MaxConnections', '8')).toBe('1');
    expect(answer(normal(), 'MaxOutstandingR2T', '16')).toBe('1');
    expect(answer(normal(), 'DefaultTime2Wait', '0')).toBe('2');
    expect(answer(normal(), 'DefaultTime2Wait', '10')).toBe('10');
    expect(answer(normal(), 'DefaultTime2Retain', '60')).toBe('20');
    expect(answer(normal(), 'ErrorRecoveryLevel', '2')).toBe('0');
    expect(answer(normal(), 'MaxBurstLength', '0x100000')).toBe('1048576');
    expect(answer(normal(), 'MaxBurstLength', '511')).toBe('Reject');
    expect(answer(normal(), 'MaxBurstLength', '16777216')).toBe('Reject');
    expect(answer(normal(), 'DefaultTime2Wait', '3601')).toBe('Reject');
    expect(answer(normal(), 'ErrorRecoveryLevel', '3')).toBe('Reject');
    expect(answer(normal(), 'MaxConnections', '0')).toBe('Reject');
    expect(answer(normal(), 'MaxConnections', 'lots')).toBe('Reject');
  });

  it('FirstBurstLength is Irrelevant with InitialR2T=Yes and ImmediateData=No, and never exceeds MaxBurstLength', () => {
    const n = normal();
    const r = n.login(kv('FirstBurstLength=65536 InitialR2T=Yes ImmediateData=No'), 'operational');
    expect(r.response).toEqual(kv('FirstBurstLength=Irrelevant InitialR2T=Yes ImmediateData=No'));
    const m = normal();
    const r2 = m.login(kv('MaxBurstLength=16384 FirstBurstLength=65536'), 'operational');
    expect(r2.response).toEqual(kv('MaxBurstLength=16384 FirstBurstLength=16384'));
    expect(m.params.firstBurstLength).toBe(16384);
    const q = normal();
    expect(q.login(kv('MaxBurstLength=16384 InitialR2T=Yes ImmediateData=No FirstBurstLength=65536'), 'operational').response[3]).toEqual([
      'FirstBurstLength',
      'Irrelevant',
    ]);
    expect(q.params.firstBurstLength).toBe(16384); // the effective value never exceeds MaxBurstLength
  });

  it('MaxRecvDataSegmentLength is declarative: we record theirs and declare ours once', () => {
    const n = normal({ maxRecvDataSegmentLength: 65536 });
    expect(answer(n, 'MaxRecvDataSegmentLength', '8192')).toBe('65536');
    expect(n.params.initiatorMaxRecvDataSegmentLength).toBe(8192);
    const q = normal();
    q.login(kv('HeaderDigest=None'), 'operational');
    expect(q.finish()).toEqual([['MaxRecvDataSegmentLength', '262144']]);
    expect(q.params.initiatorMaxRecvDataSegmentLength).toBe(8192); // RFC default
    expect(q.finish()).toEqual([]);
    expect(answer(normal(), 'MaxRecvDataSegmentLength', '100')).toBe('Reject');
  });

  it('keys named like Object.prototype members are just unknown keys', () => {
    expect(normal().login(kv('constructor=1 __proto__=x toString=y hasOwnProperty=z'), 'operational').response).toEqual(
      kv('constructor=NotUnderstood __proto__=NotUnderstood toString=NotUnderstood hasOwnProperty=NotUnderstood'),
    );
  });

  it('unknown keys are NotUnderstood, target-only keys Reject, obsolete markers per RFC 7143 §13.25', () => {
    const r = normal().login(
      kv('X-com.example.Foo=1 FancyKey=2 TargetAlias=x TargetPortalGroupTag=1 IFMarker=Yes OFMarker=No IFMarkInt=2048 OFMarkInt=1~65535'),
      'operational',
    );
    expect(r.response).toEqual(
      kv(
        'X-com.example.Foo=NotUnderstood FancyKey=NotUnderstood TargetAlias=Reject TargetPortalGroupTag=Reject IFMarker=No OFMarker=No IFMarkInt=Reject OFMarkInt=Reject',
      ),
    );
  });

  it("AuthMethod: first of the initiator's list we allow; CHAP keys go to the authenticator", () => {
    const n = new Negotiator({ ...DEFAULT_TARGET_CONFIG, authMethods: ['CHAP'] });
    const r = n.login(kv(`InitiatorName=${INITIATOR} TargetName=${TARGET} AuthMethod=None,CHAP`), 'security');
    expect(r.response[0]).toEqual(['AuthMethod', 'CHAP']);
    expect(n.params.authMethod).toBe('CHAP');
    const c = n.login(kv('CHAP_A=7,5'), 'security');
    expect(c.auth).toEqual([['CHAP_A', '7,5']]);
    expect(c.response).toEqual([]);
    const none = new Negotiator({ ...DEFAULT_TARGET_CONFIG, authMethods: ['CHAP'] });
    expect(none.login(kv(`InitiatorName=${INITIATOR} TargetName=${TARGET} AuthMethod=None`), 'security').response[0]).toEqual(['AuthMethod', 'Reject']);
    expect(none.params.authMethod).toBeUndefined();
  });

  it('reports TargetAlias in the first response when configured', () => {
    const n = new Negotiator({ ...DEFAULT_TARGET_CONFIG, targetAlias: 'arraylab vol1', targetPortalGroupTag: 7 });
    const r = n.login(kv(`InitiatorName=${INITIATOR} TargetName=${TARGET}`), 'operational');
    expect(r.response).toEqual([
      ['TargetPortalGroupTag', '7'],
      ['TargetAlias', 'arraylab vol1'],
    ]);
    expect(n.login(kv('HeaderDigest=None'), 'operational').response).toEqual([['HeaderDigest', 'None']]);
  });
});

describe('violations end the login with a status', () => {
  function fails(fn: () => unknown): NegotiationError {
    try {
      fn();
    } catch (e) {
      expect(e).toBeInstanceOf(NegotiationError);
      return e as NegotiationError;
    }
    throw new Error('expected NegotiationError');
  }

  it('missing InitiatorName or TargetName', () => {
    const a = fails(() => new Negotiator().login(kv(`TargetName=${TARGET}`), 'security'));
    expect([a.statusClass, a.statusDetail]).toEqual([op.LOGIN_CLASS_INITIATOR_ERROR, op.LOGIN_MISSING_PARAMETER]);
    const b = fails(() => new Negotiator().login(kv(`InitiatorName=${INITIATOR} SessionType=Normal`), 'security'));
    expect(b.message).toMatch(/no TargetName/);
  });

  it('bad SessionType, malformed names, renegotiation, keys in the wrong stage', () => {
    const st = fails(() => new Negotiator().login(kv(`InitiatorName=${INITIATOR} SessionType=Weird`), 'security'));
    expect(st.statusDetail).toBe(op.LOGIN_SESSION_TYPE_NOT_SUPPORTED);
    expect(fails(() => new Negotiator().login(kv('InitiatorName=bob'), 'security')).message).toMatch(/not an iqn/);
    const n = normal();
    n.login(kv('MaxBurstLength=65536'), 'operational');
    expect(fails(() => n.login(kv('MaxBurstLength=65536'), 'operational')).message).toMatch(/negotiated twice/);
    // A repeated declaration with the same value is ignored; a changed one is not.
    expect(n.login(kv(`InitiatorName=${INITIATOR} HeaderDigest=None`), 'operational').response).toEqual([['HeaderDigest', 'None']]);
    expect(fails(() => n.login(kv('InitiatorName=iqn.2026-01.lab:other'), 'operational')).message).toMatch(/negotiated twice/);
    expect(fails(() => normal().login(kv('AuthMethod=None'), 'operational')).message).toMatch(/security/);
    expect(fails(() => normal().login(kv('CHAP_A=5'), 'operational')).message).toMatch(/security/);
  });

  it('refuses an inconsistent target config', () => {
    expect(() => new Negotiator({ ...DEFAULT_TARGET_CONFIG, firstBurstLength: 2 << 20 })).toThrow(/FirstBurstLength/);
    expect(() => new Negotiator({ ...DEFAULT_TARGET_CONFIG, authMethods: [] })).toThrow(/authMethods/);
  });
});

describe('Text requests in full feature phase', () => {
  const targets = [
    { name: TARGET, addresses: ['10.0.0.1:3260,1', '[fd00::1]:3260,1'] },
    { name: 'iqn.2026-01.lab.arraylab:vol2', addresses: ['10.0.0.1:3260,1'] },
  ];

  it('SendTargets=All in a discovery session lists every target', () => {
    const n = new Negotiator();
    n.login(kv(`InitiatorName=${INITIATOR} SessionType=Discovery`), 'operational');
    const step = n.text(kv('SendTargets=All'));
    expect(step.sendTargets).toBe('All');
    expect(step.response).toEqual([]);
    expect(sendTargetsResponse(step.sendTargets!, targets, n.params)).toEqual([
      ['TargetName', TARGET],
      ['TargetAddress', '10.0.0.1:3260,1'],
      ['TargetAddress', '[fd00::1]:3260,1'],
      ['TargetName', 'iqn.2026-01.lab.arraylab:vol2'],
      ['TargetAddress', '10.0.0.1:3260,1'],
    ]);
  });

  it('SendTargets in a normal session: empty means this target; All is refused', () => {
    const s = { sessionType: 'Normal' as const, targetName: TARGET };
    expect(sendTargetsResponse('', targets, s)).toHaveLength(3);
    expect(sendTargetsResponse('iqn.2026-01.lab.arraylab:vol2', targets, s)).toHaveLength(2);
    expect(sendTargetsResponse('iqn.2026-01.lab.arraylab:none', targets, s)).toEqual([]);
    expect(sendTargetsResponse('All', targets, s)).toEqual([['SendTargets', 'Reject']]);
  });

  it('login-only keys are rejected in a Text request; MaxRecvDataSegmentLength may change', () => {
    const n = normal();
    n.login(kv('MaxRecvDataSegmentLength=65536'), 'operational');
    const r = n.text(kv('MaxBurstLength=4096 MaxRecvDataSegmentLength=131072 X-vendor=1'));
    expect(r.response).toEqual(kv('MaxBurstLength=Reject MaxRecvDataSegmentLength=262144 X-vendor=NotUnderstood'));
    expect(n.params.initiatorMaxRecvDataSegmentLength).toBe(131072);
    expect(normal().login(kv('SendTargets=All'), 'operational').response).toEqual([['SendTargets', 'Reject']]);
  });
});

describe('isIscsiName', () => {
  it('accepts iqn/eui/naa and refuses the rest', () => {
    for (const ok of [INITIATOR, 'eui.02004567A425678D', 'naa.52004567BA64678D', 'naa.62004567BA64678D0123456789ABCDEF']) expect(isIscsiName(ok)).toBe(true);
    for (const bad of ['', 'iqn', 'iqn.20-01.x', 'eui.123', 'naa.1234', 'iqn.2026-01.a b', `iqn.2026-01.${'a'.repeat(300)}`])
      expect(isIscsiName(bad)).toBe(false);
  });
});
