/**
 * The control API's gate: a grpc-js server interceptor that every call passes, unary and
 * streaming alike. In order:
 *
 *   1. authenticate: a verified TLS client certificate mapped to a user, else the bearer token
 *      in the "authorization" metadata; a peer with too many failures is refused outright
 *      (AuthThrottle). UNAUTHENTICATED otherwise, with the fix.
 *   2. authorise: the method's permission (permissions.ts) against the user's role;
 *      PERMISSION_DENIED naming the roles that may. A method without a row is refused.
 *   3. scope: a tenant's user may name only its tenant's objects, sees only those in lists,
 *      and owns what it creates; quotas are checked (tenantScope.ts).
 *   4. audit: every call that may change state is recorded with its result, in the metadata
 *      store and in the log (read-only calls are not).
 *
 * The handler learns who called from the metadata key PRINCIPAL_METADATA, which the guard
 * always sets itself (a client's own value is dropped).
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { StatusError } from '../../proto/errors.js';
import { AUTHORIZATION } from '../../proto/auth/credentials.js';
import type { AccessControl, Principal } from './AccessControl.js';
import { AuthThrottle, peerAddress } from './AuthThrottle.js';
import { METHOD_PERMISSIONS, READ_ONLY, ROLE_PERMISSIONS, ROLES } from './permissions.js';
import { Scope, SCOPE_RULES, type ScopeDirectory } from './tenantScope.js';

export const PRINCIPAL_METADATA = 'x-arraylab-principal';

export interface ApiGuardOptions {
  access: AccessControl;
  dir: ScopeDirectory;
  log: Logger;
  throttle?: AuthThrottle;
  /** The API verifies client certificates (mutual TLS): a certificate may then name the user. */
  clientCertificates?: boolean;
  /**
   * Told once per call as it ends, with the method path and the gRPC status name (OK, or the
   * refusal's): the metrics' arraylab_api_calls_total. Must not throw or block.
   */
  onCallEnded?(path: string, code: string): void;
}

/** The caller of a call that passed the guard; undefined when the API runs without one. */
export function principalOf(metadata: grpc.Metadata): Principal | undefined {
  const v = metadata.get(PRINCIPAL_METADATA)[0];
  return typeof v === 'string' ? (JSON.parse(v) as Principal) : undefined;
}

const NO_CREDENTIAL =
  'the arraylab control API needs a credential: pass --token-file FILE or set ARRAYLAB_TOKEN (an array keeps its admin token in its data directory, admin.token, readable by the user who started it; arraylab user add makes others)';

/** Request fields that say what a call acts on (never a secret: only these are recorded). */
const TARGET_FIELDS = [
  'name',
  'newName',
  'id',
  'ids',
  'group',
  'label',
  'cartridge',
  'record',
  'host',
  'volume',
  'initiator',
  'source',
  'destination',
  'tenant',
  'api',
];

export function describeTarget(req: unknown): string {
  if (req === null || typeof req !== 'object') return '';
  const r = req as Record<string, unknown>;
  const parts: string[] = [];
  for (const f of TARGET_FIELDS) {
    const v = r[f];
    if (v === undefined || v === '' || v === 0 || (Array.isArray(v) && v.length === 0)) continue;
    parts.push(`${f}=${Array.isArray(v) ? v.join(',') : String(v)}`);
  }
  const pairs = r.pairs;
  if (Array.isArray(pairs)) parts.push(`pairs=${pairs.map((p) => `${p.source}->${p.destination}`).join(',')}`);
  const text = parts.join(' ');
  return text.length > 300 ? `${text.slice(0, 297)}...` : text;
}

/**
 * With api.auth off there is no guard: this interceptor only tells `onCallEnded` each call's
 * path and status as it ends, so arraylab_api_calls_total counts then too.
 */
export function callCounter(onCallEnded: (path: string, code: string) => void): grpc.ServerInterceptor {
  return (method, call) =>
    new grpc.ServerInterceptingCall(call, {
      sendStatus: (status, next) => {
        onCallEnded(method.path, grpc.status[status.code] ?? String(status.code));
        next(status);
      },
    });
}

export function apiGuard(o: ApiGuardOptions): grpc.ServerInterceptor {
  const throttle = o.throttle ?? new AuthThrottle();
  const log = o.log.child({ component: 'access' });

  const authenticate = (md: grpc.Metadata, call: grpc.ServerInterceptingCallInterface): Principal => {
    const addr = peerAddress(call.getPeer());
    const wait = throttle.blockedFor(addr);
    if (wait > 0) {
      throw new StatusError(
        'RESOURCE_EXHAUSTED',
        `too many failed authentications from ${addr}; wait ${Math.ceil(wait / 1000)} s, then retry with a valid token`,
      );
    }
    if (o.clientCertificates) {
      const cert = call.getAuthContext().sslPeerCertificate;
      if (cert?.subject !== undefined) {
        const p = o.access.byCertificate(cert);
        if (p !== undefined) return p;
      }
    }
    const header = md.get(AUTHORIZATION)[0];
    try {
      if (header === undefined) throw new StatusError('UNAUTHENTICATED', NO_CREDENTIAL);
      const m = /^Bearer\s+(\S+)\s*$/i.exec(String(header));
      if (!m) throw new StatusError('UNAUTHENTICATED', 'the authorization metadata must be "Bearer TOKEN"; pass the token with --token-file or ARRAYLAB_TOKEN');
      const p = o.access.byToken(m[1]!);
      throttle.succeeded(addr);
      return p;
    } catch (err) {
      throttle.failed(addr);
      log.warn({ peer: addr, err: (err as Error).message }, 'authentication failed');
      throw err;
    }
  };

  return (method, call) => {
    const path = method.path;
    const perm = METHOD_PERMISSIONS.get(path);
    const rule = SCOPE_RULES.get(path);
    const mutating = perm === undefined || !READ_ONLY.has(perm);
    let principal: Principal | undefined;
    let scope: Scope | undefined;
    let request: unknown;
    let target = '';
    let finished = false;
    /** A role refusal, sent once the request is read so that the audit names its target. */
    let denied: StatusError | undefined;
    let counted = false;
    const ended = (code: string) => {
      if (counted || o.onCallEnded === undefined) return;
      counted = true;
      o.onCallEnded(path, code);
    };

    const record = (result: string) => {
      if (!mutating || finished) return;
      finished = true;
      const entry = {
        at: new Date().toISOString(),
        user: principal?.user ?? '',
        tenant: principal?.tenant ?? '',
        peer: call.getPeer(),
        rpc: path.slice(1),
        target,
        result,
      };
      o.access.audit(entry);
      log.info({ audit: entry }, `audit: ${entry.user || '(unauthenticated)'} ${entry.rpc} ${entry.target} -> ${result}`);
    };
    const refuse = (err: unknown) => {
      const e = err instanceof StatusError ? err : new StatusError('INTERNAL', `access check failed: ${(err as Error).message}`);
      record(`${e.code}: ${e.message}`);
      finished = true;
      ended(e.code);
      call.sendStatus({ code: grpc.status[e.code], details: e.message, metadata: new grpc.Metadata() });
    };

    return new grpc.ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (md, nextMd) => {
            try {
              principal = authenticate(md, call);
              if (perm === undefined)
                throw new StatusError('PERMISSION_DENIED', `${path} has no permission in the role matrix, so nobody may call it (a bug: report it)`);
              if (!ROLE_PERMISSIONS[principal.role].has(perm)) {
                const may = ROLES.filter((r) => ROLE_PERMISSIONS[r].has(perm)).join(', ');
                // Not refused yet: the caller is known, and "who tried to add which user" needs
                // the request. The handler never sees it (onReceiveMessage stops here).
                denied = new StatusError(
                  'PERMISSION_DENIED',
                  `user ${principal.user} (role ${principal.role}) may not call ${path.slice(path.lastIndexOf('/') + 1)}: it needs ${perm}, which roles ${may} have; ask an admin`,
                );
              }
            } catch (err) {
              refuse(err);
              return;
            }
            scope = new Scope(principal, o.access, o.dir);
            md.remove(PRINCIPAL_METADATA);
            md.set(PRINCIPAL_METADATA, JSON.stringify(principal));
            nextMd(md);
          },
          onReceiveMessage: (msg, nextMsg) => {
            if (finished) return;
            request = msg;
            target = describeTarget(msg);
            if (denied) {
              refuse(denied);
              return;
            }
            if (scope?.scoped && rule?.check) {
              try {
                rule.check(msg, scope);
              } catch (err) {
                refuse(err);
                return;
              }
            }
            nextMsg(msg);
          },
          onReceiveHalfClose: (next) => {
            // Refused already: the handler is not to run. A refused caller that sent no request
            // at all is refused now, not left waiting.
            if (finished) return;
            if (denied) {
              refuse(denied);
              return;
            }
            next();
          },
        }),
      sendMessage: (msg, next) => {
        let out = msg;
        if (scope?.scoped && rule !== undefined) {
          try {
            if (rule.filter) out = rule.filter(msg, scope);
            if (rule.created) for (const obj of rule.created(msg, request, scope)) o.access.setOwner(obj.kind, obj.key, scope.p.tenant);
          } catch (err) {
            log.error({ err, path }, 'tenant scoping of a response failed');
          }
        }
        next(out);
      },
      sendStatus: (status, next) => {
        if (status.code === grpc.status.OK && rule?.removed && request !== undefined) {
          try {
            for (const obj of rule.removed(request)) o.access.setOwner(obj.kind, obj.key, '');
          } catch (err) {
            log.error({ err, path }, 'forgetting the owner of a removed object failed');
          }
        }
        record(status.code === grpc.status.OK ? 'ok' : `${grpc.status[status.code]}: ${status.details}`);
        ended(grpc.status[status.code] ?? String(status.code));
        next(status);
      },
    });
  };
}
