/**
 * The array's Prometheus metrics (README.md in this folder lists every series).
 *
 * Gauges are pulled: each computes its values in collect(), at scrape time, from what the
 * array already lists, so nothing is added to the I/O path. The one counter,
 * arraylab_api_calls_total, is told by the API guard as each call ends (apiCallEnded).
 * A private registry: nothing global, so two arrays in one process do not mix.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { CopyState, SessionInfo } from '../copy/CopySession.js';
import type { ConnectionInfo } from '../array/types.js';
import type { VolumeInfo } from '../../proto/views.js';
import type { CartridgeView } from '../../proto/views.js';
import { METHOD_PERMISSIONS } from '../auth/permissions.js';

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

    this.apiCalls = new Counter({
      name: 'arraylab_api_calls_total',
      help: 'Control API calls that passed the access guard, by RPC and gRPC status (not counted while api.auth is off).',
      labelNames: ['rpc', 'code'],
      registers: reg,
    });
  }

  /** A control API call ended (the guard's onCallEnded); unknown paths share one series. */
  apiCallEnded(path: string, code: string): void {
    const rpc = METHOD_PERMISSIONS.has(path) ? path.slice(path.lastIndexOf('/') + 1) : 'unknown';
    this.apiCalls.inc({ rpc, code });
  }

  /** The exposition text, and its content type. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
