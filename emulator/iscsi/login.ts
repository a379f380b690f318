/**
 * The login phase of one connection (RFC 7143 §6.3, §11.12-13): stages, T/C bits, text
 * reassembly, authentication and the hand-over to full feature phase.
 *
 * It turns each Login Request (header + reassembled text) into the fields and text of the
 * Login Response; the connection sends it. What creates sessions (TSIH, reinstatement) is the
 * host's: `enterFullFeature` is called once, when the initiator asks to go to full feature
 * phase and everything is in order.
 *
 * Which CHAP (if any) a login must pass is decided by the first Login Request, which names the
 * initiator (RFC 7143 §13.6): `authFor` answers with its host's credentials, the target's, or
 * none, and the AuthMethod offered back follows from that.
 */
import { ChapAuthenticator, ChapError } from './chap.js';
import { NegotiationError, Negotiator, type NegotiationStep, type SessionParams, type TargetNegotiationConfig } from './negotiation.js';
import {
  LOGIN_AUTH_FAILED,
  LOGIN_CLASS_INITIATOR_ERROR,
  LOGIN_CLASS_SUCCESS,
  LOGIN_CLASS_TARGET_ERROR,
  LOGIN_INIT_ERROR,
  LOGIN_MISSING_PARAMETER,
  LOGIN_NOT_FOUND,
  LOGIN_UNSUPPORTED_VERSION,
  STAGE_FULL_FEATURE,
  STAGE_OPERATIONAL,
  STAGE_SECURITY,
  ISCSI_VERSION,
  LOGIN_TARGET_ERROR,
} from './opcodes.js';
import type { LoginRequestPdu } from './pdu.js';
import { buildText, parseText, splitText, TextError, TextReassembler, type TextPair } from './text.js';
import type { IscsiAuthOptions } from './types.js';

/** The initiator's MaxRecvDataSegmentLength during login (§13.12: 8192 until negotiated). */
export const LOGIN_MRDSL = 8192;

/** A login that must end: the status for the final Login Response and a reason for the log. */
export class LoginFailure extends Error {
  constructor(
    message: string,
    readonly statusClass: number,
    readonly statusDetail: number,
  ) {
    super(message);
    this.name = 'LoginFailure';
  }
}

export interface LoginIdentity {
  isid: number;
  tsih: number;
  cid: number;
  /** CmdSN of the first Login Request: the session's first CmdSN. */
  cmdSN: number;
}

export interface LoginHost {
  readonly targetName: string;
  /** The CHAP this initiator must pass, or undefined for none. Asked once, at the first Login Request. */
  authFor(initiatorName: string | undefined): IscsiAuthOptions | undefined;
  /** CHAP algorithms accepted, preferred first; default all four. */
  readonly chapAlgorithms?: readonly number[] | undefined;
  /** authMethods is replaced by what authFor decides. */
  readonly config: TargetNegotiationConfig;
  /**
   * The login is complete: create (or refuse) the session. Returns the TSIH, or throws
   * LoginFailure (unknown TSIH, too many connections, target shutting down).
   */
  enterFullFeature(params: SessionParams, id: LoginIdentity): number;
}

export interface LoginReply {
  transit: boolean;
  continue: boolean;
  csg: number;
  nsg: number;
  tsih: number;
  statusClass: number;
  statusDetail: number;
  text: Buffer;
  /** Set when this reply moves the connection to full feature phase. */
  fullFeature: boolean;
}

const EMPTY = Buffer.alloc(0);

export class LoginExchange {
  private neg: Negotiator;
  /** What authFor answered; decided at the first Login Request. */
  private auth: IscsiAuthOptions | undefined;
  private authDecided = false;
  private chap: ChapAuthenticator | undefined;
  private readonly reassembler = new TextReassembler();
  private stage = -1;
  private id: LoginIdentity | undefined;
  /** Response text still to send in continuation PDUs (C bit). */
  private pendingText: Buffer[] = [];
  private pendingReply: Omit<LoginReply, 'text' | 'continue'> | undefined;
  private authenticated: boolean;

  constructor(private readonly host: LoginHost) {
    this.neg = new Negotiator(host.config);
    this.authenticated = false;
  }

  get negotiator(): Negotiator {
    return this.neg;
  }

  /** Whose CHAP this login must pass ("host web", "iscsi.chap"), once decided; undefined: none. */
  get authLabel(): string | undefined {
    return this.auth === undefined ? undefined : (this.auth.label ?? 'CHAP');
  }

  get identity(): LoginIdentity | undefined {
    return this.id;
  }

  get params(): SessionParams {
    return this.negotiator.params;
  }

  /** Answers one Login Request. Throws LoginFailure: send it as the final response, then close. */
  handle(pdu: LoginRequestPdu, data: Buffer): LoginReply {
    this.checkHeader(pdu);
    // Our own response continued over several PDUs: the initiator asks for the next part.
    if (this.pendingText.length > 0) {
      if (data.length !== 0)
        throw new LoginFailure(
          'Login Request with text while the target was still sending a continued response',
          LOGIN_CLASS_INITIATOR_ERROR,
          LOGIN_INIT_ERROR,
        );
      return this.nextPart();
    }
    let text: Buffer | null;
    try {
      text = this.reassembler.push(data, pdu.continue);
    } catch (err) {
      throw asFailure(err);
    }
    if (text === null) {
      // More text to come (C bit): acknowledge with an empty response in the same stage.
      return {
        transit: false,
        continue: false,
        csg: pdu.csg,
        nsg: 0,
        tsih: 0,
        statusClass: LOGIN_CLASS_SUCCESS,
        statusDetail: 0,
        text: EMPTY,
        fullFeature: false,
      };
    }
    if (pdu.continue) throw new LoginFailure('Login Request with both C and T bits', LOGIN_CLASS_INITIATOR_ERROR, LOGIN_INIT_ERROR);
    let pairs: TextPair[];
    try {
      pairs = parseText(text);
    } catch (err) {
      throw asFailure(err);
    }
    const response = this.negotiate(pdu, pairs);
    let transit = pdu.transit && this.mayTransit(pdu);
    let tsih = 0;
    let fullFeature = false;
    if (transit && pdu.nsg === STAGE_FULL_FEATURE) {
      response.push(...this.negotiator.finish());
      tsih = this.host.enterFullFeature(this.negotiator.params, this.id!);
      fullFeature = true;
    }
    if (transit) this.stage = pdu.nsg;
    let body = response.length === 0 ? EMPTY : buildText(response);
    const base = { transit, csg: pdu.csg, nsg: transit ? pdu.nsg : 0, tsih, statusClass: LOGIN_CLASS_SUCCESS, statusDetail: 0, fullFeature };
    if (body.length > LOGIN_MRDSL) {
      // Too long for one PDU: send parts with C (and without T) until the last.
      if (fullFeature) throw new LoginFailure('login response text does not fit one PDU at the final step', LOGIN_CLASS_TARGET_ERROR, LOGIN_TARGET_ERROR);
      const parts = splitText(body, LOGIN_MRDSL);
      body = parts.shift()!;
      this.pendingText = parts;
      this.pendingReply = base;
      transit = false;
      return { ...base, transit: false, nsg: 0, continue: true, text: body };
    }
    return { ...base, continue: false, text: body };
  }

  private nextPart(): LoginReply {
    const text = this.pendingText.shift()!;
    const more = this.pendingText.length > 0;
    const base = this.pendingReply!;
    if (!more) this.pendingReply = undefined;
    return more ? { ...base, transit: false, nsg: 0, continue: true, text } : { ...base, continue: false, text };
  }

  private checkHeader(pdu: LoginRequestPdu): void {
    if (this.id === undefined) {
      if (pdu.versionMin > ISCSI_VERSION || pdu.versionMax < ISCSI_VERSION) {
        throw new LoginFailure(
          `initiator supports iSCSI versions ${pdu.versionMin}..${pdu.versionMax}; this target speaks only version 0`,
          LOGIN_CLASS_INITIATOR_ERROR,
          LOGIN_UNSUPPORTED_VERSION,
        );
      }
      this.id = { isid: pdu.isid, tsih: pdu.tsih, cid: pdu.cid, cmdSN: pdu.cmdSN };
      if (pdu.csg !== STAGE_SECURITY && pdu.csg !== STAGE_OPERATIONAL) {
        throw new LoginFailure(
          `first Login Request has CSG ${pdu.csg}; login starts in the security (0) or operational (1) stage`,
          LOGIN_CLASS_INITIATOR_ERROR,
          LOGIN_INIT_ERROR,
        );
      }
      this.stage = pdu.csg;
    } else if (pdu.isid !== this.id.isid || pdu.tsih !== this.id.tsih || pdu.cid !== this.id.cid) {
      throw new LoginFailure('ISID, TSIH or CID changed in the middle of a login', LOGIN_CLASS_INITIATOR_ERROR, LOGIN_INIT_ERROR);
    }
    if (pdu.csg !== this.stage) {
      throw new LoginFailure(`Login Request in stage ${pdu.csg} while the login is in stage ${this.stage}`, LOGIN_CLASS_INITIATOR_ERROR, LOGIN_INIT_ERROR);
    }
    if (pdu.transit && (pdu.nsg === 2 || pdu.nsg <= pdu.csg)) {
      throw new LoginFailure(`Login Request asks to move from stage ${pdu.csg} to stage ${pdu.nsg}`, LOGIN_CLASS_INITIATOR_ERROR, LOGIN_INIT_ERROR);
    }
  }

  private negotiate(pdu: LoginRequestPdu, pairs: TextPair[]): TextPair[] {
    if (!this.authDecided) this.decideAuth(pairs);
    const phase = pdu.csg === STAGE_SECURITY ? 'security' : 'operational';
    let step: NegotiationStep;
    try {
      step = this.negotiator.login(pairs, phase);
    } catch (err) {
      throw asFailure(err);
    }
    const p = this.negotiator.params;
    if (p.sessionType === 'Normal' && p.targetName !== undefined && p.targetName !== this.host.targetName) {
      throw new LoginFailure(
        `TargetName "${clip(p.targetName)}" is not this target (${this.host.targetName}); use the name SendTargets reports`,
        LOGIN_CLASS_INITIATOR_ERROR,
        LOGIN_NOT_FOUND,
      );
    }
    const response = step.response;
    if (phase === 'security') {
      const chosen = response.find(([k]) => k === 'AuthMethod')?.[1];
      if (chosen === 'Reject' && this.auth !== undefined) {
        throw new LoginFailure(
          `the initiator offers no AuthMethod this target accepts (CHAP of ${this.authLabel} is required)`,
          LOGIN_CLASS_INITIATOR_ERROR,
          LOGIN_AUTH_FAILED,
        );
      }
      if (chosen === 'CHAP' && this.auth !== undefined) {
        this.chap = new ChapAuthenticator({
          initiator: this.auth.initiator,
          target: this.auth.target,
          ...(this.host.chapAlgorithms !== undefined ? { algorithms: this.host.chapAlgorithms } : {}),
        });
      }
      if (step.auth.length > 0) {
        if (this.chap === undefined) {
          throw new LoginFailure('CHAP keys without AuthMethod=CHAP having been negotiated', LOGIN_CLASS_INITIATOR_ERROR, LOGIN_AUTH_FAILED);
        }
        try {
          response.push(...this.chap.step(step.auth));
        } catch (err) {
          if (err instanceof ChapError) throw new LoginFailure(`${err.message} (CHAP of ${this.authLabel})`, err.statusClass, err.statusDetail);
          throw err;
        }
        if (this.chap.done) this.authenticated = true;
      } else if (chosen === 'None') {
        this.authenticated = this.auth === undefined;
      }
    }
    return response;
  }

  /** At the first Login Request: whose CHAP, if any, this initiator must pass, and so which AuthMethod to accept. */
  private decideAuth(pairs: readonly TextPair[]): void {
    this.authDecided = true;
    const initiatorName = pairs.find(([k]) => k === 'InitiatorName')?.[1];
    this.auth = this.host.authFor(initiatorName);
    this.authenticated = this.auth === undefined;
    this.neg = new Negotiator({ ...this.host.config, authMethods: this.auth === undefined ? ['None'] : ['CHAP'] });
  }

  /** May the login leave its current stage now? Throws when it never can. */
  private mayTransit(pdu: LoginRequestPdu): boolean {
    if (this.authenticated) {
      if (pdu.nsg === STAGE_FULL_FEATURE && this.negotiator.params.initiatorName === undefined) {
        throw new LoginFailure('login reached full feature phase without InitiatorName', LOGIN_CLASS_INITIATOR_ERROR, LOGIN_MISSING_PARAMETER);
      }
      return true;
    }
    // CHAP still running: stay in the security stage until the initiator has answered.
    if (pdu.csg === STAGE_SECURITY && this.chap !== undefined) return false;
    throw new LoginFailure(
      `the initiator did not authenticate (CHAP of ${this.authLabel ?? 'this target'} is required)`,
      LOGIN_CLASS_INITIATOR_ERROR,
      LOGIN_AUTH_FAILED,
    );
  }
}

function asFailure(err: unknown): LoginFailure {
  if (err instanceof LoginFailure) return err;
  if (err instanceof NegotiationError) return new LoginFailure(err.message, err.statusClass, err.statusDetail);
  if (err instanceof TextError) return new LoginFailure(`malformed login text: ${err.message}`, LOGIN_CLASS_INITIATOR_ERROR, LOGIN_INIT_ERROR);
  throw err;
}

function clip(s: string): string {
  return (s.length > 64 ? `${s.slice(0, 64)}...` : s).replace(/[^\x20-\x7e]/g, '?');
}
