/**
 * A volume's read and write rates (bytes per second) over the last five minutes, as a uPlot line
 * chart. The server gives monotonically increasing counters; the rates are the differences between
 * successive samples, kept here in memory per volume while the dashboard is open (a reload starts
 * the picture again; Prometheus /metrics is the place for history).
 */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import { rate } from './format.js';
import type { VolumeIoCounts } from './types.js';

const WINDOW_SECONDS = 300;

interface Series {
  t: number[];
  read: number[];
  write: number[];
  last?: { t: number; readBytes: number; writeBytes: number };
}

const samples = new Map<string, Series>();

/** Adds a sample of a volume's counters at time now (ms); returns whether a new rate point was made. */
export function recordIo(volume: string, io: VolumeIoCounts, now = Date.now()): boolean {
  let s = samples.get(volume);
  if (!s) samples.set(volume, (s = { t: [], read: [], write: [] }));
  const t = now / 1000;
  const prev = s.last;
  // Samples closer than half a second apart make noisy rates: keep the earlier one as the base.
  if (prev && t - prev.t < 0.5) return false;
  s.last = { t, readBytes: io.readBytes, writeBytes: io.writeBytes };
  if (!prev) return false;
  if (io.readBytes < prev.readBytes || io.writeBytes < prev.writeBytes) {
    // The counters went back: the array restarted. The old points describe another run.
    s.t.length = s.read.length = s.write.length = 0;
    return false;
  }
  const dt = t - prev.t;
  s.t.push(t);
  s.read.push((io.readBytes - prev.readBytes) / dt);
  s.write.push((io.writeBytes - prev.writeBytes) / dt);
  let drop = 0;
  while (drop < s.t.length && (s.t[drop] ?? 0) < t - WINDOW_SECONDS) drop++;
  if (drop > 0) {
    s.t.splice(0, drop);
    s.read.splice(0, drop);
    s.write.splice(0, drop);
  }
  return true;
}

/** Forgets volumes no longer listed (deleted), so the map stays bounded. */
export function keepOnly(volumes: Iterable<string>): void {
  const keep = new Set(volumes);
  for (const v of samples.keys()) if (!keep.has(v)) samples.delete(v);
}

function cssVar(el: Element, name: string, fallback: string): string {
  return getComputedStyle(el).getPropertyValue(name).trim() || fallback;
}

function data(volume: string): uPlot.AlignedData {
  const s = samples.get(volume);
  return s ? [s.t, s.read, s.write] : [[], [], []];
}

const HEIGHT = 160;

// Ends at now, not at uPlot's max: with a single sample uPlot pads max by a day's worth of
// seconds, which would squash the one point against the left edge.
function xRange(min: number | null): uPlot.Range.MinMax {
  const now = Date.now() / 1000;
  return [Math.min(min ?? now, now - 60), now];
}

/** version: bumped by the caller when new samples came in, to redraw. */
export function IoChart(props: { volume: string; version: number }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const el = box.current;
    if (!el) return undefined;
    const fg = cssVar(el, '--fg', '#111');
    const grid = cssVar(el, '--grid', '#ccc');
    const axis: uPlot.Axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: '13px system-ui, sans-serif' };
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: HEIGHT,
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      // At least a minute across, so the first samples do not fill the width with sub-second ticks.
      scales: { x: { time: true, range: (_u, min) => xRange(min) }, y: { range: (_u, _min, max) => [0, Math.max(1024, max * 1.1)] } },
      axes: [axis, { ...axis, size: 90, values: (_u, vals) => vals.map((v) => rate(v)) }],
      series: [
        {},
        { label: 'read', stroke: cssVar(el, '--io-read', '#1f77b4'), width: 2, value: (_u, v) => (v == null ? '-' : rate(v)) },
        { label: 'write', stroke: cssVar(el, '--io-write', '#d62728'), width: 2, value: (_u, v) => (v == null ? '-' : rate(v)) },
      ],
    };
    const u = new uPlot(opts, data(props.volume), el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height: HEIGHT }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [props.volume]);

  useEffect(() => {
    plot.current?.setData(data(props.volume));
  }, [props.volume, props.version]);

  return <div class="io-chart" ref={box} data-testid="volume-io-chart" data-volume={props.volume} />;
}
