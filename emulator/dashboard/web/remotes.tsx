/** Other arrays this one knows, for remote copy (REC): reachable or not, sessions, the REC buffer. */
import { Empty, Page, useData } from './common.js';
import { bytes, time } from './format.js';
import type { RemoteView } from './types.js';

export function RemotesPage() {
  const { data, error } = useData<{ remotes: RemoteView[] }>('/api/remotes');
  if (!data) return <Page id="remotes" title="Remote arrays" error={error} loading={!error} children={null} />;
  return (
    <Page id="remotes" title="Remote arrays" error={error}>
      {data.remotes.length === 0 ? (
        <Empty>No remote arrays. Register one with: arraylab remote add NAME --api HOST:PORT</Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Remote</th>
              <th>Control API</th>
              <th>Array ID</th>
              <th>Link</th>
              <th class="num">Sessions</th>
              <th class="num">REC buffer</th>
              <th>Added</th>
            </tr>
          </thead>
          <tbody>
            {data.remotes.map((r) => (
              <tr key={r.name} data-testid="remote-row" data-remote={r.name}>
                <td>
                  <strong>{r.name}</strong>
                  {r.version ? <div class="small muted">v{r.version}</div> : null}
                </td>
                <td class="mono">{r.api}</td>
                <td class="mono">{r.arrayId || '-'}</td>
                <td>
                  {r.reachable ? <span class="badge badge-good">reachable</span> : <span class="badge badge-bad">unreachable</span>}
                  {r.error ? <div class="small text-bad">{r.error}</div> : null}
                </td>
                <td class="num">{r.sessionCount}</td>
                <td class="num">{r.buffer.bytes > 0 ? bytes(r.buffer.bytes) : '-'}</td>
                <td class="small">{time(r.addedAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Page>
  );
}
