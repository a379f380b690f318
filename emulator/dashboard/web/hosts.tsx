/** Hosts: their initiators, LUN maps and logged-in iSCSI sessions. */
import { Empty, Page, useData } from './common.js';
import { time } from './format.js';
import type { HostView } from './types.js';

export function HostsPage() {
  const { data, error } = useData<{ hosts: HostView[] }>('/api/hosts');
  if (!data) return <Page id="hosts" title="Hosts" error={error} loading={!error} children={null} />;
  return (
    <Page id="hosts" title="Hosts" error={error}>
      {data.hosts.length === 0 ? (
        <Empty>No hosts. Add one with: arraylab host add NAME --initiator IQN, then map volumes with arraylab host map NAME VOLUME.</Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Host</th>
              <th>Initiators</th>
              <th>LUN map</th>
              <th>Sessions</th>
              <th>Created</th>
            </tr>
          </thead>
          <tbody>
            {data.hosts.map((h) => (
              <tr key={h.name} data-testid="host-row" data-host={h.name}>
                <td>
                  <strong>{h.name}</strong>
                  {h.credentials.chapUser ? <div class="small muted">CHAP {h.credentials.chapUser}</div> : null}
                  {h.credentials.nbdPskIdentity ? <div class="small muted">NBD PSK {h.credentials.nbdPskIdentity}</div> : null}
                </td>
                <td class="mono small">{h.initiators.length === 0 ? <span class="muted">none</span> : h.initiators.map((i) => <div key={i}>{i}</div>)}</td>
                <td>
                  {h.luns.length === 0 ? (
                    <span class="muted">nothing mapped</span>
                  ) : (
                    h.luns.map((l) => (
                      <div key={l.lun}>
                        LUN {l.lun} → <strong>{l.volume}</strong>
                      </div>
                    ))
                  )}
                </td>
                <td>
                  {h.sessions.length === 0 ? (
                    <span class="muted">not logged in</span>
                  ) : (
                    h.sessions.map((s) => (
                      <div key={`${s.initiatorName}/${s.isid}`} class="small">
                        {s.initiatorName} from {s.remoteAddresses.join(', ')} ({s.connections} conn.)
                      </div>
                    ))
                  )}
                </td>
                <td class="small">{time(h.createdAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Page>
  );
}
