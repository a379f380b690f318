/**
 * The other arrays this array knows (`arraylab remote add NAME --api HOST:PORT`), and what the
 * copy engine needs of them for REC (CopyEngine's RemoteCopyHook): opening and closing a
 * pair's remote end through the remote's RemoteCopyService, and each pair's link (RecLink.ts).
 *
 * A remote is named by its control API address. Its array id and NBD address are learnt from
 * its GetStatus at add and at each contact (a remote that moved its NBD port is followed), and
 * kept in the metadata store (migration 7), so a restart finds its pairs' remotes again.
 */
import type { Logger } from 'pino';
import { ApiError, ArrayClient } from '../../proto/ArrayClient.js';
import { StatusError } from '../../proto/errors.js';
import { formatHostPort, parseHostPort } from '../../proto/util/address.js';
import type { RemoteView } from '../../proto/views.js';
import { VOLUME_NAME_PATTERN } from '../../proto/views.js';
import type { MetadataStore, RemoteRow } from '../array/MetadataStore.js';
import type { RemoteCopyHook } from '../copy/CopyEngine.js';
import { CopyError, RemoteLinkError, RemoteRefusalError, type SessionRecord } from '../copy/CopySession.js';
import { DEFAULT_REC_BUFFER, HALT_WAIT_CHOICES_MS, type RecBufferSettings } from '../copy/recBuffer.js';
import type { RecLink, RecLinkEvents } from '../copy/SessionBase.js';
import type { LinkFaultHook } from '../fault/link.js';
import { RecDataPath } from './RecLink.js';

/** Control calls between arrays: short, so a lost remote halts a pair promptly. */
const CONTROL_DEADLINE_MS = 5000;

interface RemoteEntry {
  row: RemoteRow;
  client: ArrayClient;
  reachable: boolean;
  error: string;
  version: string;
}

export interface RemoteArraysOptions {
  db: MetadataStore;
  log: Logger;
  /** This array's id (sent to remote ends, so they can name the source). */
  arrayId: string;
  /** Link faults (the array's fault engine). */
  faults: () => LinkFaultHook | undefined;
  /** REC sessions of this array that use a remote (remove refuses while any do). */
  sessionsUsing: (remote: string) => number;
  /** New REC buffer settings for a remote (the engine's buffer follows at once). */
  onBufferSettings: (remote: string, settings: RecBufferSettings) => void;
}

export class RemoteArrays implements RemoteCopyHook {
  private readonly remotes = new Map<string, RemoteEntry>();
  private readonly links = new Set<RecDataPath>();
  private readonly log: Logger;

  constructor(private readonly opts: RemoteArraysOptions) {
    this.log = opts.log.child({ component: 'remote' });
  }

  load(): void {
    for (const row of this.opts.db.listRemotes()) this.remotes.set(row.name, this.entry(row));
  }

  get arrayId(): string {
    return this.opts.arrayId;
  }

  // ---- the operator's registry ----

  /** opts.token: what this array calls the remote with (a replication or admin user's token there). */
  async add(name: string, api: string, opts: { offline?: boolean; token?: string } = {}): Promise<RemoteView> {
    if (typeof name !== 'string' || !VOLUME_NAME_PATTERN.test(name)) {
      throw new StatusError('INVALID_ARGUMENT', `remote name ${JSON.stringify(name)} is not valid; use 1-63 letters, digits, '.', '_' or '-', e.g. site-b`);
    }
    let address: string;
    try {
      address = formatHostPort(parseHostPort(api));
    } catch (err) {
      throw new StatusError('INVALID_ARGUMENT', `remote ${name}: --api ${JSON.stringify(api)}: ${(err as Error).message}`);
    }
    const have = this.remotes.get(name);
    if (have !== undefined && have.row.api !== address) {
      throw new StatusError('ALREADY_EXISTS', `remote ${name} exists already (api ${have.row.api}); remove it first or choose another name`);
    }
    const token = opts.token ?? '';
    let e = have ?? this.entry({ name, api: address, arrayId: '', nbd: '', addedAt: new Date().toISOString(), buffer: '{}', token });
    if (have !== undefined && token !== '' && token !== have.row.token) {
      // Adding it again with a new token: the new credential from now on.
      have.client.close();
      e = this.entry({ ...have.row, token });
    }
    await this.probe(e);
    if (!e.reachable && !opts.offline) {
      if (e !== have) e.client.close();
      // Not UNAVAILABLE: that is what clients say of the array they called, and this one answered.
      const refused = /UNAUTHENTICATED|PERMISSION_DENIED|needs a credential|not valid on this array|may not call/.test(e.error);
      const fix = refused
        ? 'give remote add --token-file FILE with the token of a user of role replication there (arraylab user add NAME --role replication, on that array)'
        : 'start that array, check --api, or pass --offline to add it anyway';
      throw new StatusError('FAILED_PRECONDITION', `cannot add remote ${name}: ${e.error}; ${fix}`);
    }
    if (e.row.arrayId === this.opts.arrayId) {
      if (e !== have) e.client.close();
      throw new StatusError(
        'INVALID_ARGUMENT',
        `cannot add remote ${name}: ${address} is this array itself (array id ${this.opts.arrayId}); give another array's API address`,
      );
    }
    this.opts.db.putRemote(e.row);
    this.remotes.set(name, e);
    this.log.info({ remote: name, api: address, arrayId: e.row.arrayId, nbd: e.row.nbd }, 'remote array added');
    return this.view(e);
  }

  list(): RemoteView[] {
    return [...this.remotes.values()].map((e) => this.view(e));
  }

  async get(name: string, opts: { probe?: boolean } = {}): Promise<RemoteView> {
    const e = this.must(name);
    if (opts.probe) await this.probe(e);
    return this.view(e);
  }

  remove(name: string, opts: { force?: boolean } = {}): void {
    const e = this.must(name);
    const n = this.opts.sessionsUsing(name);
    if (n > 0 && !opts.force) {
      throw new StatusError('FAILED_PRECONDITION', `cannot remove remote ${name}: ${n} REC session(s) use it; cancel them first, or pass --force (they halt)`);
    }
    this.opts.db.deleteRemote(name);
    this.remotes.delete(name);
    e.client.close();
    // Its pairs lose their link now, and cannot dial again until the remote is added anew.
    const why = `remote array ${name} was removed from this array (remote remove --force); add it again (arraylab remote add ${name} --api HOST:PORT) or cancel the pair`;
    for (const l of [...this.links]) if (l.remoteName === name) l.cut(why);
  }

  /**
   * Changes the REC buffer to a remote (consistency mode). Unset fields keep their value.
   * Bounds: 1 MiB to 8 GiB; halt wait 0, 5, 10 or 15 s; monitoring time 100 ms to 1 h;
   * cycles every 10 ms to 60 s.
   */
  setBuffer(name: string, change: Partial<RecBufferSettings>): RemoteView {
    const e = this.must(name);
    const bad = (what: string): never => {
      throw new StatusError('INVALID_ARGUMENT', `remote ${name}: ${what}`);
    };
    const next = { ...this.bufferSettings(name), ...change };
    if (!Number.isSafeInteger(next.bytes) || next.bytes < 1024 * 1024 || next.bytes > 8 * 1024 ** 3) bad(`--buffer ${next.bytes}: give 1MiB to 8GiB`);
    if (!(HALT_WAIT_CHOICES_MS as readonly number[]).includes(next.haltWaitMs)) bad(`--halt-wait ${next.haltWaitMs / 1000}: give 0, 5, 10 or 15 (seconds)`);
    if (!Number.isFinite(next.monitorMs) || next.monitorMs < 100 || next.monitorMs > 3_600_000) bad(`--monitor-time ${next.monitorMs} ms: give 100 ms to 1 h`);
    if (!Number.isFinite(next.cycleMs) || next.cycleMs < 10 || next.cycleMs > 60_000) bad(`--cycle ${next.cycleMs} ms: give 10 ms to 60 s`);
    const stored = { ...(JSON.parse(e.row.buffer || '{}') as Partial<RecBufferSettings>), ...change };
    const row = { ...e.row, buffer: JSON.stringify(stored) };
    this.opts.db.putRemote(row);
    e.row = row;
    this.opts.onBufferSettings(name, next);
    return this.view(e);
  }

  bufferSettings(name: string): RecBufferSettings {
    const e = this.remotes.get(name);
    let set: Partial<RecBufferSettings> = {};
    try {
      set = JSON.parse(e?.row.buffer || '{}') as Partial<RecBufferSettings>;
    } catch {
      // a damaged value: the defaults (setBuffer writes it anew)
    }
    return { ...DEFAULT_REC_BUFFER, ...set };
  }

  async commitCycle(remote: string, cycle: number, pairIds: string[]): Promise<void> {
    await this.control(remote, `commit cycle ${cycle}`, (c) => c.commitCycle(cycle, pairIds));
  }

  /** The registered name of an array id, for showing a remote end's source. */
  nameOf(arrayId: string): string | undefined {
    for (const e of this.remotes.values()) if (e.row.arrayId === arrayId) return e.row.name;
    return undefined;
  }

  close(): void {
    for (const l of [...this.links]) l.close();
    for (const e of this.remotes.values()) e.client.close();
  }

  // ---- RemoteCopyHook ----

  checkRemote(name: string): void {
    if (!this.remotes.has(name)) {
      const known = [...this.remotes.keys()];
      throw new CopyError(
        'NOT_FOUND',
        `no remote array named ${name}; ${known.length > 0 ? `known: ${known.join(', ')}` : 'none is registered'}; add it with 'arraylab remote add ${name} --api HOST:PORT'`,
      );
    }
  }

  async openRemoteEnd(r: SessionRecord, blockSize: number, force: boolean): Promise<void> {
    const rec = r.rec!;
    await this.control(rec.peer, 'open the remote end', (c) =>
      c.openRemoteEnd({
        pairId: r.id,
        sourceArrayId: this.opts.arrayId,
        sourceVolume: r.source,
        volume: rec.peerVolume,
        sizeBytes: r.sizeBytes,
        blockSize,
        unitSize: r.unitSize,
        mode: rec.mode,
        secret: rec.secret,
        force,
      }),
    );
  }

  async closeRemoteEnd(r: SessionRecord): Promise<void> {
    await this.control(r.rec!.peer, 'close the remote end', (c) => c.closeRemoteEnd(r.id));
  }

  link(r: SessionRecord, events: RecLinkEvents): RecLink {
    const path = new RecDataPath({
      record: r,
      events,
      remotes: this,
      faults: this.opts.faults,
      log: this.log,
      onClose: (p) => this.links.delete(p),
    });
    this.links.add(path);
    return path;
  }

  /**
   * A control call to a remote, with link faults applied: a lost link or an unreachable array
   * is a RemoteLinkError (link-down); the remote's own refusal comes back as a CopyError with
   * its message and code.
   */
  async control<T>(remote: string, what: string, call: (c: ArrayClient) => Promise<T>): Promise<T> {
    const e = this.linked(remote);
    const fault = this.opts.faults()?.linkSend(remote, 'control', 0);
    if (fault !== undefined) {
      try {
        await fault;
      } catch (err) {
        throw new RemoteLinkError(`link to remote ${remote} is down: ${(err as Error).message}`, 'link-down');
      }
    }
    try {
      const out = await call(e.client);
      e.reachable = true;
      e.error = '';
      return out;
    } catch (err) {
      // Throttled after failed authentications: the same credential problem, a little later.
      const throttled = err instanceof ApiError && err.code === 'RESOURCE_EXHAUSTED' && /failed authentications/.test(err.message);
      if (err instanceof ApiError && (err.code === 'UNAUTHENTICATED' || throttled)) {
        // A credential problem is fixed on the other array or with remote add --token-file: the
        // pairs halt and retry, as for a lost link, with a client that looks for it again.
        this.renewClient(e);
        e.reachable = false;
        e.error = err.message;
        throw new RemoteLinkError(
          `remote array ${remote} (${e.row.api}) refused this array's credential: ${err.message}; give remote add ${remote} --api ${e.row.api} --token-file FILE a replication user's token`,
          'link-down',
        );
      }
      if (err instanceof ApiError && err.code !== 'UNAVAILABLE' && err.code !== 'DEADLINE_EXCEEDED') {
        const code = err.code === 'NOT_FOUND' || err.code === 'INVALID_ARGUMENT' || err.code === 'ALREADY_EXISTS' ? err.code : 'FAILED_PRECONDITION';
        throw new RemoteRefusalError(code, `remote ${remote} refused to ${what}: ${err.message}`);
      }
      e.reachable = false;
      e.error = (err as Error).message;
      throw new RemoteLinkError(`remote array ${remote} (${e.row.api}) did not answer: ${(err as Error).message}`, 'link-down');
    }
  }

  /** Where a remote's NBD server is (learnt from it; probed again when unknown). */
  async nbdAddress(remote: string): Promise<{ host: string; port: number }> {
    const e = this.linked(remote);
    if (e.row.nbd === '') await this.probe(e);
    if (e.row.nbd === '')
      throw new RemoteLinkError(`remote array ${remote} (${e.row.api}) did not answer: ${e.error || 'its NBD address is unknown'}`, 'link-down');
    return parseHostPort(e.row.nbd);
  }

  /** Asks the remote who it is and where its NBD server listens; notes the answer. */
  async probe(e: RemoteEntry): Promise<void> {
    try {
      const st = await e.client.getStatus();
      const nbd = st.listeners.nbd;
      // A wildcard listener is reached at the API's host.
      const host = nbd.host === '0.0.0.0' || nbd.host === '::' || nbd.host === '' ? parseHostPort(e.row.api).host : nbd.host;
      const row = { ...e.row, arrayId: st.arrayId, nbd: nbd.available ? formatHostPort({ host, port: nbd.port }) : '' };
      if (row.arrayId !== e.row.arrayId || row.nbd !== e.row.nbd) {
        e.row = row;
        if (this.remotes.get(e.row.name) === e) this.opts.db.putRemote(row);
      }
      e.reachable = true;
      e.error = '';
      e.version = st.version;
    } catch (err) {
      e.reachable = false;
      e.error = (err as Error).message;
      if (err instanceof ApiError && err.code === 'UNAUTHENTICATED') this.renewClient(e);
    }
  }

  /**
   * A remote added without a token uses what a client finds (ARRAYLAB_TOKEN, the link an array
   * on this machine makes when it starts), which may appear or change after this client was
   * made: make a new one, which looks again.
   */
  private renewClient(e: RemoteEntry): void {
    if (e.row.token) return;
    e.client.close();
    e.client = this.entry(e.row).client;
  }

  /**
   * The remote a pair's link uses: one removed with --force while pairs used it is a lost link
   * for them (they halt, saying why), not an error of the caller's.
   */
  private linked(name: string): RemoteEntry {
    const e = this.remotes.get(name);
    if (e === undefined) {
      throw new RemoteLinkError(
        `remote array ${name} is no longer registered on this array; add it again (arraylab remote add ${name} --api HOST:PORT) or cancel the pair`,
        'link-down',
      );
    }
    return e;
  }

  private must(name: string): RemoteEntry {
    const e = this.remotes.get(name);
    if (e === undefined) {
      throw new StatusError('NOT_FOUND', `no remote array named ${name}; list them with 'arraylab remote list', add one with 'arraylab remote add'`);
    }
    return e;
  }

  private entry(row: RemoteRow): RemoteEntry {
    const client = new ArrayClient(row.api, { deadlineMs: CONTROL_DEADLINE_MS, ...(row.token ? { token: row.token } : {}) });
    return { row, client, reachable: false, error: '', version: '' };
  }

  private view(e: RemoteEntry): RemoteView {
    return {
      name: e.row.name,
      api: e.row.api,
      arrayId: e.row.arrayId,
      nbd: e.row.nbd,
      reachable: e.reachable,
      error: e.error,
      addedAt: e.row.addedAt,
      sessionCount: this.opts.sessionsUsing(e.row.name),
      version: e.version,
      buffer: this.bufferSettings(e.row.name),
    };
  }
}
