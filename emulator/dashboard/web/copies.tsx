/** Copy sessions: what copies to where, state, progress, rate and ETA, and the live bitmap picture of each. */
import { CopyBitmap } from './bitmap.js';
import { COPY_TYPE_NAMES, copyPercent, Empty, Page, StateBadge, useData } from './common.js';
import { ago, bytes, duration, time } from './format.js';
import type { CopySessionView } from './types.js';

function rateText(s: CopySessionView): string {
  if (s.rateMiBs === null) return 'unthrottled';
  if (s.rateMiBs === 0) return 'no background copy';
  return `${s.rateMiBs} MiB/s`;
}

function Session(props: { s: CopySessionView }) {
  const { s } = props;
  const pct = copyPercent(s);
  return (
    <article class="card session" data-testid="copy-session" data-session={s.id} data-state={s.state}>
      <header class="session-head">
        <h2>
          {COPY_TYPE_NAMES[s.type] ?? s.type} {s.source} → {s.destination}
        </h2>
        <StateBadge state={s.state} />
        <span class="muted small mono" title="session id">
          {s.id}
        </span>
        {s.group ? <span class="tag">group {s.group}</span> : null}
        {s.reversed ? <span class="tag">reversed</span> : null}
        {s.generationCount > 0 ? (
          <span class="tag">
            generation {s.generation} ({s.generationIndex} of {s.generationCount}, 1 = newest)
          </span>
        ) : null}
      </header>
      <div class="session-progress">
        <progress data-testid="copy-progress" data-percent={pct} max={100} value={pct} aria-label={`session ${s.id} ${pct} % copied`} />
        <span class="progress-text">
          {pct} % · {s.copiedBlocks} of {s.totalBlocks} units of {bytes(s.unitSize)} · {rateText(s)}
          {s.etaSeconds !== null ? ` · ETA ${duration(s.etaSeconds)}` : ''}
        </span>
      </div>
      <p class="muted small">
        {s.imageAt ? `point in time ${time(s.imageAt)}` : 'mirroring: the destination follows the source'} · started {ago(s.createdAt)}
      </p>
      {s.error ? (
        <p class="text-bad">
          {s.error}
          {s.retryAt ? ` (next retry ${time(s.retryAt)})` : ''}
        </p>
      ) : null}
      {s.remote ? (
        <p class="small">
          REC {s.remote.role} with <strong>{s.remote.peer}</strong>, {s.remote.mode} mode, link {s.remote.linkUp ? 'up' : <span class="text-bad">down</span>}
          {s.remote.pendingBytes > 0 ? `, ${bytes(s.remote.pendingBytes)} not yet on the remote` : ''}
          {s.remote.haltReason ? <span class="text-bad">, halted: {s.remote.haltReason}</span> : null}
          {s.remote.drainedAt ? `, remote consistent as of ${time(s.remote.drainedAt)}` : ''}
        </p>
      ) : null}
      <CopyBitmap sessionId={s.id} />
    </article>
  );
}

export function CopiesPage() {
  const { data, error } = useData<{ copies: CopySessionView[] }>('/api/copies');
  if (!data) return <Page id="copies" title="Copy sessions" error={error} loading={!error} children={null} />;
  return (
    <Page id="copies" title="Copy sessions" error={error}>
      {data.copies.length === 0 ? (
        <Empty>No copy sessions. Start one with: arraylab copy start --type opc --src SOURCE --dst DEST</Empty>
      ) : (
        data.copies.map((s) => <Session key={s.id} s={s} />)
      )}
    </Page>
  );
}
