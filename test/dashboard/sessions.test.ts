/** The dashboard's login sessions: bounded, forgotten when idle, and their clients closed. */
import { describe, expect, it } from 'vitest';
import { SessionStore, sessionCookie, sessionIdOf } from '../../emulator/dashboard/sessions.js';
import type { ArrayClient } from '../../proto/ArrayClient.js';

function fakeClient(closed: string[], name: string): ArrayClient {
  return { close: () => closed.push(name) } as unknown as ArrayClient;
}

describe('SessionStore', () => {
  it('gives each session a random 256-bit id', () => {
    const store = new SessionStore();
    const closed: string[] = [];
    const a = store.create({ client: fakeClient(closed, 'a'), user: 'a', role: 'monitor', tenant: '' });
    const b = store.create({ client: fakeClient(closed, 'b'), user: 'a', role: 'monitor', tenant: '' });
    expect(a.id).toMatch(/^[0-9a-f]{64}$/);
    expect(a.id).not.toBe(b.id);
    expect(store.get(a.id)).toBe(a);
    expect(store.get('0'.repeat(64))).toBeUndefined();
  });

  it('drops the least recently used session past the limit, closing its client', () => {
    const store = new SessionStore({ max: 2 });
    const closed: string[] = [];
    const a = store.create({ client: fakeClient(closed, 'a'), user: 'a', role: 'monitor', tenant: '' });
    const b = store.create({ client: fakeClient(closed, 'b'), user: 'b', role: 'monitor', tenant: '' });
    store.get(a.id); // a is now the most recently used
    store.create({ client: fakeClient(closed, 'c'), user: 'c', role: 'monitor', tenant: '' });
    expect(closed).toEqual(['b']);
    expect(store.get(b.id)).toBeUndefined();
    expect(store.get(a.id)).toBe(a);
    expect(store.size).toBe(2);
  });

  it('forgets a session idle too long, and a logout closes its client', () => {
    let now = 1_000_000;
    const gone: string[] = [];
    const store = new SessionStore({ idleMs: 1000, now: () => now, onRemove: (id) => gone.push(id) });
    const closed: string[] = [];
    const a = store.create({ client: fakeClient(closed, 'a'), user: 'a', role: 'admin', tenant: '' });
    const b = store.create({ client: fakeClient(closed, 'b'), user: 'b', role: 'admin', tenant: '' });
    now += 900;
    expect(store.get(a.id)).toBe(a); // touched: its idle time starts again
    now += 900;
    expect(store.get(b.id)).toBeUndefined();
    expect(closed).toEqual(['b']);
    expect(store.get(a.id)).toBe(a);
    store.remove(a.id);
    expect(closed).toEqual(['b', 'a']);
    expect(gone).toEqual([b.id, a.id]); // their event streams end too
    expect(store.size).toBe(0);
  });
});

describe('the session cookie', () => {
  it('is HttpOnly, SameSite=Strict, for the whole site, and Secure over HTTPS', () => {
    expect(sessionCookie('ab', { secure: false })).toBe('arraylab_session=ab; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200');
    expect(sessionCookie('ab', { secure: true, maxAgeSeconds: 0 })).toBe('arraylab_session=ab; HttpOnly; SameSite=Strict; Path=/; Max-Age=0; Secure');
  });

  it('is read from a Cookie header among others, and only as 64 hex digits', () => {
    const id = 'a'.repeat(64);
    expect(sessionIdOf(`theme=dark; arraylab_session=${id}; x=1`)).toBe(id);
    expect(sessionIdOf('arraylab_session=../../etc')).toBeUndefined();
    expect(sessionIdOf(`other_session=${id}`)).toBeUndefined();
    expect(sessionIdOf(undefined)).toBeUndefined();
  });
});
