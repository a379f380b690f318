/**
 * The dashboard's one way to the server: JSON over fetch with the session cookie (same origin).
 * A 401 sends the page back to the login screen; any other failure shows the server's own
 * message in a toast (the server words its errors to name the thing and the fix).
 */

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export interface Toast {
  id: number;
  message: string;
  kind: 'error' | 'info';
}

let toasts: Toast[] = [];
let nextToast = 1;
const toastListeners = new Set<(t: Toast[]) => void>();
let unauthorized: () => void = () => {};

export function onUnauthorized(handler: () => void): void {
  unauthorized = handler;
}

export function subscribeToasts(listener: (t: Toast[]) => void): () => void {
  toastListeners.add(listener);
  listener(toasts);
  return () => toastListeners.delete(listener);
}

function publish(): void {
  for (const l of toastListeners) l(toasts);
}

/** Shows a message for a few seconds; the same message again refreshes it instead of stacking. */
export function toast(message: string, kind: Toast['kind'] = 'error'): void {
  const same = toasts.find((t) => t.message === message);
  if (same) toasts = toasts.filter((t) => t !== same);
  const t: Toast = { id: nextToast++, message, kind };
  toasts = [...toasts.slice(-3), t];
  publish();
  setTimeout(() => dismissToast(t.id), kind === 'error' ? 8000 : 4000);
}

export function dismissToast(id: number): void {
  const before = toasts.length;
  toasts = toasts.filter((t) => t.id !== id);
  if (toasts.length !== before) publish();
}

export interface RequestOptions {
  method?: 'GET' | 'POST' | 'DELETE';
  body?: unknown;
  /** Do not toast a failure (the caller shows it itself, as the login form does). */
  quiet?: boolean;
}

export async function api<T>(path: string, opts: RequestOptions = {}): Promise<T> {
  const init: RequestInit = { method: opts.method ?? 'GET', credentials: 'same-origin', headers: { accept: 'application/json' } };
  // Every change carries a JSON body ({} when there is nothing to say): the server takes only
  // application/json for POST and DELETE, which a cross-site form cannot send.
  const body = opts.body ?? (init.method === 'GET' ? undefined : {});
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { accept: 'application/json', 'content-type': 'application/json' };
  }
  let res: Response;
  try {
    res = await fetch(path, init);
  } catch (e) {
    const err = new ApiError(
      0,
      `the dashboard server does not answer (${e instanceof Error ? e.message : String(e)}); is arraylab serve --dashboard still running?`,
    );
    if (opts.quiet !== true) toast(err.message);
    throw err;
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = text === '' ? undefined : JSON.parse(text);
  } catch {
    json = undefined;
  }
  if (!res.ok) {
    const fromServer =
      json !== null && typeof json === 'object' && typeof (json as { error?: unknown }).error === 'string' ? (json as { error: string }).error : '';
    const err = new ApiError(res.status, fromServer || `${init.method} ${path} failed: HTTP ${res.status} ${res.statusText}`);
    if (res.status === 401 && path !== '/api/login') unauthorized();
    else if (opts.quiet !== true) toast(err.message);
    throw err;
  }
  return json as T;
}
