/** The virtual tape library: cartridges, how full, how many records. */
import { Bar, Empty, Page, useData } from './common.js';
import { bytes, percent, time } from './format.js';
import type { CartridgeView } from './types.js';

export function TapePage() {
  const { data, error } = useData<{ cartridges: CartridgeView[] }>('/api/tape');
  if (!data) return <Page id="tape" title="Tape library" error={error} loading={!error} children={null} />;
  return (
    <Page id="tape" title="Tape library" error={error}>
      {data.cartridges.length === 0 ? (
        <Empty>No cartridges. Add one with: arraylab tape add T0001 --capacity 10GiB.</Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Cartridge</th>
              <th class="wide">Used</th>
              <th class="num">Capacity</th>
              <th class="num">Records</th>
              <th>Created</th>
            </tr>
          </thead>
          <tbody>
            {data.cartridges.map((c) => (
              <tr key={c.label} data-testid="cartridge-row" data-cartridge={c.label}>
                <td>
                  <strong>{c.label}</strong>
                </td>
                <td>
                  <Bar pct={percent(c.usedBytes, c.capacityBytes)} label={`${bytes(c.usedBytes)} (${percent(c.usedBytes, c.capacityBytes)} %)`} />
                </td>
                <td class="num">{bytes(c.capacityBytes)}</td>
                <td class="num">{c.recordCount}</td>
                <td class="small">{time(c.createdAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Page>
  );
}
