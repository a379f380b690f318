/** `arraylab events`: what happened on the array (volumes, clients, copy sessions, hosts, tape, faults), oldest first. */
import type { Argv } from 'yargs';
import { print } from '../../proto/util/table.js';
import type { ArrayEventView } from '../../proto/views.js';
import type { EventQuery } from '../../proto/wire/eventWire.js';
import { withApiOption, withClient } from './client.js';
import { UsageError } from './errors.js';
import { parseDuration } from './user.js';

export function eventsOptions(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .option('follow', { alias: 'f', type: 'boolean', default: false, describe: 'after the kept events, print new ones until interrupted' })
    .option('since', {
      type: 'string',
      requiresArg: true,
      describe: 'after this sequence number (e.g. 120), from this instant (RFC 3339) or this long ago (e.g. 1h)',
    })
    .option('kind', {
      type: 'string',
      array: true,
      requiresArg: true,
      describe: 'only events of this kind or family (volume, client, copy, host, tape, fault, agent, or e.g. copy.state); repeatable',
    });
}

/** --since: a plain whole number is a sequence number; a number with a unit a duration; else an instant. */
export function parseSince(s: string | undefined, now = Date.now()): Pick<EventQuery, 'sinceSeq' | 'sinceTime'> {
  if (s === undefined) return {};
  if (/^\d+$/.test(s)) return { sinceSeq: Number(s) };
  if (/^\d+(\.\d+)?\s*[smhd]$/.test(s)) return { sinceTime: new Date(now - parseDuration(s, '--since', 'events') * 1000) };
  if (!Number.isNaN(Date.parse(s))) return { sinceTime: new Date(s) };
  throw new UsageError(`--since: ${JSON.stringify(s)} is neither a sequence number (120), a duration (1h) nor an instant (2026-12-06T10:00:00Z)`, 'events');
}

export function eventLine(e: ArrayEventView): string {
  return `${e.seq} ${e.at} ${e.kind} ${e.subject.kind}:${e.subject.name} ${e.message}`;
}

export async function eventsCommand(a: {
  api?: string | undefined;
  follow: boolean;
  since?: string | undefined;
  kind?: string[] | undefined;
  json: boolean;
  'token-file'?: string | undefined;
}): Promise<void> {
  const query: EventQuery & { follow: boolean } = { ...parseSince(a.since), kinds: a.kind ?? [], follow: a.follow };
  await withClient(a, async (client) => {
    let printed = 0;
    const w = client.watchEvents(query, (e) => {
      printed++;
      print(a.json ? JSON.stringify(e) : eventLine(e));
    });
    if (a.follow) {
      const stop = (): void => w.cancel();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    }
    await w.done;
    if (printed === 0 && !a.json && !a.follow) print('no events match');
  });
}
