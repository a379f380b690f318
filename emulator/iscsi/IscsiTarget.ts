/**
 * The iSCSI target: listener, connections, sessions (TSIH, reinstatement), the SCSI device
 * server they share, host affinity changes, target resets and shutdown. See README.md.
 *
 * Authentication: an initiator whose host has CHAP (luns.chapFor) must pass that; any other
 * must pass the target's `auth` when it is set. Authentication failures count per initiator
 * address (loginThrottle.ts): too many, and the address's connections are refused for a while.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { InputQueue } from '../net/InputQueue.js';
import { ADOPTABLE } from '../net/ownBuffers.js';
import type { BlockDevice, HandleEvent } from '../block/BlockDevice.js';
import { BufferPool } from '../net/BufferPool.js';
import { drainConnections, listenTcp } from '../net/tcpListener.js';
import { Connection, INPUT_HIGH_WATER, type ConnectionContext } from './Connection.js';
import { FullFeature, type FullFeatureHost } from './FullFeature.js';
import { LoginFailure, type LoginIdentity } from './login.js';
import { LoginThrottle } from './loginThrottle.js';
import { DEFAULT_TARGET_CONFIG, type SessionParams, type TargetNegotiationConfig } from './negotiation.js';
import {
  LOGIN_AUTH_FAILED,
  LOGIN_CLASS_INITIATOR_ERROR,
  LOGIN_CLASS_TARGET_ERROR,
  LOGIN_SERVICE_UNAVAILABLE,
  LOGIN_SESSION_DOES_NOT_EXIST,
  LOGIN_TOO_MANY_CONNECTIONS,
  TMF_RSP_COMPLETE,
  TMF_TARGET_COLD_RESET,
} from './opcodes.js';
import type { TaskMgmtRequestPdu } from './pdu.js';
import { ASC_CAPACITY_DATA_CHANGED, ASC_REPORTED_LUNS_DATA_CHANGED } from './scsi/sense.js';
import { endCopyNexus } from './scsi/copyManager.js';
import { ScsiLogicalUnits } from './scsi/scsiTarget.js';
import type { LunDevice, Nexus } from './scsi/types.js';
import { Session, isidHex } from './Session.js';
import { logicalUnitReset, targetReset, taskManagement, type TmfScope } from './taskManagement.js';
import { DEFAULT_LOGIN_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, type IscsiSessionInfo, type IscsiTargetOptions } from './types.js';

/** How long close() lets sessions finish running commands before destroying their sockets. */
const CLOSE_TIMEOUT_MS = 10_000;
const EMPTY_LUNS: ReadonlyMap<number, LunDevice> = new Map();

export class IscsiTarget {
  readonly scsi: ScsiLogicalUnits;
  private readonly server: Server;
  private readonly connections = new Set<Connection>();
  /** Live sessions by TSIH. */
  private readonly sessionsByTsih = new Map<number, { session: Session; conn: Connection; ffp?: FullFeature }>();
  /** Sessions by initiator port ("<iqn>,i,0x<isid>"): the nexus the SCSI layer asks about. */
  private readonly byPort = new Map<string, Session>();
  private readonly ctx: ConnectionContext;
  private readonly host: FullFeatureHost;
  private readonly tmfScope: TmfScope;
  private nextTsih = 1;
  private closing: Promise<void> | undefined;
  /** Resets the array asked for that are still running, by "target" or "lu:<wwn>": one at a time each. */
  private readonly arrayResets = new Map<string, Promise<void>>();
  /** Failed logins per initiator address; undefined: not throttled. */
  readonly throttle: LoginThrottle | undefined;

  constructor(readonly opts: IscsiTargetOptions) {
    const pool = new BufferPool();
    this.scsi = new ScsiLogicalUnits((nexus) => this.byPort.get(nexus.initiatorPort)?.lunDevices ?? EMPTY_LUNS, {
      ...(opts.reservations === undefined ? {} : { reservations: opts.reservations }),
      dataInPool: pool,
      logger: opts.logger,
      abortTasks: (wwn, nexuses) => this.abortTasksOf(wwn, nexuses),
    });
    // authMethods is decided per login (the initiator's host may have CHAP of its own).
    const config: TargetNegotiationConfig = {
      ...DEFAULT_TARGET_CONFIG,
      authMethods: opts.auth === undefined ? ['None'] : ['CHAP'],
      ...(opts.targetAlias === undefined ? {} : { targetAlias: opts.targetAlias }),
    };
    const globalAuth = opts.auth === undefined ? undefined : { ...opts.auth, label: opts.auth.label ?? 'iscsi.chap' };
    this.throttle = opts.loginThrottle === false ? undefined : new LoginThrottle(opts.loginThrottle ?? {});
    this.ctx = {
      targetName: opts.targetName,
      authFor: (name) => (name === undefined ? undefined : opts.luns.chapFor?.(name)) ?? globalAuth,
      chapAlgorithms: opts.chapAlgorithms,
      loginRefused: (conn, failure) => this.loginRefused(conn, failure),
      loggedIn: (conn) => this.throttle?.succeeded(conn.socket.remoteAddress ?? ''),
      config,
      logger: opts.logger,
      loginTimeoutMs: opts.loginTimeoutMs ?? DEFAULT_LOGIN_TIMEOUT_MS,
      pool,
      openSession: (conn, params, id) => this.openSession(conn, params, id),
      startFullFeature: (conn, session) => this.startFullFeature(conn, session),
      connectionClosed: (conn) => this.connectionClosed(conn),
    };
    this.tmfScope = {
      allSessions: () => this.fullFeatureSessions(),
      unitAttention: (ffp, lun, code) => this.scsi.establishUnitAttention(ffp.session.nexus, lun, code),
      resetLogicalUnit: (d: BlockDevice) => this.scsi.resetLogicalUnit(d),
    };
    this.host = {
      scsi: this.scsi,
      targetName: opts.targetName,
      taskManagement: (ffp, pdu) => taskManagement(this.tmfScope, ffp, pdu),
      afterTmfResponse: (ffp, pdu, response) => this.afterTmf(ffp, pdu, response),
    };
    this.server = createServer(ADOPTABLE, (socket) => this.accept(socket));
    this.server.maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.server.on('error', (err) => opts.logger.error({ err }, 'iSCSI listener error'));
    this.server.on('drop', (d) =>
      opts.logger.warn(
        { remote: `${d?.remoteAddress}:${d?.remotePort}`, limit: this.server.maxConnections },
        'iSCSI connection refused: too many connections (raise maxConnections)',
      ),
    );
  }

  async listen(port: number, host = '127.0.0.1'): Promise<{ host: string; port: number }> {
    const addr = await listenTcp(this.server, port, host, 'iSCSI target');
    this.opts.logger.info({ ...addr, target: this.opts.targetName, auth: this.opts.auth === undefined ? 'None' : 'CHAP' }, 'iSCSI target listening');
    return addr;
  }

  /** No new connections; sessions finish running commands and close; export handles close. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    // Stop reading everywhere: running commands finish (and answer), nothing new starts.
    await drainConnections(
      this.server,
      this.connections,
      (c) => c.stop(),
      CLOSE_TIMEOUT_MS,
      (open) => this.opts.logger.warn({ connections: open }, 'iSCSI connections did not finish in time: destroying them'),
    );
    this.opts.logger.info('iSCSI target closed');
  }

  /** Host affinity or the volume list changed: remap every session, tell initiators whose LUNs changed. */
  lunsChanged(): void {
    for (const { session, conn } of this.sessionsByTsih.values()) {
      if (session.discovery || session.closed) continue;
      const changed = session.mapLuns(this.opts.luns.lunsFor(session.initiatorName), this.openContext(conn, session));
      if (changed.length === 0) continue;
      session.log.info({ changed, luns: session.luns.size }, 'LUN map changed');
      // REPORTED LUNS DATA HAS CHANGED on every LUN the session still sees (SPC-4 §5.14): the
      // initiator rescans on the next command to any of them.
      for (const lun of session.luns.keys()) this.scsi.establishUnitAttention(session.nexus, lun, ASC_REPORTED_LUNS_DATA_CHANGED);
    }
  }

  sessions(): IscsiSessionInfo[] {
    return [...this.sessionsByTsih.values()].map(({ session }) => session.info());
  }

  // ------------------------------------------------------------------ internals

  private accept(socket: Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    const blocked = this.throttle?.blockedFor(socket.remoteAddress ?? '') ?? 0;
    if (blocked > 0) {
      this.opts.logger.debug({ remote: socket.remoteAddress, retryInMs: blocked }, 'iSCSI connection refused: too many failed logins from this address');
      socket.destroy();
      return;
    }
    const adopted = InputQueue.adopt(socket, INPUT_HIGH_WATER);
    if (adopted === undefined) return;
    const conn = new Connection(adopted.socket, adopted.input, this.ctx);
    this.connections.add(conn);
    conn.log.debug('initiator connected');
    void conn.done.finally(() => this.connections.delete(conn));
  }

  /** Counts authentication failures; one that starts a block is logged with the address and how long. */
  private loginRefused(conn: Connection, failure: LoginFailure): void {
    if (this.throttle === undefined || failure.statusClass !== LOGIN_CLASS_INITIATOR_ERROR || failure.statusDetail !== LOGIN_AUTH_FAILED) return;
    const address = conn.socket.remoteAddress ?? '';
    const blockMs = this.throttle.failed(address);
    if (blockMs === undefined) return;
    this.opts.logger.warn(
      { address, failures: this.throttle.maxFailures, windowMs: this.throttle.windowMs, blockMs },
      `${this.throttle.maxFailures} failed iSCSI logins from ${address} within ${this.throttle.windowMs / 1000} s: refusing its connections for ${blockMs / 1000} s`,
    );
  }

  private *fullFeatureSessions(): Iterable<FullFeature> {
    for (const e of this.sessionsByTsih.values()) if (e.ffp !== undefined && !e.session.closed) yield e.ffp;
  }

  private openContext(conn: Connection, session: Session) {
    return {
      provider: this.opts.provider,
      connectionId: conn.id,
      remoteAddress: conn.remoteAddress,
      initiator: session.initiatorName,
      log: session.log,
      onResize: (lun: number) => {
        session.log.info({ lun }, 'LUN capacity changed');
        this.scsi.establishUnitAttention(session.nexus, lun, ASC_CAPACITY_DATA_CHANGED);
      },
      onEvent: (lun: number, event: HandleEvent) => this.arrayEvent(conn, session, lun, event),
    };
  }

  /**
   * The array's word about a LUN's export (a disconnect or reset fault). Called synchronously,
   * possibly from inside a device call of one of this session's commands, so it never throws
   * and never waits: a disconnect destroys the socket (the initiator sees the connection close;
   * running commands finish and their handles close in the usual teardown), a reset runs as
   * the matching task management function would.
   */
  private arrayEvent(conn: Connection, session: Session, lun: number, event: HandleEvent): void {
    if (session.closed) return;
    if (event.kind === 'disconnect') {
      session.log.warn({ lun, reason: event.reason }, `connection dropped by the array: ${event.reason}`);
      conn.destroy();
      return;
    }
    const lu = session.lunDevices.get(lun);
    if (lu === undefined) return;
    // One signal per open handle: a reset of a volume seen by several sessions is still one reset.
    const key = event.scope === 'target' ? 'target' : `lu:${lu.identity.wwn}`;
    if (this.arrayResets.has(key)) return;
    const what = event.scope === 'target' ? 'TARGET WARM RESET' : 'LOGICAL UNIT RESET';
    session.log.warn({ lun, scope: event.scope }, `${what} by the array (a reset fault): tasks aborted, unit attention queued`);
    const run = (event.scope === 'target' ? targetReset(this.tmfScope) : logicalUnitReset(this.tmfScope, lu))
      .catch((err: unknown) => session.log.error({ err }, `${what} by the array failed`))
      .finally(() => this.arrayResets.delete(key));
    this.arrayResets.set(key, run);
  }

  private openSession(conn: Connection, params: SessionParams, id: LoginIdentity): Session {
    if (this.closing !== undefined) throw new LoginFailure('the target is shutting down', LOGIN_CLASS_TARGET_ERROR, LOGIN_SERVICE_UNAVAILABLE);
    if (id.tsih !== 0) {
      // Adding a connection to a session: MaxConnections=1, so only a session that does not exist is an answer of its own.
      if (!this.sessionsByTsih.has(id.tsih)) {
        throw new LoginFailure(
          `TSIH ${id.tsih} names no session of this target; log in with TSIH 0`,
          LOGIN_CLASS_INITIATOR_ERROR,
          LOGIN_SESSION_DOES_NOT_EXIST,
        );
      }
      throw new LoginFailure(`session ${id.tsih} already has its one connection (MaxConnections=1)`, LOGIN_CLASS_INITIATOR_ERROR, LOGIN_TOO_MANY_CONNECTIONS);
    }
    const initiator = params.initiatorName ?? '';
    // Session reinstatement (RFC 7143 §6.3.5): same initiator and ISID, TSIH 0 -> the old session ends.
    for (const e of [...this.sessionsByTsih.values()]) {
      if (e.session.initiatorName === initiator && e.session.isid === id.isid && !e.session.closed) {
        e.session.log.info({ initiator, isid: isidHex(id.isid), tsih: e.session.tsih }, 'session reinstated by a new login: closing the old one');
        this.endSession(e.session);
        e.conn.destroy();
      }
    }
    const tsih = this.allocateTsih();
    const log = conn.log.child({ tsih });
    const session = new Session(tsih, id.isid, params, this.opts.targetName, this.ctx.config.targetPortalGroupTag, id.cmdSN, conn.remoteAddress, log);
    if (!session.discovery) {
      const refused: Array<{ lun: number; exportName: string; reason: string }> = [];
      session.mapLuns(this.opts.luns.lunsFor(initiator), { ...this.openContext(conn, session), refused });
      if (refused.length > 0) {
        // The array turns hosts away from a volume for now (a connect fault, a disconnect's
        // refuse window): refuse the login as busy, which initiators retry, rather than log in
        // without the LUN, whose commands would fail LOGICAL UNIT NOT SUPPORTED for good.
        session.unmapAll();
        session.closed = true;
        const r = refused[0]!;
        throw new LoginFailure(
          `LUN ${r.lun} (export ${r.exportName}) refuses connections for now: ${r.reason}`,
          LOGIN_CLASS_TARGET_ERROR,
          LOGIN_SERVICE_UNAVAILABLE,
        );
      }
    }
    this.sessionsByTsih.set(tsih, { session, conn });
    if (!session.discovery) {
      this.byPort.set(session.nexus.initiatorPort, session);
      if (session.luns.size === 0) log.warn({ initiator }, 'initiator may see no LUNs (host affinity): it logs in but REPORT LUNS lists nothing');
      this.scsi.addNexus(session.nexus);
    }
    return session;
  }

  private allocateTsih(): number {
    for (;;) {
      const t = this.nextTsih;
      this.nextTsih = this.nextTsih >= 0xffff ? 1 : this.nextTsih + 1;
      if (!this.sessionsByTsih.has(t)) return t; // 0 is reserved (§11.12.6)
    }
  }

  private startFullFeature(conn: Connection, session: Session): FullFeature {
    const ffp = new FullFeature(conn, session, conn.negotiator!, this.host);
    const e = this.sessionsByTsih.get(session.tsih);
    if (e !== undefined) e.ffp = ffp;
    return ffp;
  }

  private connectionClosed(conn: Connection): void {
    const s = conn.session;
    if (s !== undefined) this.endSession(s);
  }

  /** Ends a session once: forgets it, closes its export handles. */
  private endSession(session: Session): void {
    if (session.closed) return;
    session.closed = true;
    const e = this.sessionsByTsih.get(session.tsih);
    if (e?.session === session) this.sessionsByTsih.delete(session.tsih);
    if (this.byPort.get(session.nexus.initiatorPort) === session) {
      this.byPort.delete(session.nexus.initiatorPort);
      this.scsi.removeNexus(session.nexus);
      endCopyNexus(this.scsi, session.nexus); // SPC-4: held copy results end with the I_T nexus
    }
    // Running commands must not lose their device under them: close handles once they are done.
    const running = [...session.tasks.values()].map((t) => t.finished);
    void Promise.all(running).then(() => session.unmapAll());
    session.log.debug({ initiator: session.initiatorName }, 'session ended');
  }

  /** PREEMPT AND ABORT: the preempted nexuses' tasks on that logical unit end (SPC-4 §5.13.11.2.6). */
  private abortTasksOf(wwn: string, nexuses: readonly Nexus[]): void {
    for (const ffp of this.fullFeatureSessions()) {
      if (!nexuses.some((n) => n.initiatorPort === ffp.session.nexus.initiatorPort)) continue;
      for (const t of [...ffp.tasks.values()]) {
        if (ffp.session.lunDevices.get(t.lun)?.identity.wwn === wwn) ffp.abortTask(t);
      }
    }
  }

  private afterTmf(ffp: FullFeature, pdu: TaskMgmtRequestPdu, response: number): void {
    if (pdu.function !== TMF_TARGET_COLD_RESET || response !== TMF_RSP_COMPLETE) return;
    // Cold reset: the response goes out, then every connection closes (RFC 7143 §11.5.1).
    ffp.log.warn({ initiator: ffp.session.initiatorName }, 'TARGET COLD RESET: closing every connection');
    for (const c of [...this.connections]) {
      c.stop();
      c.endSocket();
    }
  }
}
