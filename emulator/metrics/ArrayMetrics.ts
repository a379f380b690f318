/**
 * The array's Prometheus metrics (README.md in this folder lists every series).
 *
 * Gauges are pulled: each computes its values in collect(), at scrape time, from what the
 * array already lists. The I/O counters and latency histograms are pulled too, from
 * VolumeIoStats (plain numbers the I/O path adds to), and fault injections from the fault
 * engine's counts: no prom-client call happens per I/O. arraylab_api_calls_total is told by the
 * API (its guard, or with api.auth off its call counter) as each call ends (apiCallEnded).
 * A private registry: nothing global, so two arrays in one process do not mix.
 */
import { Counter, Gauge, type Metric, Registry } from 'prom-client';
import type { CopyState, SessionInfo } from '../copy/CopySession.js';
import type { ConnectionInfo } from '../array/types.js';
import type { VolumeInfo } from '../../proto/views.js';
import type { CartridgeView } from '../../proto/views.js';
import { METHOD_PERMISSIONS } from '../auth/permissions.js';
import { FAULT_KINDS } from '../fault/kinds.js';
import type { VolumeIoCounts } from '../../proto/views.js';
import { IO_OPERATIONS, IO_PROTOCOLS, LATENCY_BUCKETS, type VolumeIoStats } from './VolumeIo.js';

/** Every copy state, so that each session has one 0/1 series per state (not a numeric enum). */
export const COPY_STATES = ['copying', 'equivalent', 'suspended', 'tracking', 'snap', 'split', 'error-suspended', 'halt'] as const;
// A state added to CopyState and not here fails to compile.
type MissingState = Exclude<CopyState, (typeof COPY_STATES)[number]>;
const allStates: MissingState extends never ? true : never = true;
void allStates;

const PROTOCOLS = ['nbd', 'iscsi'] as const;

/** What the metrics read; functions, so the array, tape library and faults are read at scrape. */
export interface MetricsSources {
  volumes(): VolumeInfo[];
  connections(): ConnectionInfo[];
  copies(): SessionInfo[];
  cartridges(): CartridgeView[];
  faults(): unknown[];
  /** Injections so far by fault kind (FaultEngine.injections). */
  faultInjections?(): ReadonlyMap<string, number>;
  /** Host I/O counters and latencies; absent: no I/O series (unit tests of the gauges). */
  io?: VolumeIoStats;
  /** Per-volume series (size, allocation, clients per export); off for thousands of volumes. */
  perVolume: boolean;
  now?: () => number;
}

export class ArrayMetrics {
  readonly registry = new Registry();
  private readonly apiCalls: Counter<'rpc' | 'code'>;

  constructor(src: MetricsSources) {
    const reg = [this.registry];
    const now = src.now ?? Date.now;

    // Always: counts that stay small however many volumes there are.
    new Gauge({
      name: 'arraylab_volumes',
      help: 'Volumes on the array.',
      registers: reg,
      collect() {
        this.set(src.volumes().length);
      },
    });
    new Gauge({
      name: 'arraylab_clients',
      help: 'Connected NBD clients and iSCSI sessions with a volume open, by protocol.',
      labelNames: ['protocol'],
      registers: reg,
      collect() {
        const conns = src.connections();
        for (const p of PROTOCOLS) this.set({ protocol: p }, conns.filter((c) => c.client.protocol === p).length);
      },
    });

    if (src.perVolume) {
      // One scrape lists the volumes once for the three gauges of a volume.
      let volumes: VolumeInfo[] = [];
      const perVolume = (name: string, help: string, value: (v: VolumeInfo) => number | null) =>
        new Gauge({
          name,
          help,
          labelNames: ['volume'],
          registers: reg,
          collect() {
            this.reset(); // a deleted volume's series goes
            for (const v of volumes) {
              const x = value(v);
              if (x !== null) this.set({ volume: v.name }, x);
            }
          },
        });
      new Gauge({
        name: 'arraylab_volume_size_bytes',
        help: 'Logical size of the volume.',
        labelNames: ['volume'],
        registers: reg,
        collect() {
          volumes = src.volumes();
          this.reset();
          for (const v of volumes) this.set({ volume: v.name }, v.sizeBytes);
        },
      });
      const io = src.io;
      if (io !== undefined) {
        const ioCounter = (name: string, help: string, field: keyof VolumeIoCounts) =>
          new Counter({
            name,
            help,
            labelNames: ['volume'],
            registers: reg,
            collect() {
              this.reset(); // a deleted volume's series goes
              for (const v of volumes) this.inc({ volume: v.name }, io.live(v.name)?.[field] ?? 0);
            },
          });
        ioCounter('arraylab_volume_read_ops_total', 'Host reads completed (NBD and iSCSI).', 'readOps');
        ioCounter('arraylab_volume_read_bytes_total', 'Bytes read by hosts.', 'readBytes');
        ioCounter('arraylab_volume_write_ops_total', 'Host writes completed, write-zeroes included.', 'writeOps');
        ioCounter('arraylab_volume_write_bytes_total', 'Bytes written by hosts, write-zeroes included.', 'writeBytes');
        ioCounter('arraylab_volume_flush_ops_total', 'Host flushes (NBD FLUSH, SCSI SYNCHRONIZE CACHE) completed.', 'flushOps');
        ioCounter('arraylab_volume_trim_ops_total', 'Host trims (NBD TRIM, SCSI UNMAP) completed.', 'trimOps');
        ioCounter('arraylab_volume_trim_bytes_total', 'Bytes trimmed by hosts.', 'trimBytes');
        ioCounter('arraylab_volume_io_errors_total', 'Host operations that failed (faults, reservations, read-only, I/O errors).', 'errors');
      }
      perVolume('arraylab_volume_allocated_bytes', 'Bytes of the volume that hold data (allocated).', (v) => v.allocatedBytes);
      perVolume(
        'arraylab_volume_alloc_limit_bytes',
        'Thin volume: the most bytes that may be allocated; absent when there is no limit.',
        (v) => v.allocLimitBytes,
      );
      new Gauge({
        name: 'arraylab_export_clients',
        help: 'Clients with the volume open, by protocol.',
        labelNames: ['volume', 'protocol'],
        registers: reg,
        collect() {
          this.reset();
          const count = new Map<string, number>();
          for (const c of src.connections()) count.set(`${c.volume}\0${c.client.protocol}`, (count.get(`${c.volume}\0${c.client.protocol}`) ?? 0) + 1);
          for (const v of volumes) for (const p of PROTOCOLS) this.set({ volume: v.name, protocol: p }, count.get(`${v.name}\0${p}`) ?? 0);
        },
      });
    }

    // Copy sessions: listed once per scrape by the state gauge (registered first, collected first).
    let sessions: SessionInfo[] = [];
    const sessionLabels = ['session', 'type', 'source', 'destination'] as const;
    const labelsOf = (s: SessionInfo) => ({ session: s.id, type: s.type, source: s.source, destination: s.destination });
    new Gauge({
      name: 'arraylab_copy_session_state',
      help: 'Copy session state: 1 for the state the session is in, 0 for the others.',
      labelNames: [...sessionLabels, 'state'],
      registers: reg,
      collect() {
        sessions = src.copies();
        this.reset();
        for (const s of sessions) for (const st of COPY_STATES) this.set({ ...labelsOf(s), state: st }, s.state === st ? 1 : 0);
      },
    });
    const perSession = (name: string, help: string, value: (s: SessionInfo) => number | undefined) =>
      new Gauge({
        name,
        help,
        labelNames: [...sessionLabels],
        registers: reg,
        collect() {
          this.reset();
          for (const s of sessions) {
            const x = value(s);
            if (x !== undefined) this.set(labelsOf(s), x);
          }
        },
      });
    perSession('arraylab_copy_session_copied_units', 'Copy units already copied (or equal).', (s) => s.copiedBlocks);
    perSession('arraylab_copy_session_total_units', 'Copy units of the session.', (s) => s.totalBlocks);
    perSession('arraylab_copy_session_unit_bytes', 'Bytes per copy unit.', (s) => s.unitSize);
    perSession('arraylab_copy_session_rate_bytes_per_second', 'Background copy rate limit; 0: no background copy, +Inf: unthrottled.', (s) => s.rate);
    perSession('arraylab_copy_session_rec_pending_bytes', 'REC source: bytes to send before the remote holds every write.', (s) =>
      s.remote?.role === 'source' ? s.remote.pendingBytes : undefined,
    );
    perSession('arraylab_copy_session_rec_rpo_seconds', 'REC asynchronous modes: seconds since the newest instant the remote holds every write of.', (s) => {
      const at = s.remote?.drainedAt;
      if (at === undefined) return undefined;
      const t = Date.parse(at);
      return Number.isNaN(t) ? undefined : Math.max(0, (now() - t) / 1000);
    });

    // Tape: one listing per scrape.
    let carts: CartridgeView[] = [];
    new Gauge({
      name: 'arraylab_tape_cartridges',
      help: 'Cartridges in the tape library.',
      registers: reg,
      collect() {
        carts = src.cartridges();
        this.set(carts.length);
      },
    });
    new Gauge({
      name: 'arraylab_tape_records',
      help: 'Backup records on all cartridges.',
      registers: reg,
      collect() {
        this.set(carts.reduce((n, c) => n + c.recordCount, 0));
      },
    });
    new Gauge({
      name: 'arraylab_tape_bytes',
      help: 'Bytes used on all cartridges.',
      registers: reg,
      collect() {
        this.set(carts.reduce((n, c) => n + c.usedBytes, 0));
      },
    });
    new Gauge({
      name: 'arraylab_faults_active',
      help: 'Faults set (arraylab fault list).',
      registers: reg,
      collect() {
        this.set(src.faults().length);
      },
    });
    const injections = src.faultInjections;
    if (injections !== undefined) {
      new Counter({
        name: 'arraylab_fault_injections_total',
        help: 'Times a fault acted (an error returned, a delay, a dropped connection...), by fault kind.',
        labelNames: ['kind'],
        registers: reg,
        collect() {
          const counts = injections();
          this.reset();
          for (const kind of FAULT_KINDS) this.inc({ kind }, counts.get(kind) ?? 0);
        },
      });
    }
    if (src.io !== undefined) this.registry.registerMetric(latencyHistogram(src.io) as unknown as Metric);

    this.apiCalls = new Counter({
      name: 'arraylab_api_calls_total',
      help: 'Control API calls by RPC and gRPC status (refusals of the access guard included).',
      labelNames: ['rpc', 'code'],
      registers: reg,
    });
  }

  /** A control API call ended (the API's onCallEnded); unknown paths share one series. */
  apiCallEnded(path: string, code: string): void {
    const rpc = METHOD_PERMISSIONS.has(path) ? path.slice(path.lastIndexOf('/') + 1) : 'unknown';
    this.apiCalls.inc({ rpc, code });
  }

  /** The exposition text, and its content type. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/**
 * arraylab_io_latency_seconds{protocol, operation}: a histogram whose buckets VolumeIoStats
 * keeps, exposed through prom-client's registry as a metric of our own (prom-client's Histogram
 * cannot take bucket counts from elsewhere, and observing into it per I/O is what we avoid).
 * Every protocol and operation is always served, zeros included.
 */
function latencyHistogram(io: VolumeIoStats) {
  const name = 'arraylab_io_latency_seconds';
  const help = 'Host I/O latency, from the array receiving an operation to its completion, by protocol and operation.';
  const bounds = LATENCY_BUCKETS.map(String);
  return {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    labelNames: ['protocol', 'operation'],
    reset(): void {
      // The counts are the array's, since it started; a registry reset does not clear them.
    },
    async get() {
      const values: Array<{ metricName: string; labels: Record<string, string | number>; value: number }> = [];
      for (const protocol of IO_PROTOCOLS)
        for (const operation of IO_OPERATIONS) {
          const h = io.latency[protocol][operation];
          let acc = 0;
          for (let i = 0; i < bounds.length; i++) {
            acc += h.counts[i]!;
            values.push({ metricName: `${name}_bucket`, labels: { protocol, operation, le: bounds[i]! }, value: acc });
          }
          values.push({ metricName: `${name}_bucket`, labels: { protocol, operation, le: '+Inf' }, value: h.count });
          values.push({ metricName: `${name}_sum`, labels: { protocol, operation }, value: h.sum });
          values.push({ metricName: `${name}_count`, labels: { protocol, operation }, value: h.count });
        }
      return { name, help, type: 'histogram', aggregator: 'sum', values };
    },
  };
}
