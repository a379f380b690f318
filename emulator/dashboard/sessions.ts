/**
 * The dashboard's login sessions: a random 256-bit id in an HttpOnly, SameSite=Strict cookie,
 * mapped to the user's token and an ArrayClient made for it, so every page the user loads is a
 * control-API call made as that user. Bounded: at most MAX_SESSIONS (the least recently used one
 * goes first), and a session idle for IDLE_MS is forgotten. Forgetting closes its client.
 */
import { randomBytes } from 'node:crypto';
import type { ArrayClient } from '../../proto/ArrayClient.js';

export const SESSION_COOKIE = 'arraylab_session';
export const MAX_SESSIONS = 256;
export const IDLE_MS = 12 * 60 * 60 * 1000;

export interface DashboardSession {
  readonly id: string;
  readonly client: ArrayClient;
  readonly user: string;
  readonly role: string;
  /** '' : array-wide. */
  readonly tenant: string;
  lastSeen: number;
}

export interface SessionStoreOptions {
  max?: number;
  idleMs?: number;
  now?: () => number;
  /** Told when a session goes (logout, idle, evicted), after its client is closed: its event streams end. */
  onRemove?: (id: string) => void;
}

export class SessionStore {
  /** In order of last use, oldest first (a Map keeps insertion order; a touch re-inserts). */
  private readonly sessions = new Map<string, DashboardSession>();
  private readonly max: number;
  private readonly idleMs: number;
  private readonly now: () => number;
  private readonly onRemove: ((id: string) => void) | undefined;

  constructor(opts: SessionStoreOptions = {}) {
    this.onRemove = opts.onRemove;
    this.max = opts.max ?? MAX_SESSIONS;
    this.idleMs = opts.idleMs ?? IDLE_MS;
    this.now = opts.now ?? Date.now;
  }

  get size(): number {
    return this.sessions.size;
  }

  /** A new session for a client whose token the API accepted; the oldest goes when full. */
  create(who: { client: ArrayClient; user: string; role: string; tenant: string }): DashboardSession {
    this.expire();
    while (this.sessions.size >= this.max) this.remove(this.sessions.keys().next().value as string);
    const s: DashboardSession = { id: randomBytes(32).toString('hex'), ...who, lastSeen: this.now() };
    this.sessions.set(s.id, s);
    return s;
  }

  /** The session of a cookie value, touched; undefined when unknown or idle too long. */
  get(id: string | undefined): DashboardSession | undefined {
    if (id === undefined) return undefined;
    const s = this.sessions.get(id);
    if (s === undefined) return undefined;
    const now = this.now();
    if (now - s.lastSeen > this.idleMs) {
      this.remove(id);
      return undefined;
    }
    s.lastSeen = now;
    this.sessions.delete(id);
    this.sessions.set(id, s);
    return s;
  }

  remove(id: string): void {
    const s = this.sessions.get(id);
    if (s === undefined) return;
    this.sessions.delete(id);
    s.client.close();
    this.onRemove?.(id);
  }

  /** Drops the sessions idle too long (they are in last-use order: stop at the first fresh one). */
  expire(): void {
    const now = this.now();
    for (const [id, s] of this.sessions) {
      if (now - s.lastSeen <= this.idleMs) break;
      this.remove(id);
    }
  }

  closeAll(): void {
    for (const id of [...this.sessions.keys()]) this.remove(id);
  }
}

/** The session id in a Cookie header: 64 hex digits, or undefined. */
export function sessionIdOf(cookieHeader: string | undefined): string | undefined {
  if (cookieHeader === undefined) return undefined;
  for (const part of cookieHeader.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0 || part.slice(0, eq).trim() !== SESSION_COOKIE) continue;
    const v = part.slice(eq + 1).trim();
    if (/^[0-9a-f]{64}$/.test(v)) return v;
  }
  return undefined;
}

/** The Set-Cookie value for a session (Secure over HTTPS); maxAge 0 clears it. */
export function sessionCookie(id: string, opts: { secure: boolean; maxAgeSeconds?: number }): string {
  const maxAge = opts.maxAgeSeconds ?? Math.floor(IDLE_MS / 1000);
  return `${SESSION_COOKIE}=${id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${maxAge}${opts.secure ? '; Secure' : ''}`;
}
