/** Volumes: size, allocation, identity, which hosts see them at which LUN, and live I/O rates. */
import { useEffect, useState } from 'preact/hooks';
import { Bar, Empty, Page, useData } from './common.js';
import { bytes, percent, time } from './format.js';
import { IoChart, keepOnly, recordIo } from './ioChart.js';
import type { HostView, VolumeIoCounts, VolumesPage as VolumesData, VolumeWithIo } from './types.js';

const ZERO_IO: VolumeIoCounts = { readOps: 0, readBytes: 0, writeOps: 0, writeBytes: 0, flushOps: 0, trimOps: 0, trimBytes: 0, errors: 0 };

function mappings(hosts: HostView[], volume: string): Array<{ host: string; lun: number }> {
  const out: Array<{ host: string; lun: number }> = [];
  for (const h of hosts) for (const l of h.luns) if (l.volume === volume) out.push({ host: h.name, lun: l.lun });
  return out;
}

function Volume(props: { v: VolumeWithIo; hosts: HostView[]; version: number; metricsOn: boolean }) {
  const { v } = props;
  const maps = mappings(props.hosts, v.name);
  const limit = v.allocLimitBytes;
  return (
    <article class="volume card" data-testid="volume-row" data-volume={v.name}>
      <header class="volume-head">
        <h2>{v.name}</h2>
        <span class="tag">{v.provisioning}</span>
        <span class="tag">{v.blockSize} B blocks</span>
        {v.readOnly ? <span class="tag">read-only</span> : null}
        {v.writeCache === 'volatile' ? (
          <span class="tag tag-warn" title="acknowledged writes a power cut now would lose">
            volatile cache, {bytes(v.writeCacheDirtyBytes ?? 0)} unflushed
          </span>
        ) : null}
        <span class="muted">{v.description}</span>
      </header>
      <div class="volume-body">
        <div class="volume-facts">
          <dl>
            <dt>Size</dt>
            <dd>{bytes(v.sizeBytes)}</dd>
            <dt>Allocated</dt>
            <dd>
              <Bar
                pct={percent(v.allocatedBytes, v.sizeBytes)}
                kind={limit !== null && v.allocatedBytes >= limit ? 'warn' : 'alloc'}
                label={`${bytes(v.allocatedBytes)} (${percent(v.allocatedBytes, v.sizeBytes)} %)${limit !== null ? ` · limit ${bytes(limit)}` : ''}`}
              />
            </dd>
            <dt>WWN</dt>
            <dd class="mono">{v.wwn}</dd>
            <dt>UUID</dt>
            <dd class="mono">{v.uuid}</dd>
            <dt>Serial</dt>
            <dd class="mono">{v.serial}</dd>
            <dt>Hosts</dt>
            <dd>{maps.length === 0 ? <span class="muted">not mapped</span> : maps.map((m) => `${m.host} LUN ${m.lun}`).join(', ')}</dd>
            <dt>Created</dt>
            <dd>{time(v.createdAt)}</dd>
            {v.io ? (
              <>
                <dt>I/O so far</dt>
                <dd class="small">
                  {v.io.readOps} reads ({bytes(v.io.readBytes)}), {v.io.writeOps} writes ({bytes(v.io.writeBytes)}), {v.io.flushOps} flushes, {v.io.trimOps}{' '}
                  trims
                  {v.io.errors > 0 ? <span class="text-bad">, {v.io.errors} errors</span> : null}
                </dd>
              </>
            ) : null}
          </dl>
        </div>
        <div class="volume-chart">
          {props.metricsOn ? (
            <IoChart volume={v.name} version={props.version} />
          ) : (
            <Empty>No I/O figures: the array serves them with metrics on (serve --metrics).</Empty>
          )}
        </div>
      </div>
    </article>
  );
}

export function VolumesPage() {
  const { data, error } = useData<VolumesData>('/api/volumes');
  const [version, setVersion] = useState(0);
  useEffect(() => {
    if (!data) return;
    const now = Date.now();
    let changed = false;
    // With metrics on, a volume no host has touched yet has no counters: it is at zero.
    const metricsOn = data.volumes.some((v) => v.io !== undefined);
    for (const v of data.volumes) if (metricsOn && recordIo(v.name, v.io ?? ZERO_IO, now)) changed = true;
    keepOnly(data.volumes.map((v) => v.name));
    if (changed) setVersion((n) => n + 1);
  }, [data]);
  if (!data) return <Page id="volumes" title="Volumes" error={error} loading={!error} children={null} />;
  const total = data.volumes.reduce((n, v) => n + v.sizeBytes, 0);
  const metricsOn = data.volumes.some((v) => v.io !== undefined);
  const allocated = data.volumes.reduce((n, v) => n + v.allocatedBytes, 0);
  return (
    <Page id="volumes" title="Volumes" error={error}>
      <p class="muted">
        {data.volumes.length} volume(s), {bytes(total)} in all, {bytes(allocated)} allocated. I/O rates are bytes per second from samples taken while this page
        is open, over the last 5 minutes.
      </p>
      {data.volumes.length === 0 ? (
        <Empty>No volumes yet. Create one with: arraylab volume create NAME --size 1GiB</Empty>
      ) : (
        data.volumes.map((v) => <Volume key={v.name} v={v} hosts={data.hosts} version={version} metricsOn={metricsOn} />)
      )}
    </Page>
  );
}
