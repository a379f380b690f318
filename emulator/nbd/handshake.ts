/**
 * Fixed newstyle negotiation: greeting, client flags, then options until the client picks an
 * export (GO or EXPORT_NAME), aborts, or breaks the protocol.
 *
 * Option payloads are read whole only up to MAX_OPTION; longer ones are discarded as they
 * stream in and refused, so a client cannot make the server buffer what it declares.
 */
import { BlockDeviceError, type ExportHandle, type ExportProvider } from '../block/BlockDevice.js';
import {
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  INFO_DESCRIPTION,
  INFO_NAME,
  MAX_OPTION,
  MAX_OPTION_DISCARD,
  MAX_STRING,
  NBDMAGIC_HI,
  NBDMAGIC_LO,
  OPTION_HEADER_SIZE,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_INFO,
  OPT_LIST,
  OPT_LIST_META_CONTEXT,
  OPT_SET_META_CONTEXT,
  OPT_STARTTLS,
  OPT_STRUCTURED_REPLY,
  REP_ACK,
  REP_ERR_INVALID,
  REP_ERR_POLICY,
  REP_ERR_TLS_REQD,
  REP_ERR_TOO_BIG,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  REP_INFO,
  REP_META_CONTEXT,
  REP_SERVER,
} from './constants.js';
import { infoBlockSize, infoExport, infoString, transmissionFlags, writeU64 } from './exportInfo.js';
import type { InputQueue } from '../net/InputQueue.js';
import { parseExportRequest, parseMetaRequest, selectMetaContexts } from './optionParsers.js';
import type { Output } from './Output.js';
import type { NbdExportScope, NbdLogger } from './types.js';

/** What the connection needs from its owner during negotiation. */
export interface HandshakeHost {
  /** Current input and output: both change at STARTTLS. */
  readonly input: InputQueue;
  readonly out: Output;
  readonly log: NbdLogger;
  readonly provider: ExportProvider;
  readonly tlsAvailable: boolean;
  readonly tlsRequired: boolean;
  readonly tlsActive: boolean;
  /** Upgrades the connection after the ACK; false when the TLS handshake failed. */
  startTls(): Promise<boolean>;
  /** The exports this connection may see and use (asked per option, never per request). */
  scope(): NbdExportScope;
  /** What a client is told for an export outside its scope. */
  refusal(name: string): string;
  /** provider.openExport with this connection's ClientInfo; throws are the provider's. */
  openExport(name: string): ExportHandle | undefined;
}

/** The outcome of a successful negotiation. */
export interface Negotiated {
  handle: ExportHandle;
  /** Export size sent to the client: transmission is checked against it. */
  size: number;
  flags: number;
  structured: boolean;
  /** base:allocation was selected for this export. */
  blockStatus: boolean;
}

/** Negotiation state that STARTTLS wipes. */
interface State {
  /** Unknown export names already warned about: a client probing one name (INFO then GO) is one warning. */
  warnedUnknown: Set<string>;
  structured: boolean;
  /** Export name of the last SET_META_CONTEXT that selected base:allocation, if any. */
  metaExport: string | null;
}

const GREETING = (() => {
  const b = Buffer.allocUnsafe(18);
  b.writeUInt32BE(NBDMAGIC_HI, 0);
  b.writeUInt32BE(NBDMAGIC_LO, 4);
  b.writeUInt32BE(IHAVEOPT_HI, 8);
  b.writeUInt32BE(IHAVEOPT_LO, 12);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
})();

/** Option numbers defined by the spec or its extensions that this server does not implement: not hostile. */
const KNOWN_UNSUPPORTED = new Set([4 /* PEEK_EXPORT */, 11 /* EXTENDED_HEADERS */]);

/** Runs the handshake; undefined means the connection is to be closed (already logged). */
export async function negotiate(host: HandshakeHost): Promise<Negotiated | undefined> {
  host.out.raw(GREETING);
  host.out.flush();

  if (!(await host.input.need(4))) return gone(host, 'before sending client flags');
  host.input.consume(4);
  const clientFlags = host.input.buf.readUInt32BE(host.input.off);
  if ((clientFlags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) !== 0 || (clientFlags & FLAG_C_FIXED_NEWSTYLE) === 0) {
    host.log.warn({ clientFlags }, 'client flags are not fixed newstyle or have unknown bits: closing');
    return undefined;
  }
  const noZeroes = (clientFlags & FLAG_C_NO_ZEROES) !== 0;
  const state: State = { warnedUnknown: new Set(), structured: false, metaExport: null };
  const header = Buffer.allocUnsafe(OPTION_HEADER_SIZE);

  for (;;) {
    const input = host.input;
    if (input.length < OPTION_HEADER_SIZE && !(await input.need(OPTION_HEADER_SIZE))) return gone(host, 'during option haggling');
    input.consume(OPTION_HEADER_SIZE, header);
    const h = input.buf;
    const o = input.off;
    if (h.readUInt32BE(o) !== IHAVEOPT_HI || h.readUInt32BE(o + 4) !== IHAVEOPT_LO) {
      host.log.warn('bad option magic: closing');
      return undefined;
    }
    const opt = h.readUInt32BE(o + 8);
    const len = h.readUInt32BE(o + 12);

    if (len > MAX_OPTION) {
      if (opt === OPT_EXPORT_NAME || len > MAX_OPTION_DISCARD) {
        host.log.warn({ option: opt, length: len }, 'option data too long: closing');
        return undefined;
      }
      host.log.warn({ option: opt, length: len }, 'option data too long: discarded');
      if (!(await input.discard(len))) return gone(host, 'in option data');
      host.out.optionReply(opt, REP_ERR_TOO_BIG, 'option data too long');
      continue;
    }
    if (input.length < len && !(await input.need(len))) return gone(host, 'in option data');
    const data = input.take(len);

    if (host.tlsRequired && !host.tlsActive && opt !== OPT_STARTTLS && opt !== OPT_ABORT) {
      if (opt === OPT_EXPORT_NAME) {
        host.log.warn('EXPORT_NAME before STARTTLS on a TLS-only server: closing');
        return undefined;
      }
      host.log.debug({ option: opt }, 'option refused: TLS required');
      host.out.optionReply(opt, REP_ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
      continue;
    }

    switch (opt) {
      case OPT_EXPORT_NAME:
        return exportName(host, state, data, noZeroes);
      case OPT_GO:
      case OPT_INFO: {
        const done = infoOrGo(host, state, opt, data);
        if (done !== undefined) return done;
        break;
      }
      case OPT_ABORT:
        host.log.debug('client aborted negotiation');
        host.out.optionReply(opt, REP_ACK);
        host.out.flush();
        return undefined;
      case OPT_LIST:
        list(host, data);
        break;
      case OPT_STRUCTURED_REPLY:
        if (len !== 0) {
          invalid(host, opt, 'STRUCTURED_REPLY takes no data');
          break;
        }
        state.structured = true;
        host.out.optionReply(opt, REP_ACK);
        break;
      case OPT_LIST_META_CONTEXT:
      case OPT_SET_META_CONTEXT:
        metaContext(host, state, opt, data);
        break;
      case OPT_STARTTLS:
        if (!host.tlsAvailable) {
          host.out.optionReply(opt, REP_ERR_POLICY, 'TLS is not configured on this server');
        } else if (host.tlsActive) {
          invalid(host, opt, 'TLS is already active');
        } else if (len !== 0) {
          invalid(host, opt, 'STARTTLS takes no data');
        } else {
          host.out.optionReply(opt, REP_ACK);
          // The spec: nothing negotiated in plaintext survives the upgrade.
          state.structured = false;
          state.metaExport = null;
          state.warnedUnknown.clear();
          if (!(await host.startTls())) return undefined;
        }
        break;
      default:
        if (KNOWN_UNSUPPORTED.has(opt)) host.log.debug({ option: opt }, 'unsupported option');
        else host.log.warn({ option: opt, length: len }, 'unknown option');
        host.out.optionReply(opt, REP_ERR_UNSUP, `option ${opt} is not supported`);
    }
  }
}

function gone(host: HandshakeHost, where: string): undefined {
  host.log.debug(`client went away ${where}`);
  return undefined;
}

function invalid(host: HandshakeHost, opt: number, why: string): void {
  host.log.warn({ option: opt }, `invalid option: ${why}`);
  host.out.optionReply(opt, REP_ERR_INVALID, why);
}

/** The handle; undefined for no such export; a string: the provider refused, and why. */
function open(host: HandshakeHost, name: string): ExportHandle | string | undefined {
  try {
    return host.openExport(name);
  } catch (err) {
    if (err instanceof BlockDeviceError) {
      host.log.info({ export: name, code: err.code }, `export refused: ${err.message}`);
      return err.message;
    }
    host.log.error({ err, export: name }, 'provider failed to open export');
    return undefined;
  }
}

function exportName(host: HandshakeHost, state: State, data: Buffer, noZeroes: boolean): Negotiated | undefined {
  if (data.length > MAX_STRING) {
    host.log.warn({ length: data.length }, 'EXPORT_NAME longer than 4096 bytes: closing');
    return undefined;
  }
  const name = data.toString('utf8');
  if (!inScope(host, name)) {
    // EXPORT_NAME cannot carry a message: the spec says to close.
    host.log.warn({ export: name }, `EXPORT_NAME refused: ${host.refusal(name)}`);
    return undefined;
  }
  const handle = open(host, name);
  if (handle === undefined || typeof handle === 'string') {
    // EXPORT_NAME cannot fail with an error: the spec says to close.
    if (handle === undefined) host.log.warn({ export: name }, 'EXPORT_NAME for an unknown export: closing');
    return undefined;
  }
  const size = handle.device.size;
  const flags = transmissionFlags(handle.readOnly, state.structured);
  const reply = Buffer.alloc(noZeroes ? 10 : 134);
  writeU64(reply, 0, size);
  reply.writeUInt16BE(flags, 8);
  host.out.raw(reply);
  host.out.flush();
  return { handle, size, flags, structured: state.structured, blockStatus: state.structured && state.metaExport === name };
}

/** NBD_OPT_INFO or NBD_OPT_GO: a Negotiated after a successful GO, else undefined (go on). */
function infoOrGo(host: HandshakeHost, state: State, opt: number, data: Buffer): Negotiated | undefined {
  const req = parseExportRequest(data);
  if (typeof req === 'string') {
    invalid(host, opt, req);
    return undefined;
  }
  if (!inScope(host, req.name)) {
    outOfScope(host, state, opt, req.name);
    return undefined;
  }
  let size: number;
  let readOnly: boolean;
  let blockSize: number;
  let canonical: string;
  let description: string;
  let handle: ExportHandle | undefined;
  if (opt === OPT_GO) {
    const opened = open(host, req.name);
    if (opened === undefined) {
      unknownExport(host, state, opt, req.name);
      return undefined;
    }
    if (typeof opened === 'string') {
      // The export exists but may not be used now; the client may try again later.
      host.out.optionReply(opt, REP_ERR_POLICY, opened);
      return undefined;
    }
    handle = opened;
    ({ readOnly, name: canonical, description } = handle);
    ({ size, blockSize } = handle.device);
  } else {
    const d = host.provider.describeExport(req.name);
    if (d === undefined) {
      unknownExport(host, state, opt, req.name);
      return undefined;
    }
    ({ size, readOnly, blockSize, name: canonical, description } = d);
  }
  const flags = transmissionFlags(readOnly, state.structured);
  const out = host.out;
  out.optionReply(opt, REP_INFO, infoExport(size, flags));
  // Block sizes go out whether asked or not: the server enforces its minimum either way.
  out.optionReply(opt, REP_INFO, infoBlockSize(blockSize));
  if (req.infos.includes(INFO_NAME)) out.optionReply(opt, REP_INFO, infoString(INFO_NAME, canonical));
  if (req.infos.includes(INFO_DESCRIPTION) && description !== '') out.optionReply(opt, REP_INFO, infoString(INFO_DESCRIPTION, description));
  out.optionReply(opt, REP_ACK);
  if (handle === undefined) return undefined;
  out.flush();
  return { handle, size, flags, structured: state.structured, blockStatus: state.structured && state.metaExport === req.name };
}

function unknownExport(host: HandshakeHost, state: State, opt: number, name: string): void {
  const what = opt === OPT_GO ? 'GO' : 'INFO';
  if (state.warnedUnknown.has(name)) host.log.debug({ export: name }, `${what} for an unknown export`);
  else host.log.warn({ export: name }, `${what} for an unknown export`);
  state.warnedUnknown.add(name);
  host.out.optionReply(opt, REP_ERR_UNKNOWN, `no export named "${name}"`);
}

/** The export is one this connection may see. */
function inScope(host: HandshakeHost, name: string): boolean {
  const scope = host.scope();
  return scope === 'all' || scope.has(name);
}

/** An export this connection may not see: answered as if there were none, with the policy's advice. */
function outOfScope(host: HandshakeHost, state: State, opt: number, name: string): void {
  const message = host.refusal(name);
  // A client probing one name (INFO then GO) is one warning.
  if (state.warnedUnknown.has(name)) host.log.debug({ export: name, option: opt }, `export refused: ${message}`);
  else host.log.warn({ export: name, option: opt }, `export refused: ${message}`);
  state.warnedUnknown.add(name);
  host.out.optionReply(opt, REP_ERR_UNKNOWN, message);
}

function list(host: HandshakeHost, data: Buffer): void {
  if (data.length !== 0) {
    invalid(host, OPT_LIST, 'LIST takes no data');
    return;
  }
  const scope = host.scope();
  for (const e of host.provider.listExports()) {
    if (scope !== 'all' && !scope.has(e.name)) continue;
    const nameLen = Buffer.byteLength(e.name);
    const b = Buffer.allocUnsafe(4 + nameLen + Buffer.byteLength(e.description));
    b.writeUInt32BE(nameLen, 0);
    b.write(e.name, 4, 'utf8');
    b.write(e.description, 4 + nameLen, 'utf8');
    host.out.optionReply(OPT_LIST, REP_SERVER, b);
  }
  host.out.optionReply(OPT_LIST, REP_ACK);
}

function metaContext(host: HandshakeHost, state: State, opt: number, data: Buffer): void {
  const set = opt === OPT_SET_META_CONTEXT;
  // SET replaces the selection even when it fails.
  if (set) state.metaExport = null;
  if (set && !state.structured) {
    invalid(host, opt, 'SET_META_CONTEXT needs structured replies first');
    return;
  }
  const req = parseMetaRequest(data);
  if (typeof req === 'string') {
    invalid(host, opt, req);
    return;
  }
  // Clients ask for contexts right before GO; the GO's failure is the one worth a warning.
  if (!inScope(host, req.name)) {
    host.log.debug({ export: req.name }, 'meta context request for an export out of scope');
    host.out.optionReply(opt, REP_ERR_UNKNOWN, host.refusal(req.name));
    return;
  }
  if (host.provider.describeExport(req.name) === undefined) {
    host.log.debug({ export: req.name }, 'meta context request for an unknown export');
    host.out.optionReply(opt, REP_ERR_UNKNOWN, `no export named "${req.name}"`);
    return;
  }
  const contexts = selectMetaContexts(req.queries, set);
  if (typeof contexts === 'string') {
    invalid(host, opt, contexts);
    return;
  }
  for (const c of contexts) {
    const b = Buffer.allocUnsafe(4 + Buffer.byteLength(c.name));
    // LIST: the id is reserved and zero; SET: the id block status replies will carry.
    b.writeUInt32BE(set ? c.id : 0, 0);
    b.write(c.name, 4, 'utf8');
    host.out.optionReply(opt, REP_META_CONTEXT, b);
  }
  if (set && contexts.length > 0) state.metaExport = req.name;
  host.out.optionReply(opt, REP_ACK);
}
