/**
 * The picture of a copy session: one square per cell of GetCopyBitmap's answer, coloured by what
 * the cell's units hold (copied, pending, tracked, before-image, nothing). It asks the server for
 * about as many cells as fit the width it is given, fits the squares to that width, and fetches
 * again on every live refresh, so copying is seen filling the grid.
 */
import { useContext, useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks';
import { api } from './api.js';
import { RefreshContext } from './common.js';
import { bytes } from './format.js';
import type { CopyBitmapView } from './types.js';

/** The cell letters, their names and the CSS variables that colour them (style.css). */
export const CELL_KINDS = [
  { ch: 'C', name: 'copied', hint: 'the destination holds the point-in-time data' },
  { ch: 'P', name: 'pending', hint: 'still to copy' },
  { ch: 'T', name: 'tracked', hint: 'changed since the copy point: re-copied on the next restart' },
  { ch: 'B', name: 'before-image', hint: 'old data saved to the snapshot before a write' },
  { ch: '.', name: 'nothing', hint: 'nothing to copy (for example a snapshot unit never written)' },
] as const;

const VAR_OF: Record<string, string> = { C: '--cell-copied', P: '--cell-pending', T: '--cell-tracked', B: '--cell-before', '.': '--cell-nothing' };

/** Smallest square in CSS pixels the grid asks cells for; the tallest the picture grows. */
const MIN_CELL = 6;
const MAX_HEIGHT = 240;
const MAX_CELLS = 4096;

/** How many cells to ask for at this width: as many as fit at MIN_CELL within MAX_HEIGHT. */
export function cellsFor(width: number): number {
  const cols = Math.max(8, Math.floor(width / MIN_CELL));
  return Math.max(64, Math.min(MAX_CELLS, cols * Math.floor(MAX_HEIGHT / MIN_CELL)));
}

/** The largest square size whose grid of n cells fits width × MAX_HEIGHT. */
export function layout(n: number, width: number): { size: number; cols: number; rows: number } {
  for (let size = 32; size > 1; size--) {
    const cols = Math.max(1, Math.floor(width / size));
    const rows = Math.ceil(n / cols);
    if (rows * size <= MAX_HEIGHT || size === 2) return { size, cols, rows };
  }
  const cols = Math.max(1, Math.floor(width / 2));
  return { size: 2, cols, rows: Math.ceil(n / cols) };
}

function count(cells: string, ch: string): number {
  let n = 0;
  for (let i = 0; i < cells.length; i++) if (cells.charCodeAt(i) === ch.charCodeAt(0)) n++;
  return n;
}

function draw(canvas: HTMLCanvasElement, view: CopyBitmapView, width: number): { size: number; cols: number } {
  const n = view.cells.length;
  const { size, cols, rows } = layout(n, width);
  const dpr = window.devicePixelRatio || 1;
  const cssW = cols * size;
  const cssH = Math.max(size, rows * size);
  canvas.style.width = `${cssW}px`;
  canvas.style.height = `${cssH}px`;
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  const ctx = canvas.getContext('2d');
  if (!ctx) return { size, cols };
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const style = getComputedStyle(canvas);
  const colours: Record<string, string> = {};
  for (const [ch, v] of Object.entries(VAR_OF)) colours[ch] = style.getPropertyValue(v).trim() || '#888';
  // A gap between squares once they are big enough to show one: the grid reads as units.
  const gap = size >= 6 ? 1 : 0;
  // One fillStyle change per run of equal cells, not per cell.
  let current = '';
  for (let i = 0; i < n; i++) {
    const ch = view.cells[i] ?? '.';
    if (ch !== current) {
      current = ch;
      ctx.fillStyle = colours[ch] ?? colours['.'] ?? '#888';
    }
    const x = (i % cols) * size;
    const y = Math.floor(i / cols) * size;
    ctx.fillRect(x, y, size - gap, size - gap);
  }
  return { size, cols };
}

const NAME_OF: Record<string, string> = Object.fromEntries(CELL_KINDS.map((k) => [k.ch, k.name]));

/** What the square under the pointer stands for: its units and what they hold. */
function describeCell(view: CopyBitmapView, grid: { size: number; cols: number }, x: number, y: number): string {
  const col = Math.floor(x / grid.size);
  const i = Math.floor(y / grid.size) * grid.cols + col;
  if (col >= grid.cols || i < 0 || i >= view.cells.length) return '';
  const first = i * view.unitsPerCell;
  const last = Math.min(view.units, first + view.unitsPerCell) - 1;
  const what = NAME_OF[view.cells[i] ?? '.'] ?? 'nothing';
  return `${first === last ? `unit ${first}` : `units ${first}-${last}`} (bytes from ${bytes(first * view.unitBytes)}): ${what}`;
}

export function CopyBitmap(props: { sessionId: string }) {
  const refresh = useContext(RefreshContext);
  const box = useRef<HTMLDivElement>(null);
  const canvas = useRef<HTMLCanvasElement>(null);
  const [width, setWidth] = useState(0);
  const [view, setView] = useState<CopyBitmapView | null>(null);
  const [error, setError] = useState('');
  const inFlight = useRef(false);

  useLayoutEffect(() => {
    const el = box.current;
    if (!el) return undefined;
    const measure = () => setWidth(Math.floor(el.clientWidth));
    measure();
    const ro = new ResizeObserver(measure);
    ro.observe(el);
    return () => ro.disconnect();
  }, []);

  const wanted = width > 0 ? cellsFor(width) : 0;
  useEffect(() => {
    if (wanted === 0 || inFlight.current) return;
    inFlight.current = true;
    api<CopyBitmapView>(`/api/copies/${encodeURIComponent(props.sessionId)}/bitmap?cells=${wanted}`, { quiet: true })
      .then((v) => {
        setView(v);
        setError('');
      })
      // Quiet: a session that just ended has no bitmap; the list drops it on the next refresh.
      .catch((e: unknown) => setError(e instanceof Error ? e.message : String(e)))
      .finally(() => {
        inFlight.current = false;
      });
  }, [props.sessionId, wanted, refresh]);

  const grid = useRef<{ size: number; cols: number } | null>(null);
  useEffect(() => {
    if (canvas.current && view && width > 0) grid.current = draw(canvas.current, view, width);
  }, [view, width]);
  // The title follows the pointer without a re-render: set on the element itself.
  const hover = (e: MouseEvent) => {
    const c = canvas.current;
    if (!c || !view || !grid.current) return;
    const r = c.getBoundingClientRect();
    c.title = describeCell(view, grid.current, e.clientX - r.left, e.clientY - r.top);
  };

  const cells = view?.cells ?? '';
  const units = view?.units ?? 0;
  const counts = view?.counts;
  const unitCount: Record<string, number | undefined> = counts ? { C: counts.copied, P: counts.pending, T: counts.tracked, B: counts.beforeImage } : {};
  return (
    <div class="bitmap">
      <div class="bitmap-box" ref={box}>
        <canvas
          ref={canvas}
          onMouseMove={hover}
          data-testid="copy-bitmap"
          data-cells={cells.length}
          data-copied={count(cells, 'C')}
          data-pending={count(cells, 'P')}
          data-tracked={count(cells, 'T')}
          data-before-image={count(cells, 'B')}
          role="img"
          aria-label={
            view
              ? `bitmap of session ${view.id}: ${cells.length} cells, ${count(cells, 'C')} copied, ${count(cells, 'P')} pending, ${count(cells, 'T')} tracked, ${count(cells, 'B')} before-image`
              : 'bitmap loading'
          }
        />
      </div>
      <ul class="legend">
        {CELL_KINDS.map((k) => (
          <li key={k.ch} title={k.hint}>
            <span class={`swatch swatch-${k.name}`} />
            {k.name}
            {unitCount[k.ch] !== undefined ? <span class="muted"> {unitCount[k.ch]}</span> : null}
          </li>
        ))}
      </ul>
      <p class="muted small">
        {view ? `${units} units of ${bytes(view.unitBytes)}; ${view.unitsPerCell === 1 ? 'one unit' : `${view.unitsPerCell} units`} per square` : ''}
        {error ? <span class="page-error"> {error}</span> : null}
      </p>
    </div>
  );
}
