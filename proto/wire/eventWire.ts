/** The array's events (EventService) as the client sees them. */
import type * as pb from '../gen/index.js';
import type { ArrayEventView } from '../views.js';

/** Which events: after a sequence number, since a time, of some kinds (a prefix matches: "copy"). */
export interface EventQuery {
  sinceSeq?: number;
  sinceTime?: Date;
  kinds?: string[];
}

export function eventQueryToWire(q: EventQuery): { sinceSeq: number; sinceTime: string; kinds: string[] } {
  return { sinceSeq: q.sinceSeq ?? 0, sinceTime: q.sinceTime?.toISOString() ?? '', kinds: q.kinds ?? [] };
}

export function eventFromWire(e: pb.ArrayEvent__Output): ArrayEventView {
  return {
    seq: Number(e.seq),
    at: e.at,
    kind: e.kind,
    subject: { kind: e.subjectKind, name: e.subjectName },
    message: e.message,
    fields: { ...(e.fields ?? {}) },
  };
}
