/** The array at a glance: capacity, volumes, exports with their clients, copy sessions by state, recent events. */
import { Bar, COPY_TYPE_NAMES, copyPercent, Empty, Page, StateBadge, useData } from './common.js';
import { bytes, duration, percent, time } from './format.js';
import type { Overview } from './types.js';

export function OverviewPage() {
  const { data, error } = useData<Overview>('/api/overview');
  if (!data) return <Page id="overview" title="Overview" error={error} loading={!error} children={null} />;
  const { status, volumes, exports, copies, faults, events } = data;
  const allocated = volumes.reduce((n, v) => n + v.allocatedBytes, 0);
  const total = volumes.reduce((n, v) => n + v.sizeBytes, 0);
  const byState = new Map<string, number>();
  for (const c of copies) byState.set(c.state, (byState.get(c.state) ?? 0) + 1);
  const clients = exports.reduce((n, e) => n + e.connections.length, 0);
  return (
    <Page id="overview" title="Overview" error={error}>
      <div class="cards">
        <div class="card" data-testid="overview-capacity">
          <h2>Capacity</h2>
          <p class="big">
            {bytes(status.allocatedBytes || allocated)} <span class="muted of">of {bytes(status.totalBytes || total)}</span>
          </p>
          <Bar
            pct={percent(status.allocatedBytes || allocated, status.totalBytes || total)}
            label={`${percent(status.allocatedBytes || allocated, status.totalBytes || total)} % allocated`}
          />
          <p class="muted">
            {status.volumeCount} volume{status.volumeCount === 1 ? '' : 's'} · {status.backend} backend · up {duration(status.uptimeSeconds)} · array{' '}
            {status.arrayId} · v{status.version}
          </p>
        </div>
        <div class="card">
          <h2>Clients</h2>
          <p class="big">{clients}</p>
          <p class="muted">
            connection{clients === 1 ? '' : 's'} on {exports.filter((e) => e.connections.length > 0).length} export(s); {status.iscsiSessionCount} iSCSI
            session(s)
          </p>
        </div>
        <div class="card">
          <h2>Copy sessions</h2>
          <p class="big">{copies.length}</p>
          <ul class="state-counts">
            {[...byState.entries()].map(([state, n]) => (
              <li key={state}>
                <StateBadge state={state} /> {n}
              </li>
            ))}
          </ul>
        </div>
        <div class="card">
          <h2>Faults</h2>
          <p class={`big ${faults.length > 0 ? 'text-bad' : ''}`}>{faults.length}</p>
          <p class="muted">{faults.length === 0 ? 'none set' : faults.map((f) => `${f.kind} on ${f.target}`).join('; ')}</p>
        </div>
      </div>

      <div class="columns">
        <div>
          <h2>Volumes</h2>
          {volumes.length === 0 ? (
            <Empty>No volumes yet. Create one with: arraylab volume create NAME --size 1GiB</Empty>
          ) : (
            <table>
              <thead>
                <tr>
                  <th>Volume</th>
                  <th class="num">Size</th>
                  <th class="wide">Allocated</th>
                  <th class="num">Clients</th>
                </tr>
              </thead>
              <tbody>
                {volumes.map((v) => {
                  const ex = exports.find((e) => e.name === v.name);
                  const limit = v.allocLimitBytes ?? v.sizeBytes;
                  return (
                    <tr key={v.name} data-testid="volume-row" data-volume={v.name}>
                      <td>
                        <strong>{v.name}</strong>
                        {v.readOnly ? <span class="tag">read-only</span> : null}
                      </td>
                      <td class="num">{bytes(v.sizeBytes)}</td>
                      <td>
                        <Bar pct={percent(v.allocatedBytes, v.sizeBytes)} kind={v.allocatedBytes >= limit ? 'warn' : 'alloc'} label={bytes(v.allocatedBytes)} />
                      </td>
                      <td class="num" title={ex?.connections.map((c) => `${c.protocol} ${c.remoteAddress} ${c.initiator}`).join('\n')}>
                        {ex ? ex.connections.length : '-'}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          )}

          <h2>Copy sessions</h2>
          {copies.length === 0 ? (
            <Empty>No copy sessions. Start one with: arraylab copy start --type opc --src SOURCE --dst DEST</Empty>
          ) : (
            <table>
              <thead>
                <tr>
                  <th>Session</th>
                  <th>Type</th>
                  <th>Source → destination</th>
                  <th>State</th>
                  <th class="wide">Progress</th>
                </tr>
              </thead>
              <tbody>
                {copies.map((c) => (
                  <tr key={c.id} data-testid="copy-session" data-session={c.id} data-state={c.state}>
                    <td>
                      <a href="#/copies" class="mono" title={c.id}>
                        {c.id.length > 12 ? `${c.id.slice(0, 8)}…` : c.id}
                      </a>
                    </td>
                    <td>{COPY_TYPE_NAMES[c.type] ?? c.type}</td>
                    <td>
                      {c.source} → {c.destination}
                    </td>
                    <td>
                      <StateBadge state={c.state} />
                    </td>
                    <td>
                      <Bar pct={copyPercent(c)} kind="progress" label={`${copyPercent(c)} %`} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </div>

        <div>
          <h2>Exports</h2>
          {exports.length === 0 ? (
            <Empty>No exports.</Empty>
          ) : (
            <ul class="exports">
              {exports.map((e) => (
                <li key={e.name}>
                  <strong>{e.name}</strong> <span class="muted">{e.connections.length === 0 ? 'no clients' : `${e.connections.length} client(s)`}</span>
                  {e.connections.length > 0 ? (
                    <ul>
                      {e.connections.map((c) => (
                        <li key={c.connectionId} class="small">
                          {c.protocol.toUpperCase()} {c.remoteAddress}
                          {c.initiator ? ` ${c.initiator}` : ''}
                          {c.readOnly ? ' (read-only)' : ''}
                        </li>
                      ))}
                    </ul>
                  ) : null}
                </li>
              ))}
            </ul>
          )}

          <h2>Recent events</h2>
          <div data-testid="overview-events" class="events">
            {events.length === 0 ? (
              <Empty>No events yet (events need api.events on).</Empty>
            ) : (
              <ol>
                {[...events]
                  .sort((a, b) => b.seq - a.seq)
                  .slice(0, 50)
                  .map((e) => (
                    <li key={e.seq} data-testid="event-row" data-kind={e.kind}>
                      <span class="muted small">{time(e.at)}</span> <span class="event-kind">{e.kind}</span> {e.message}
                    </li>
                  ))}
              </ol>
            )}
          </div>
        </div>
      </div>
    </Page>
  );
}
