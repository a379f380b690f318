/**
 * The arraylab dashboard in the browser: who is logged in, a hash router over the pages, and the
 * live refresh. The server sends `array` events and a `tick` every second over SSE; each one asks
 * the current page to fetch again, at most once a second, so a copy's progress moves on its own.
 */
import { render } from 'preact';
import { useCallback, useEffect, useState } from 'preact/hooks';
import { ApiError, api, dismissToast, onUnauthorized, subscribeToasts, type Toast } from './api.js';
import { RefreshContext, WhoAmIContext } from './common.js';
import { CopiesPage } from './copies.js';
import { FaultsPage } from './faults.js';
import { HostsPage } from './hosts.js';
import { OverviewPage } from './overview.js';
import { RemotesPage } from './remotes.js';
import { TapePage } from './tape.js';
import type { WhoAmI } from './types.js';
import { VolumesPage } from './volumes.js';

const ROUTES = [
  { id: 'overview', title: 'Overview', page: OverviewPage },
  { id: 'volumes', title: 'Volumes', page: VolumesPage },
  { id: 'copies', title: 'Copy sessions', page: CopiesPage },
  { id: 'hosts', title: 'Hosts', page: HostsPage },
  { id: 'tape', title: 'Tape', page: TapePage },
  { id: 'faults', title: 'Faults', page: FaultsPage },
  { id: 'remotes', title: 'Remotes', page: RemotesPage },
] as const;

type RouteId = (typeof ROUTES)[number]['id'];

function currentRoute(): RouteId {
  const id = location.hash.replace(/^#\/?/, '').split('/')[0] ?? '';
  return ROUTES.some((r) => r.id === id) ? (id as RouteId) : 'overview';
}

function useRoute(): RouteId {
  const [route, setRoute] = useState<RouteId>(currentRoute);
  useEffect(() => {
    const on = () => setRoute(currentRoute());
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return route;
}

/**
 * A counter bumped by the event stream, at most once a second (trailing: the last event is never
 * lost). Without the stream (refused, a proxy that buffers, the server restarting) the page still
 * refreshes every few seconds, and the stream is opened again.
 */
function useLiveRefresh(): { refresh: number; live: boolean } {
  const [refresh, setRefresh] = useState(0);
  const [live, setLive] = useState(false);
  useEffect(() => {
    let last = 0;
    let lastEvent = 0;
    let timer: number | undefined;
    let reopen: number | undefined;
    let es: EventSource | undefined;
    const bump = () => {
      if (timer !== undefined) return;
      timer = window.setTimeout(
        () => {
          timer = undefined;
          last = Date.now();
          setRefresh((n) => n + 1);
        },
        Math.max(0, last + 1000 - Date.now()),
      );
    };
    const onEvent = () => {
      lastEvent = Date.now();
      setLive(true);
      bump();
    };
    const open = () => {
      reopen = undefined;
      es = new EventSource('/api/events/stream');
      es.addEventListener('array', onEvent);
      es.addEventListener('tick', onEvent);
      es.onopen = () => setLive(true);
      es.onerror = () => {
        setLive(false);
        // EventSource retries a dropped connection itself, but gives up on an HTTP error (a 401,
        // the subscriber cap): then open it again later. A lost login shows on the next fetch.
        if (es?.readyState === EventSource.CLOSED && reopen === undefined) reopen = window.setTimeout(open, 5000);
      };
    };
    open();
    const poll = window.setInterval(() => {
      if (Date.now() - lastEvent > 3000) bump();
    }, 3000);
    return () => {
      es?.close();
      window.clearInterval(poll);
      if (timer !== undefined) window.clearTimeout(timer);
      if (reopen !== undefined) window.clearTimeout(reopen);
    };
  }, []);
  return { refresh, live };
}

function Toasts() {
  const [list, setList] = useState<Toast[]>([]);
  useEffect(() => subscribeToasts(setList), []);
  return (
    <div class="toasts" aria-live="assertive">
      {list.map((t) => (
        <button type="button" key={t.id} class={`toast toast-${t.kind}`} data-testid="toast" onClick={() => dismissToast(t.id)} title="dismiss">
          {t.message}
        </button>
      ))}
    </div>
  );
}

function Login(props: { onLogin: () => void }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      await api('/api/login', { method: 'POST', body: { token: token.trim() }, quiet: true });
      setToken('');
      props.onLogin();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="login">
      <form class="login-box" onSubmit={submit}>
        <h1>arraylab</h1>
        <p>Log in with an API token (a monitor token is enough to watch; faults need the instructor role).</p>
        <label for="login-token">Token</label>
        <input
          id="login-token"
          data-testid="login-token"
          type="password"
          autocomplete="current-password"
          value={token}
          onInput={(e) => setToken((e.target as HTMLInputElement).value)}
          placeholder="paste a token: arraylab user add NAME --role monitor prints one"
        />
        <button type="submit" data-testid="login-submit" disabled={busy || token.trim() === ''}>
          {busy ? 'Logging in…' : 'Log in'}
        </button>
        {error ? (
          <p class="login-error" data-testid="login-error" role="alert">
            {error}
          </p>
        ) : null}
      </form>
    </main>
  );
}

function Shell(props: { me: WhoAmI; onLogout: () => void }) {
  const route = useRoute();
  const { refresh, live } = useLiveRefresh();
  const current = ROUTES.find((r) => r.id === route) ?? ROUTES[0];
  const PageComponent = current.page;
  useEffect(() => {
    document.title = `${current.title} · arraylab`;
  }, [current]);
  const logout = async () => {
    await api('/api/logout', { method: 'POST' }).catch(() => undefined);
    props.onLogout();
  };
  return (
    <WhoAmIContext.Provider value={props.me}>
      <RefreshContext.Provider value={refresh}>
        {props.me.authRequired ? null : (
          <div class="auth-off-banner" data-testid="auth-off-banner" role="status">
            Unauthenticated dashboard: the array runs with <code>api.auth off</code>, so anyone who can reach this address can watch and act. It is served on
            loopback only.
          </div>
        )}
        <header class="top">
          <span class="brand">arraylab</span>
          <nav>
            {ROUTES.map((r) => (
              <a
                key={r.id}
                href={`#/${r.id}`}
                data-testid={`nav-${r.id}`}
                class={r.id === route ? 'active' : ''}
                aria-current={r.id === route ? 'page' : undefined}
              >
                {r.title}
              </a>
            ))}
          </nav>
          <span class="who">
            <span class={`live ${live ? 'live-on' : 'live-off'}`} title={live ? 'live: updates every second' : 'not live: reconnecting to the event stream'}>
              {live ? '● live' : '○ offline'}
            </span>
            <span data-testid="whoami">
              {props.me.user || 'anonymous'}
              {props.me.roles.length > 0 ? ` (${props.me.roles.join(', ')})` : ''}
              {props.me.tenant ? ` · tenant ${props.me.tenant}` : ''}
            </span>
            {props.me.authRequired ? (
              <button type="button" class="link" onClick={logout}>
                Log out
              </button>
            ) : null}
          </span>
        </header>
        <main class="content">
          <PageComponent key={route} />
        </main>
      </RefreshContext.Provider>
    </WhoAmIContext.Provider>
  );
}

function App() {
  const [me, setMe] = useState<WhoAmI | null | undefined>(undefined);
  const [down, setDown] = useState('');
  const check = useCallback(() => {
    api<WhoAmI>('/api/whoami', { quiet: true })
      .then((w) => {
        setDown('');
        setMe(w);
      })
      .catch((e: unknown) => {
        // Not logged in: the login screen. Anything else (server gone): say so and try again.
        if (e instanceof ApiError && e.status === 401) return setMe(null);
        setDown(e instanceof Error ? e.message : String(e));
        window.setTimeout(check, 3000);
      });
  }, []);
  useEffect(() => {
    onUnauthorized(() => setMe(null));
    check();
  }, [check]);
  return (
    <>
      {me === undefined ? (
        <p class="muted center">{down ? `${down} Trying again…` : 'Connecting…'}</p>
      ) : me === null ? (
        <Login onLogin={check} />
      ) : (
        <Shell me={me} onLogout={() => setMe(null)} />
      )}
      <Toasts />
    </>
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
