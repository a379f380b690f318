/** Pieces every page uses: the data hook that follows the live refresh, bars, badges, empty states. */
import type { ComponentChildren } from 'preact';
import { createContext } from 'preact';
import { useCallback, useContext, useEffect, useRef, useState } from 'preact/hooks';
import { api } from './api.js';
import type { CopySessionView, WhoAmI } from './types.js';

/** Counts up each time the page should fetch again (SSE array/tick events, at most once a second). */
export const RefreshContext = createContext(0);

/** Who is logged in and what they may do. */
export const WhoAmIContext = createContext<WhoAmI>({ user: null, roles: [], tenant: null, authRequired: false, can: { faults: false, copies: false } });

export interface Data<T> {
  data: T | undefined;
  /** The last failure's message; the last good data stays shown. */
  error: string;
  reload: () => void;
}

/** GETs path now and again on every live refresh (unless live: false); a fetch still under way is not doubled. */
export function useData<T>(path: string, opts: { live?: boolean } = {}): Data<T> {
  const tick = useContext(RefreshContext);
  const refresh = opts.live === false ? 0 : tick;
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState('');
  const [again, setAgain] = useState(0);
  const inFlight = useRef(false);
  // A refresh or reload that came while a fetch was under way: fetch once more when it ends, so
  // what the user just did (a fault removed) shows without waiting for the next tick.
  const missed = useRef(false);
  const alive = useRef(true);
  useEffect(() => {
    alive.current = true;
    return () => {
      alive.current = false;
    };
  }, []);
  useEffect(() => {
    if (inFlight.current) {
      missed.current = true;
      return;
    }
    inFlight.current = true;
    api<T>(path)
      .then((d) => {
        if (!alive.current) return;
        setData(d);
        setError('');
      })
      .catch((e: unknown) => {
        if (alive.current) setError(e instanceof Error ? e.message : String(e));
      })
      .finally(() => {
        inFlight.current = false;
        if (missed.current && alive.current) {
          missed.current = false;
          setAgain((n) => n + 1);
        }
      });
  }, [path, refresh, again]);
  const reload = useCallback(() => setAgain((n) => n + 1), []);
  return { data, error, reload };
}

export function Page(props: { id: string; title: string; children: ComponentChildren; error?: string; loading?: boolean }) {
  return (
    <section class="page" data-testid={`page-${props.id}`}>
      <h1>{props.title}</h1>
      {props.error ? <p class="page-error">{props.error}</p> : null}
      {props.loading ? <p class="muted">Loading…</p> : props.children}
    </section>
  );
}

export function Empty(props: { children: ComponentChildren }) {
  return <p class="empty">{props.children}</p>;
}

/** A horizontal bar filled to pct (0..100), with its label inside the row. */
export function Bar(props: { pct: number; label?: string; kind?: 'alloc' | 'progress' | 'warn'; testid?: string }) {
  const pct = Math.max(0, Math.min(100, props.pct));
  return (
    <div
      class={`bar bar-${props.kind ?? 'alloc'}`}
      data-testid={props.testid}
      data-percent={pct}
      role="progressbar"
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={pct}
    >
      <div class="bar-fill" style={{ width: `${pct}%` }} />
      {props.label !== undefined ? <span class="bar-label">{props.label}</span> : null}
    </div>
  );
}

const STATE_CLASS: Record<string, string> = {
  copying: 'busy',
  equivalent: 'good',
  tracking: 'good',
  snap: 'good',
  split: 'idle',
  suspended: 'warn',
  'error-suspended': 'bad',
  halt: 'bad',
};

export function StateBadge(props: { state: string }) {
  return <span class={`badge badge-${STATE_CLASS[props.state] ?? 'idle'}`}>{props.state}</span>;
}

export const COPY_TYPE_NAMES: Record<CopySessionView['type'], string> = {
  opc: 'OPC',
  quickopc: 'QuickOPC',
  snapopcplus: 'SnapOPC+',
  ec: 'EC',
  rec: 'REC',
  ropc: 'ROPC',
};

/** Sessions with their progress as one number, 0..100. */
export function copyPercent(s: CopySessionView): number {
  if (s.totalBlocks <= 0) return s.state === 'copying' ? 0 : 100;
  return Math.min(100, Math.round((s.copiedBlocks / s.totalBlocks) * 1000) / 10);
}
