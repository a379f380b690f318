/**
 * The array's event stream: what happened to volumes, clients, copy sessions, hosts, tape and
 * faults, in order, with a sequence number. A bounded in-memory ring, so a late subscriber (the
 * CLI, a dashboard) gets the recent history and memory stays fixed however long the array runs.
 * On unless api.events is off (or serve --events off): the array calls add() only when it was
 * given a log.
 */

/** What an event is about; a tenant's user sees only events about its own objects. */
export type SubjectKind = 'volume' | 'session' | 'host' | 'cartridge' | 'fault' | 'array';

export interface ArrayEvent {
  /** Increases by one per event, from 1 at the array's start. */
  seq: number;
  /** ISO 8601, UTC. */
  at: string;
  /** e.g. volume.created, client.connected, copy.state, host.mapped, tape.write, fault.added. */
  kind: string;
  subject: { kind: SubjectKind; name: string };
  message: string;
  /** Details as strings (names, sizes, states), for --json and filters. */
  fields: Record<string, string>;
  /** Other volumes the event concerns (a copy's source and destination, a mapped volume). */
  volumes?: string[];
}

export type NewEvent = Omit<ArrayEvent, 'seq' | 'at' | 'fields'> & { fields?: Record<string, unknown> };

export const DEFAULT_EVENT_HISTORY = 1000;

export class EventLog {
  private readonly ring: ArrayEvent[] = [];
  private readonly listeners = new Set<(e: ArrayEvent) => void>();
  private seq = 0;

  constructor(
    readonly capacity = DEFAULT_EVENT_HISTORY,
    private readonly now: () => number = Date.now,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new Error(`event history ${capacity} is not a positive whole number of events`);
  }

  /** Records an event and tells the subscribers. A listener that throws is dropped, not the caller's operation. */
  add(e: NewEvent): ArrayEvent {
    const fields: Record<string, string> = {};
    for (const [k, v] of Object.entries(e.fields ?? {})) if (v !== undefined && v !== null) fields[k] = String(v);
    const event: ArrayEvent = { ...e, seq: ++this.seq, at: new Date(this.now()).toISOString(), fields };
    this.ring.push(event);
    if (this.ring.length > this.capacity) this.ring.shift();
    for (const l of [...this.listeners]) {
      try {
        l(event);
      } catch {
        this.listeners.delete(l);
      }
    }
    return event;
  }

  /** The events kept, oldest first: after sinceSeq, at or after sinceTime (ms), of these kinds (prefixes: "copy" matches copy.state). */
  list(filter: EventFilter = {}): ArrayEvent[] {
    return this.ring.filter((e) => matches(e, filter));
  }

  subscribe(listener: (e: ArrayEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get lastSeq(): number {
    return this.seq;
  }
}

export interface EventFilter {
  sinceSeq?: number;
  sinceTime?: number;
  kinds?: string[];
}

export function matches(e: ArrayEvent, f: EventFilter): boolean {
  if (f.sinceSeq !== undefined && e.seq <= f.sinceSeq) return false;
  if (f.sinceTime !== undefined && Date.parse(e.at) < f.sinceTime) return false;
  if (f.kinds !== undefined && f.kinds.length > 0 && !f.kinds.some((k) => e.kind === k || e.kind.startsWith(`${k}.`))) return false;
  return true;
}
