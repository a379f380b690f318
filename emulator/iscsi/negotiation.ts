/**
 * Target-side text negotiation of login and session parameters (RFC 7143 §6.2, §13).
 *
 * The initiator proposes key=value pairs; for each we answer with the negotiated value (or
 * NotUnderstood / Irrelevant / Reject) and record the outcome in the session's parameters.
 * Rules per key are in KEYS below, one line each, so the table can be checked against §13.
 *
 * What this module does not do: CHAP (chap.ts; CHAP_* keys are handed back untouched in
 * `auth`), and login stage transitions, status classes and PDUs (the login layer). It throws
 * NegotiationError for violations that must end the login (renegotiating a key, a key an
 * initiator may not send at this point, missing InitiatorName): the error carries the Login
 * Response status class/detail.
 */
import { LOGIN_CLASS_INITIATOR_ERROR, LOGIN_INIT_ERROR, LOGIN_MISSING_PARAMETER, LOGIN_SESSION_TYPE_NOT_SUPPORTED } from './opcodes.js';
import { parseNumber, type TextPair } from './text.js';

// ---- Configuration: what this target offers (its own values in each key's result function) ----

export type DigestName = 'None' | 'CRC32C';
export type AuthMethodName = 'None' | 'CHAP';

export interface TargetNegotiationConfig {
  /** Digests we accept, any order; the initiator's preference order decides. */
  headerDigests: readonly DigestName[];
  dataDigests: readonly DigestName[];
  maxConnections: number;
  /** Our InitialR2T: false means we accept unsolicited data when the initiator does (OR rule). */
  initialR2T: boolean;
  immediateData: boolean;
  /** What we can receive per PDU (declared to the initiator). */
  maxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
  maxOutstandingR2T: number;
  dataPDUInOrder: boolean;
  dataSequenceInOrder: boolean;
  /** Only 0 is implemented: no SNACK, no task reassignment. */
  errorRecoveryLevel: 0;
  /** Authentication methods allowed for this login, e.g. ['CHAP'] when a secret is configured. */
  authMethods: readonly AuthMethodName[];
  targetPortalGroupTag: number;
  targetAlias?: string;
}

export const DEFAULT_TARGET_CONFIG: TargetNegotiationConfig = {
  headerDigests: ['None', 'CRC32C'],
  dataDigests: ['None', 'CRC32C'],
  maxConnections: 1,
  initialR2T: false,
  immediateData: true,
  maxRecvDataSegmentLength: 262144,
  maxBurstLength: 1048576,
  firstBurstLength: 65536,
  defaultTime2Wait: 2,
  defaultTime2Retain: 20,
  maxOutstandingR2T: 1,
  dataPDUInOrder: true,
  dataSequenceInOrder: true,
  errorRecoveryLevel: 0,
  authMethods: ['None'],
  targetPortalGroupTag: 1,
};

// ---- Result: the session's parameters ----

export interface SessionParams {
  sessionType: 'Normal' | 'Discovery';
  initiatorName?: string;
  initiatorAlias?: string;
  targetName?: string;
  authMethod?: AuthMethodName;
  headerDigest: boolean;
  dataDigest: boolean;
  maxConnections: number;
  initialR2T: boolean;
  immediateData: boolean;
  /** The initiator's MaxRecvDataSegmentLength: the largest data segment we may send. */
  initiatorMaxRecvDataSegmentLength: number;
  /** Ours: the largest data segment the initiator may send us (after login). */
  targetMaxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
  maxOutstandingR2T: number;
  dataPDUInOrder: boolean;
  dataSequenceInOrder: boolean;
  errorRecoveryLevel: number;
}

/** RFC 7143 defaults: what holds for a key nobody negotiated (§13). */
export function rfcDefaults(): SessionParams {
  return {
    sessionType: 'Normal',
    headerDigest: false,
    dataDigest: false,
    maxConnections: 1,
    initialR2T: true,
    immediateData: true,
    initiatorMaxRecvDataSegmentLength: 8192,
    targetMaxRecvDataSegmentLength: 8192,
    maxBurstLength: 262144,
    firstBurstLength: 65536,
    defaultTime2Wait: 2,
    defaultTime2Retain: 20,
    maxOutstandingR2T: 1,
    dataPDUInOrder: true,
    dataSequenceInOrder: true,
    errorRecoveryLevel: 0,
  };
}

export class NegotiationError extends Error {
  constructor(
    message: string,
    readonly statusClass: number,
    readonly statusDetail: number,
  ) {
    super(message);
    this.name = 'NegotiationError';
  }
}

export type Phase = 'security' | 'operational' | 'full-feature';

export interface NegotiationStep {
  /** Pairs for the response, in the order of the request, plus declarations we add. */
  response: TextPair[];
  /** CHAP_* pairs, for chap.ts. */
  auth: TextPair[];
  /** SendTargets value if the request had one (full-feature Text only). */
  sendTargets?: string;
}

// ---- Per-key rules ----

type Rule =
  | { kind: 'list'; apply: (n: Negotiator, offered: string[]) => string | null }
  | { kind: 'bool'; fn: 'and' | 'or'; ours: (c: TargetNegotiationConfig) => boolean; set: (p: SessionParams, v: boolean) => void }
  | { kind: 'num'; fn: 'min' | 'max'; lo: number; hi: number; ours: (c: TargetNegotiationConfig) => number; set: (p: SessionParams, v: number) => void }
  | { kind: 'declarative' };

interface KeyInfo {
  rule: Rule;
  /** Irrelevant in a Discovery session (§13: "Irrelevant when: SessionType=Discovery"). */
  normalOnly?: boolean;
  /** Only during login (IO/LO keys); a Text request in full feature phase gets Reject. */
  loginOnly?: boolean;
  /** Security stage only (AuthMethod). */
  securityOnly?: boolean;
}

const YES = 'Yes';
const NO = 'No';

function pickDigest(supported: readonly DigestName[], offered: string[]): DigestName | null {
  for (const v of offered) if ((supported as readonly string[]).includes(v)) return v as DigestName;
  return null;
}

const KEYS: Record<string, KeyInfo> = {
  HeaderDigest: {
    loginOnly: true,
    rule: {
      kind: 'list',
      apply: (n, offered) => {
        const v = pickDigest(n.config.headerDigests, offered);
        if (v) n.params.headerDigest = v === 'CRC32C';
        return v;
      },
    },
  },
  DataDigest: {
    loginOnly: true,
    rule: {
      kind: 'list',
      apply: (n, offered) => {
        const v = pickDigest(n.config.dataDigests, offered);
        if (v) n.params.dataDigest = v === 'CRC32C';
        return v;
      },
    },
  },
  AuthMethod: {
    loginOnly: true,
    securityOnly: true,
    rule: {
      kind: 'list',
      apply: (n, offered) => {
        for (const v of offered) {
          if ((n.config.authMethods as readonly string[]).includes(v)) {
            n.params.authMethod = v as AuthMethodName;
            return v;
          }
        }
        return null;
      },
    },
  },
  // TaskReporting (§13.23): we implement only the RFC 3720 semantics.
  TaskReporting: { loginOnly: true, normalOnly: true, rule: { kind: 'list', apply: (_n, offered) => (offered.includes('RFC3720') ? 'RFC3720' : null) } },
  MaxConnections: {
    loginOnly: true,
    normalOnly: true,
    rule: { kind: 'num', fn: 'min', lo: 1, hi: 65535, ours: (c) => c.maxConnections, set: (p, v) => (p.maxConnections = v) },
  },
  InitialR2T: { loginOnly: true, normalOnly: true, rule: { kind: 'bool', fn: 'or', ours: (c) => c.initialR2T, set: (p, v) => (p.initialR2T = v) } },
  ImmediateData: { loginOnly: true, normalOnly: true, rule: { kind: 'bool', fn: 'and', ours: (c) => c.immediateData, set: (p, v) => (p.immediateData = v) } },
  MaxBurstLength: {
    loginOnly: true,
    normalOnly: true,
    rule: { kind: 'num', fn: 'min', lo: 512, hi: 0xffffff, ours: (c) => c.maxBurstLength, set: (p, v) => (p.maxBurstLength = v) },
  },
  FirstBurstLength: {
    loginOnly: true,
    normalOnly: true,
    rule: { kind: 'num', fn: 'min', lo: 512, hi: 0xffffff, ours: (c) => c.firstBurstLength, set: (p, v) => (p.firstBurstLength = v) },
  },
  DefaultTime2Wait: {
    loginOnly: true,
    rule: { kind: 'num', fn: 'max', lo: 0, hi: 3600, ours: (c) => c.defaultTime2Wait, set: (p, v) => (p.defaultTime2Wait = v) },
  },
  DefaultTime2Retain: {
    loginOnly: true,
    rule: { kind: 'num', fn: 'min', lo: 0, hi: 3600, ours: (c) => c.defaultTime2Retain, set: (p, v) => (p.defaultTime2Retain = v) },
  },
  MaxOutstandingR2T: {
    loginOnly: true,
    normalOnly: true,
    rule: { kind: 'num', fn: 'min', lo: 1, hi: 65535, ours: (c) => c.maxOutstandingR2T, set: (p, v) => (p.maxOutstandingR2T = v) },
  },
  DataPDUInOrder: { loginOnly: true, normalOnly: true, rule: { kind: 'bool', fn: 'or', ours: (c) => c.dataPDUInOrder, set: (p, v) => (p.dataPDUInOrder = v) } },
  DataSequenceInOrder: {
    loginOnly: true,
    normalOnly: true,
    rule: { kind: 'bool', fn: 'or', ours: (c) => c.dataSequenceInOrder, set: (p, v) => (p.dataSequenceInOrder = v) },
  },
  ErrorRecoveryLevel: {
    loginOnly: true,
    rule: { kind: 'num', fn: 'min', lo: 0, hi: 2, ours: (c) => c.errorRecoveryLevel, set: (p, v) => (p.errorRecoveryLevel = v) },
  },
  // Declarative keys: handled in Negotiator.declare.
  MaxRecvDataSegmentLength: { rule: { kind: 'declarative' } },
  InitiatorName: { loginOnly: true, rule: { kind: 'declarative' } },
  InitiatorAlias: { loginOnly: true, rule: { kind: 'declarative' } },
  TargetName: { loginOnly: true, rule: { kind: 'declarative' } },
  SessionType: { loginOnly: true, rule: { kind: 'declarative' } },
  SendTargets: { rule: { kind: 'declarative' } },
  // Sent only by targets: an initiator sending them is answered Reject.
  TargetAlias: { rule: { kind: 'declarative' } },
  TargetPortalGroupTag: { rule: { kind: 'declarative' } },
  TargetAddress: { rule: { kind: 'declarative' } },
  // Obsoleted by RFC 7143 §13.25 (markers): IFMarker/OFMarker SHOULD get Reject and MAY get "No";
  // we answer No because RFC 3720 initiators (open-iscsi, libiscsi) still offer IFMarker=No and
  // some treat Reject as a failed login. IFMarkInt/OFMarkInt MUST get Reject.
  IFMarker: { rule: { kind: 'declarative' } },
  OFMarker: { rule: { kind: 'declarative' } },
  IFMarkInt: { rule: { kind: 'declarative' } },
  OFMarkInt: { rule: { kind: 'declarative' } },
};

const TARGET_ONLY = new Set(['TargetAlias', 'TargetPortalGroupTag', 'TargetAddress']);

export const NOT_UNDERSTOOD = 'NotUnderstood';
export const IRRELEVANT = 'Irrelevant';
export const REJECT = 'Reject';

/**
 * One login's (or one session's Text exchanges') negotiation state. Create one per connection
 * login; keep it for the session to answer Text requests.
 */
export class Negotiator {
  readonly params: SessionParams = rfcDefaults();
  /** Keys already negotiated: the RFC forbids renegotiating a key during login (§6.2). */
  private readonly negotiated = new Map<string, string>();
  private firstResponse = true;
  private declaredMrdsl = false;

  constructor(readonly config: TargetNegotiationConfig = DEFAULT_TARGET_CONFIG) {
    const c = config;
    if (c.firstBurstLength > c.maxBurstLength) {
      throw new RangeError(`FirstBurstLength ${c.firstBurstLength} exceeds MaxBurstLength ${c.maxBurstLength}; lower firstBurstLength in the target config`);
    }
    if (c.maxRecvDataSegmentLength < 512 || c.maxRecvDataSegmentLength > 0xffffff) {
      throw new RangeError(`MaxRecvDataSegmentLength ${c.maxRecvDataSegmentLength} is outside 512..16777215`);
    }
    if (c.authMethods.length === 0) throw new RangeError('authMethods is empty: allow None or CHAP');
  }

  /**
   * Processes the keys of one (reassembled) Login Request in the given stage. Keys not offered
   * keep their RFC defaults. On the first call, adds TargetPortalGroupTag (and TargetAlias).
   */
  login(pairs: readonly TextPair[], phase: 'security' | 'operational'): NegotiationStep {
    const step = this.process(pairs, phase);
    if (this.firstResponse) {
      this.firstResponse = false;
      const sessionType = pairs.find(([k]) => k === 'SessionType');
      if (!pairs.some(([k]) => k === 'InitiatorName')) {
        throw new NegotiationError('the first Login Request has no InitiatorName (RFC 7143 §13.6)', LOGIN_CLASS_INITIATOR_ERROR, LOGIN_MISSING_PARAMETER);
      }
      if ((sessionType?.[1] ?? 'Normal') === 'Normal' && this.params.targetName === undefined) {
        throw new NegotiationError('a Normal session login has no TargetName (RFC 7143 §13.4)', LOGIN_CLASS_INITIATOR_ERROR, LOGIN_MISSING_PARAMETER);
      }
      step.response.push(['TargetPortalGroupTag', String(this.config.targetPortalGroupTag)]);
      if (this.config.targetAlias !== undefined && this.params.sessionType === 'Normal') {
        step.response.push(['TargetAlias', this.config.targetAlias]);
      }
    }
    return step;
  }

  /**
   * Keys to add to the Login Response that moves to full feature phase: our
   * MaxRecvDataSegmentLength declaration if not sent yet (without it, the initiator assumes
   * 8192). Also records it in params.
   */
  finish(): TextPair[] {
    if (this.declaredMrdsl) return [];
    this.declaredMrdsl = true;
    this.params.targetMaxRecvDataSegmentLength = this.config.maxRecvDataSegmentLength;
    return [['MaxRecvDataSegmentLength', String(this.config.maxRecvDataSegmentLength)]];
  }

  /** Processes a Text Request in full feature phase (SendTargets, MaxRecvDataSegmentLength, ...). */
  text(pairs: readonly TextPair[]): NegotiationStep {
    return this.process(pairs, 'full-feature');
  }

  private process(pairs: readonly TextPair[], phase: Phase): NegotiationStep {
    const step: NegotiationStep = { response: [], auth: [] };
    const inLogin = phase !== 'full-feature';
    // SessionType first: it decides which keys are Irrelevant.
    const st = pairs.find(([k]) => k === 'SessionType');
    if (st && inLogin) this.declareSessionType(st[1]);
    let fblAt = -1;
    let fblValue = '';
    for (const [key, value] of pairs) {
      if (key.startsWith('CHAP_')) {
        if (phase !== 'security') throw this.violation(`${key} outside the security negotiation stage`);
        step.auth.push([key, value]);
        continue;
      }
      // Own properties only: "constructor" or "__proto__" are valid key names on the wire.
      const info = Object.hasOwn(KEYS, key) ? KEYS[key] : undefined;
      if (!info) {
        step.response.push([key, NOT_UNDERSTOOD]);
        continue;
      }
      if (TARGET_ONLY.has(key)) {
        step.response.push([key, REJECT]);
        continue;
      }
      if (info.loginOnly && !inLogin) {
        step.response.push([key, REJECT]);
        continue;
      }
      if (info.securityOnly && phase !== 'security') throw this.violation(`${key} outside the security negotiation stage`);
      if (inLogin && key !== 'SendTargets') {
        const before = this.negotiated.get(key);
        if (before !== undefined) {
          // Repeating a declaration unchanged is harmless (some initiators resend their
          // names); anything else is renegotiation, which §6.2 forbids during login.
          if (info.rule.kind === 'declarative' && before === value) continue;
          throw this.violation(`${key} negotiated twice in one login`);
        }
        this.negotiated.set(key, value);
      }
      if (info.normalOnly && this.params.sessionType === 'Discovery') {
        step.response.push([key, IRRELEVANT]);
        continue;
      }
      if (key === 'FirstBurstLength') {
        // Irrelevant when InitialR2T=Yes and ImmediateData=No, which may be decided later in
        // this same request: answer it last.
        fblAt = step.response.length;
        fblValue = value;
        step.response.push([key, '']);
        continue;
      }
      const answer = this.negotiate(key, info.rule, value, phase, step);
      if (answer !== null) step.response.push([key, answer]);
    }
    if (fblAt >= 0) {
      const p = this.params;
      const answer = p.initialR2T && !p.immediateData ? IRRELEVANT : this.negotiate('FirstBurstLength', KEYS.FirstBurstLength!.rule, fblValue, phase, step);
      step.response[fblAt] = ['FirstBurstLength', answer ?? REJECT];
    }
    // FirstBurstLength must not exceed MaxBurstLength (§13.14): an initiator offering
    // FirstBurstLength above its own MaxBurstLength gets the smaller.
    if (this.params.firstBurstLength > this.params.maxBurstLength) {
      this.params.firstBurstLength = this.params.maxBurstLength;
      const i = step.response.findIndex(([k, v]) => k === 'FirstBurstLength' && v !== IRRELEVANT && v !== REJECT);
      if (i >= 0) step.response[i] = ['FirstBurstLength', String(this.params.firstBurstLength)];
    }
    return step;
  }

  /** The answer for one key, or null when a declarative key needs none. */
  private negotiate(key: string, rule: Rule, value: string, phase: Phase, step: NegotiationStep): string | null {
    switch (rule.kind) {
      case 'list': {
        const offered = value.split(',');
        if (offered.some((v) => v.length === 0)) return REJECT;
        return rule.apply(this, offered) ?? REJECT;
      }
      case 'bool': {
        if (value !== YES && value !== NO) return REJECT;
        const theirs = value === YES;
        const ours = rule.ours(this.config);
        const result = rule.fn === 'or' ? theirs || ours : theirs && ours;
        rule.set(this.params, result);
        return result ? YES : NO;
      }
      case 'num': {
        const n = parseNumber(value);
        if (n === null || n < rule.lo || n > rule.hi) return REJECT;
        const ours = rule.ours(this.config);
        const result = rule.fn === 'min' ? Math.min(n, ours) : Math.max(n, ours);
        rule.set(this.params, result);
        return String(result);
      }
      case 'declarative':
        return this.declare(key, value, phase, step);
    }
  }

  private declare(key: string, value: string, phase: Phase, step: NegotiationStep): string | null {
    switch (key) {
      case 'MaxRecvDataSegmentLength': {
        const n = parseNumber(value);
        if (n === null || n < 512 || n > 0xffffff) return REJECT;
        this.params.initiatorMaxRecvDataSegmentLength = n;
        // Declarative: our answer is our own value (§13.12), sent once per login.
        if (phase === 'full-feature' || !this.declaredMrdsl) {
          this.declaredMrdsl = true;
          this.params.targetMaxRecvDataSegmentLength = this.config.maxRecvDataSegmentLength;
          return String(this.config.maxRecvDataSegmentLength);
        }
        return null;
      }
      case 'InitiatorName':
        if (!isIscsiName(value)) throw this.violation(`InitiatorName "${clip(value)}" is not an iqn., eui. or naa. name`);
        this.params.initiatorName = value;
        return null;
      case 'InitiatorAlias':
        this.params.initiatorAlias = value;
        return null;
      case 'TargetName':
        if (!isIscsiName(value)) throw this.violation(`TargetName "${clip(value)}" is not an iqn., eui. or naa. name`);
        this.params.targetName = value;
        return null;
      case 'SessionType':
        return null; // handled first, in process()
      case 'SendTargets':
        if (phase !== 'full-feature') return REJECT;
        step.sendTargets = value;
        return null;
      case 'IFMarker':
      case 'OFMarker':
        return NO;
      case 'IFMarkInt':
      case 'OFMarkInt':
        return REJECT;
    }
    return NOT_UNDERSTOOD;
  }

  private declareSessionType(v: string): void {
    if (v !== 'Normal' && v !== 'Discovery') {
      throw new NegotiationError(`SessionType "${clip(v)}" is neither Normal nor Discovery`, LOGIN_CLASS_INITIATOR_ERROR, LOGIN_SESSION_TYPE_NOT_SUPPORTED);
    }
    this.params.sessionType = v;
  }

  private violation(what: string): NegotiationError {
    return new NegotiationError(`login negotiation failed: ${what}`, LOGIN_CLASS_INITIATOR_ERROR, LOGIN_INIT_ERROR);
  }
}

function clip(s: string): string {
  return (s.length > 64 ? `${s.slice(0, 64)}...` : s).replace(/[^\x20-\x7e]/g, '?');
}

/** iSCSI names (§4.2.7.2): iqn.yyyy-mm.reversed.domain[:anything], eui. + 16 hex, naa. + 16/32 hex. */
export function isIscsiName(s: string): boolean {
  if (s.length > 223) return false;
  return /^iqn\.\d{4}-\d{2}\.[^\s]+$/i.test(s) || /^eui\.[0-9a-f]{16}$/i.test(s) || /^naa\.([0-9a-f]{16}|[0-9a-f]{32})$/i.test(s);
}

// ---- SendTargets (§13.3, Appendix C) ----

export interface TargetListing {
  name: string;
  /** "host:port,tpgt" entries ("[v6]:port,tpgt" for IPv6). */
  addresses: readonly string[];
}

/**
 * Answer for SendTargets=<value>: "All" lists every target (Discovery sessions only); an iSCSI
 * name lists that target; the empty value lists the session's own target (Normal sessions).
 * Returns pairs with repeated TargetName/TargetAddress keys, which the text builder allows.
 */
export function sendTargetsResponse(
  value: string,
  targets: readonly TargetListing[],
  session: { sessionType: 'Normal' | 'Discovery'; targetName?: string },
): TextPair[] {
  let chosen: readonly TargetListing[];
  if (value === 'All') {
    if (session.sessionType !== 'Discovery') return [['SendTargets', REJECT]];
    chosen = targets;
  } else if (value === '') {
    chosen = targets.filter((t) => t.name === session.targetName);
  } else {
    chosen = targets.filter((t) => t.name === value);
  }
  const out: TextPair[] = [];
  for (const t of chosen) {
    out.push(['TargetName', t.name]);
    for (const a of t.addresses) out.push(['TargetAddress', a]);
  }
  return out;
}
