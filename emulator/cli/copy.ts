/** `arraylab copy start|list|show|bitmap|suspend|resume|reverse|split|restore|cancel|rate|mode|watch`. */
import type { Argv } from 'yargs';
import type { CopyBitmapView, CopyEventView, CopySessionView } from '../../proto/views.js';
import { withApiOption, withClient } from './client.js';
import { UsageError } from './errors.js';
import { keyValues, print, printJson, table, yesNo } from '../../proto/util/table.js';

const TYPES = ['opc', 'quickopc', 'snapopcplus', 'ec', 'rec', 'ropc'] as const;
const TYPE_NAMES: Record<string, string> = { opc: 'OPC', quickopc: 'QuickOPC', snapopcplus: 'SnapOPC+', ec: 'EC', rec: 'REC', ropc: 'ROPC' };
const REC_MODES = ['sync', 'stack', 'consistency', 'through'] as const;

function parseRate(text: unknown, command: string): number | undefined {
  if (text === undefined) return undefined;
  const s = String(text)
    .trim()
    .replace(/\s*MiB\/s$/i, '');
  if (/^unthrottled$/i.test(s)) return undefined;
  const n = Number(s);
  if (s === '' || !Number.isFinite(n) || n < 0) {
    throw new UsageError(`--rate: ${JSON.stringify(String(text))} is not a rate; give MiB/s as a number (0 = no background copy) or "unthrottled"`, command);
  }
  return n;
}

export function formatRate(s: CopySessionView): string {
  if (s.rateMiBs === null) return 'unthrottled';
  if (s.rateMiBs === 0) return 'none';
  return `${s.rateMiBs} MiB/s`;
}

function formatEta(s: CopySessionView): string {
  if (s.etaSeconds === null) return '-';
  const t = Math.ceil(s.etaSeconds);
  if (t < 60) return `${t}s`;
  if (t < 3600) return `${Math.floor(t / 60)}m${String(t % 60).padStart(2, '0')}s`;
  return `${Math.floor(t / 3600)}h${String(Math.floor((t % 3600) / 60)).padStart(2, '0')}m`;
}

function percent(s: CopySessionView): string {
  return s.totalBlocks === 0 ? '100%' : `${Math.floor((100 * s.copiedBlocks) / s.totalBlocks)}%`;
}

function progress(s: CopySessionView): string {
  return `${s.copiedBlocks}/${s.totalBlocks} (${percent(s)})`;
}

/** The session table, then one line per session whose copy is failing (its error and next retry). */
function copyTable(sessions: CopySessionView[]): string {
  const errors = sessions.filter((s) => s.error).map((s) => `${s.id}: ${s.error}${s.retryAt ? ` (next retry ${s.retryAt})` : ''}\n`);
  return sessionTable(sessions) + (errors.length > 0 ? `\n${errors.join('')}` : '');
}

function sessionTable(sessions: CopySessionView[]): string {
  // The REMOTE column only when a REC or ROPC pair is listed: local-only arrays keep their table.
  const remote = sessions.some((s) => s.remote !== null);
  return table(sessions, [
    { header: 'ID', value: (s) => s.id },
    { header: 'TYPE', value: (s) => s.type },
    { header: 'STATE', value: (s) => s.state },
    { header: 'SOURCE', value: (s) => s.source },
    { header: 'DESTINATION', value: (s) => s.destination },
    { header: 'PROGRESS', value: progress, right: true },
    { header: 'RATE', value: formatRate },
    { header: 'ETA', value: formatEta, right: true },
    { header: 'GEN(1=newest)', value: (s) => (s.type === 'snapopcplus' ? `${s.generationIndex}/${s.generationCount} (#${s.generation})` : '') },
    { header: 'GROUP', value: (s) => s.group },
    ...(remote
      ? [
          {
            header: 'REMOTE',
            value: (s: CopySessionView) =>
              s.remote === null
                ? ''
                : `${s.remote.role === 'source' ? 'to' : 'from'} ${s.remote.peer} ${s.remote.mode}${s.remote.haltReason ? ` (${s.remote.haltReason})` : ''}`,
          },
        ]
      : []),
  ]);
}

function showSession(s: CopySessionView): string {
  const pairs: [string, string][] = [
    ['id', s.id],
    ['type', `${s.type} (${TYPE_NAMES[s.type] ?? s.type})`],
    ['state', s.state],
    ['source', s.source],
    ['destination', s.destination],
    ['progress', `${progress(s)} units of ${s.unitSize} bytes`],
    ['rate', formatRate(s)],
    ['eta', formatEta(s)],
    ['group', s.group || '-'],
    ['created', s.createdAt],
    [
      'image at',
      s.imageAt || (s.type === 'ec' && (s.state === 'copying' || s.state === 'equivalent') ? '- (follows the source until suspended or split)' : '-'),
    ],
  ];
  // The agent numbers generations 1 = newest; the array's sequence number counts up.
  if (s.type === 'snapopcplus') pairs.push(['generation', `${s.generationIndex} of ${s.generationCount} (1 = newest; sequence #${s.generation})`]);
  if (s.type === 'ec') pairs.push(['reversed', yesNo(s.reversed)]);
  if (s.error) pairs.push(['error', s.error]);
  if (s.errorSince) pairs.push(['failing since', s.errorSince]);
  if (s.retryAt) pairs.push(['next retry', s.retryAt]);
  const r = s.remote;
  if (r !== null) {
    pairs.push(['role', r.role === 'source' ? `source (the destination is on remote ${r.peer})` : `remote end (the source is on ${r.peer})`]);
    pairs.push(['mode', `${r.mode}; on link loss: split ${r.split}; when it returns: recovery ${r.recovery}`]);
    if (r.role === 'source') {
      pairs.push(['link', r.linkUp ? 'up' : 'down (or not used yet)']);
      pairs.push(['pending', `${r.pendingBytes} bytes not yet on the remote`]);
      if (r.mode !== 'sync') {
        const age = r.drainedAt ? ` (${Math.max(0, (Date.now() - Date.parse(r.drainedAt)) / 1000).toFixed(1)} s ago)` : '';
        pairs.push([r.mode === 'consistency' ? 'remote consistent at' : 'remote drained at', r.drainedAt ? `${r.drainedAt}${age}` : '- (units are pending)']);
      }
      if (r.bufferSizeBytes > 0) pairs.push(['REC buffer', `${r.bufferUsedBytes} of ${r.bufferSizeBytes} bytes used`]);
    }
    if (r.haltReason) pairs.push(['halt reason', `${r.haltReason}${r.haltDetail ? `: ${r.haltDetail}` : ''}`]);
  }
  return keyValues(pairs);
}

/**
 * What a restore from clone leaves: the pair reversed (clone -> original), so the original is
 * the destination: no host access while copying, read-only while equivalent. What makes it
 * writable again, for the output of `copy restore` (human and --json).
 */
function restoreState(s: CopySessionView): { original: string; clone: string; originalAccess: string; makeWritable: string[]; explanation: string } {
  const original = s.destination;
  const clone = s.source;
  const originalAccess = s.state === 'copying' ? 'none until the pair is equivalent, then read-only' : s.state === 'equivalent' ? 'read-only' : 'read-write';
  const makeWritable = [`arraylab copy suspend ${s.id} && arraylab copy reverse ${s.id}`, `arraylab copy cancel ${s.id}`, `arraylab copy split ${s.id}`];
  const explanation =
    `The pair is reversed: clone ${clone} is copied back onto the original ${original}, which is now the pair's destination. ` +
    `Hosts cannot read or write ${original} until the pair is equivalent (follow it with: arraylab copy watch ${s.id}); ` +
    `then it is read-only, and writes to ${clone} are mirrored onto it.\n` +
    `To write to ${original} again, once the pair is equivalent:\n` +
    `  ${makeWritable[0]}   (back to ${original} -> ${clone}, suspended; arraylab copy resume ${s.id} mirrors ${original} onto ${clone} again)\n` +
    `  ${makeWritable[1]}   (ends the pair; ${original} keeps the restored data)\n` +
    `  ${makeWritable[2]}   (${original} becomes independent; a later resume copies ${clone} onto it again)`;
  return { original, clone, originalAccess, makeWritable, explanation };
}

function summary(verb: string, s: CopySessionView): string {
  return `${verb} ${TYPE_NAMES[s.type] ?? s.type} ${s.source} -> ${s.destination}: session ${s.id}, ${s.state}, ${progress(s)} units copied`;
}

const idPositional = <T>(c: Argv<T>) => c.positional('id', { type: 'string', demandOption: true, describe: 'session id (see arraylab copy list)' });

export function copyCommands(y: Argv<{ json: boolean }>) {
  // resume and reverse overwrite a volume (force: even while a client writes to it).
  const control = (name: 'resume' | 'reverse', describe: string, verb: string, force: string) =>
    [
      `${name} <id>`,
      describe,
      (c: Argv<{ json: boolean; api: string | undefined }>) => idPositional(c).option('force', { type: 'boolean', default: false, describe: force }),
      async (a: { id: string; json: boolean; api?: string | undefined; force: boolean }) => {
        const opts = { force: a.force };
        const s = await withClient(a, (client) => (name === 'resume' ? client.resumeCopy(a.id, opts) : client.reverseCopy(a.id, opts)));
        if (a.json) printJson(s);
        else print(summary(verb, s));
      },
    ] as const;

  // suspend and split: one session, or several at one instant (ids and/or --group).
  const cut = (name: 'suspend' | 'split', describe: string) =>
    [
      `${name} [ids..]`,
      describe,
      (c: Argv<{ json: boolean; api: string | undefined }>) => {
        const o = c
          .positional('ids', { type: 'string', array: true, describe: 'session ids (see arraylab copy list); several are cut at one instant' })
          .option('group', { type: 'string', requiresArg: true, describe: 'every EC session of this consistency group, at one instant' });
        return name === 'split'
          ? o.option('rename', { type: 'string', requiresArg: true, describe: 'give the split clone a new name, serial and WWN' })
          : o.option('rename', { type: 'string', hidden: true });
      },
      async (a: { ids?: string[] | undefined; group?: string | undefined; rename?: string | undefined; json: boolean; api?: string | undefined }) => {
        const ids = a.ids ?? [];
        const command = `copy ${name}`;
        if (ids.length === 0 && !a.group) throw new UsageError(`give a session id, several ids, or --group NAME`, command);
        if (a.rename !== undefined && (ids.length !== 1 || a.group))
          throw new UsageError('--rename renames one split clone: give exactly one session id and no --group', command);
        if (ids.length === 1 && !a.group) {
          const s = await withClient(a, (client) =>
            name === 'suspend' ? client.suspendCopy(ids[0]!) : client.splitCopy(ids[0]!, a.rename ? { newName: a.rename } : {}),
          );
          if (a.json) printJson(s);
          else print(summary(name === 'suspend' ? 'suspended' : 'split', s));
          return;
        }
        const sessions = await withClient(a, (client) => client.cutCopyGroup(name, { ids, ...(a.group ? { group: a.group } : {}) }));
        if (a.json) return printJson({ ...(a.group ? { group: a.group } : {}), sessions });
        print(
          `${name === 'suspend' ? 'suspended' : 'split'} ${sessions.length} session${sessions.length === 1 ? '' : 's'} at one instant${a.group ? ` (group ${a.group})` : ''}:`,
        );
        print(copyTable(sessions));
      },
    ] as const;

  return withApiOption(y)
    .command(
      'start',
      'start a copy session from --src to --dst; several --src/--dst pairs start at one instant as a consistency group',
      (c) =>
        c
          .option('type', {
            choices: TYPES,
            demandOption: true,
            describe:
              'opc: full point-in-time copy; quickopc: opc + change tracking; snapopcplus: before-image snapshot generation; ec: mirror; rec: mirror to another array (--dst REMOTE:VOL); ropc: point-in-time copy to another array',
          })
          .option('src', { type: 'string', array: true, demandOption: true, requiresArg: true, describe: 'source volume (repeat with --dst for a group)' })
          .option('dst', { type: 'string', array: true, demandOption: true, requiresArg: true, describe: 'destination volume (snap volume for snapopcplus)' })
          .option('rate', { type: 'string', requiresArg: true, describe: 'background copy rate in MiB/s; 0 = no background copy [default: unthrottled]' })
          .option('group', { type: 'string', requiresArg: true, describe: 'consistency group name; needed with several pairs' })
          .option('force', { type: 'boolean', default: false, describe: 'start even if the destination is exported read-write to a connected client' })
          .option('refuse-if-full', {
            type: 'boolean',
            default: false,
            describe: 'snapopcplus: with 8 generations already, refuse instead of dropping the oldest',
          })
          .option('mode', {
            choices: REC_MODES,
            describe:
              'rec: sync (a write is acknowledged once the remote has it), stack (sent in the background), consistency (sent in cycles: the remote is always a consistent past instant), through (stack, draining) [default: sync]',
          })
          .option('split', {
            choices: ['auto', 'manual'] as const,
            describe: 'rec, on link loss: auto (halt; writes go on, tracked) or manual (writes fail) [default: auto]',
          })
          .option('recovery', {
            choices: ['auto', 'manual'] as const,
            describe: 'rec, when the link returns: auto (resume) or manual (wait for copy resume) [default: auto]',
          }),
      async (a) => {
        const rateMiBs = parseRate(a.rate, 'copy start');
        const srcs = a.src.map(String);
        const dsts = a.dst.map(String);
        if (srcs.length !== dsts.length) {
          throw new UsageError(`give one --dst for each --src (got ${srcs.length} --src and ${dsts.length} --dst)`, 'copy start');
        }
        if (a.type !== 'rec' && (a.mode !== undefined || a.split !== undefined || a.recovery !== undefined)) {
          throw new UsageError('--mode, --split and --recovery are for --type rec', 'copy start');
        }
        const pairs = srcs.map((source, i) => ({
          type: a.type,
          source,
          destination: dsts[i]!,
          ...(rateMiBs !== undefined ? { rateMiBs } : {}),
          ...(a.group ? { group: a.group } : {}),
          force: a.force,
          ...(a['refuse-if-full'] ? { refuseIfFull: true } : {}),
          ...(a.mode !== undefined ? { mode: a.mode } : {}),
          ...(a.split !== undefined ? { split: a.split } : {}),
          ...(a.recovery !== undefined ? { recovery: a.recovery } : {}),
        }));
        if (pairs.length === 1) {
          const s = await withClient(a, (client) => client.startCopy(pairs[0]!));
          if (a.json) printJson(s);
          else print(summary('started', s));
          return;
        }
        if (!a.group)
          throw new UsageError(
            'several pairs start as one consistency group: name it with --group NAME (later: arraylab copy suspend --group NAME)',
            'copy start',
          );
        const group = a.group;
        const sessions = await withClient(a, (client) => client.startCopyGroup(group, pairs));
        if (a.json) return printJson({ group, sessions });
        print(`started ${sessions.length} ${TYPE_NAMES[a.type] ?? a.type} sessions at one instant as consistency group ${group}:`);
        print(copyTable(sessions));
      },
    )
    .command(
      ['list', 'ls'],
      'list copy sessions',
      (c) => c,
      async (a) => {
        const sessions = await withClient(a, (client) => client.listCopies());
        if (a.json) return printJson({ sessions });
        if (sessions.length === 0) return print('no copy sessions; start one with: arraylab copy start --type opc --src VOL --dst VOL');
        print(copyTable(sessions));
      },
    )
    .command(
      'show <id>',
      'show one copy session in full',
      (c) => idPositional(c),
      async (a) => {
        const s = await withClient(a, (client) => client.getCopy(a.id));
        if (a.json) printJson(s);
        else print(showSession(s));
      },
    )
    .command(
      'bitmap <id>',
      "show a session's units as a grid: copied, pending, tracked, before-image",
      (c) =>
        idPositional(c).option('cells', {
          type: 'number',
          default: 4096,
          requiresArg: true,
          describe: 'cells at most (each cell groups units; at most 65536)',
        }),
      async (a) => {
        if (!Number.isInteger(a.cells) || a.cells < 1 || a.cells > 65536) {
          throw new UsageError(`--cells: give a whole number from 1 to 65536, not ${String(a.cells)}`, 'copy bitmap');
        }
        const b = await withClient(a, (client) => client.copyBitmap(a.id, a.cells));
        if (a.json) printJson(b);
        else print(bitmapText(b));
      },
    )
    .command(...cut('suspend', 'EC: freeze the destination as of now (equivalent -> suspended)'))
    .command(
      ...control(
        'resume',
        'EC, REC: resync a suspended, split or halted pair (differential); refused while a client writes to the destination',
        'resumed',
        'resume even if the destination is exported read-write to a connected client (its I/O then fails)',
      ),
    )
    .command(
      ...control(
        'reverse',
        'EC: swap the direction of a suspended or split pair; QuickOPC: restore the destination onto the source (tracking, differential); REC (suspended, split or halted): the remote array sends from now on (failback); refused while a client writes to the source',
        'reversed',
        'reverse even if the source (the new destination) is exported read-write to a connected client (it is overwritten)',
      ),
    )
    .command(...cut('split', 'EC: make the destination an independent clone (equivalent or suspended -> split)'))
    .command(
      'restore <id>',
      'EC: copy a split or suspended clone back onto the original (restore from clone); refused while a client writes to the original',
      (c) =>
        idPositional(c).option('force', {
          type: 'boolean',
          default: false,
          describe: 'restore even if the original is exported read-write to a connected client (its I/O then fails)',
        }),
      async (a) => {
        const s = await withClient(a, (client) => client.restoreFromClone(a.id, { force: a.force }));
        const state = restoreState(s);
        if (a.json) return printJson({ ...s, restore: state });
        print(summary('restoring', s));
        print(state.explanation);
      },
    )
    .command(
      'cancel <id>',
      'end a copy session; the destination keeps what it has',
      (c) =>
        idPositional(c).option('force', {
          type: 'boolean',
          default: false,
          describe: 'SnapOPC+: also remove the older generations that read through this one',
        }),
      async (a) => {
        await withClient(a, (client) => client.cancelCopy(a.id, { force: a.force }));
        if (a.json) printJson({ cancelled: a.id });
        else print(`cancelled copy session ${a.id}`);
      },
    )
    .command(
      'rate <id>',
      'change the background copy rate of a session',
      (c) => idPositional(c).option('rate', { type: 'string', demandOption: true, requiresArg: true, describe: 'MiB/s; 0 = none; "unthrottled"' }),
      async (a) => {
        const rateMiBs = parseRate(a.rate, 'copy rate');
        const s = await withClient(a, (client) => client.setCopyRate(a.id, rateMiBs));
        if (a.json) printJson(s);
        else print(`copy session ${s.id}: rate ${formatRate(s)}`);
      },
    )
    .command(
      'mode <id> <mode>',
      'REC: switch the transfer mode (e.g. to through, to drain a stack-mode backlog before a suspend)',
      (c) => idPositional(c).positional('mode', { choices: REC_MODES, demandOption: true, describe: 'sync, stack, consistency or through' }),
      async (a) => {
        const s = await withClient(a, (client) => client.setCopyMode(a.id, a.mode));
        if (a.json) printJson(s);
        else print(`copy session ${s.id}: mode ${s.remote?.mode ?? a.mode}, ${s.state}`);
      },
    )
    .command(
      'watch [id]',
      'follow copy sessions: progress bars on a terminal, JSON lines with --json; with an id, ends when that session ends',
      (c) =>
        c
          .positional('id', { type: 'string', describe: 'only this session' })
          .option('interval', { type: 'number', default: 1000, requiresArg: true, describe: 'progress update interval in ms' }),
      async (a) => {
        await withClient(a, (client) => watch(client, a.id, a.interval, a.json));
      },
    )
    .demandCommand(1, 'give a copy command: start, list, show, bitmap, suspend, resume, reverse, split, restore, cancel, rate, mode or watch');
}

/** Cells per row of `copy bitmap`. */
const BITMAP_ROW = 64;

/** The grid of `copy bitmap`: a heading, rows of 64 cells (each row starts with its first unit), a legend with the counts. */
export function bitmapText(b: CopyBitmapView): string {
  const per = b.unitsPerCell === 1 ? '1 unit' : `${b.unitsPerCell} units`;
  const lines = [`${TYPE_NAMES[b.type] ?? b.type} session ${b.id}, ${b.state}: ${b.units} units of ${b.unitBytes} bytes, ${per} per cell`];
  const width = String(Math.max(0, (b.cells.length - 1) * b.unitsPerCell)).length;
  for (let i = 0; i < b.cells.length; i += BITMAP_ROW) {
    lines.push(`${String(i * b.unitsPerCell).padStart(width)}  ${b.cells.slice(i, i + BITMAP_ROW)}`);
  }
  const c = b.counts;
  lines.push(
    '',
    `C copied        ${c.copied} units (the destination holds the point-in-time data)`,
    `P pending       ${c.pending} units (still to copy)`,
    `T tracked       ${c.tracked} units (changed since the copy point; copied again by a restart or resume)`,
    `B before-image  ${c.beforeImage} units (saved in the SnapOPC+ snap volume)`,
    `. nothing       (not copied, not saved)`,
    b.unitsPerCell > 1 ? 'a cell shows the first of P, T, B, C that any of its units is' : '',
  );
  return lines.join('\n').trimEnd();
}

const ENDED = new Set(['completed', 'cancelled', 'dropped']);

async function watch(client: import('../../proto/ArrayClient.js').ArrayClient, id: string | undefined, interval: number, json: boolean): Promise<void> {
  if (!Number.isFinite(interval) || interval <= 0) throw new UsageError('--interval: give a positive number of milliseconds', 'copy watch');
  const tty = !json && process.stdout.isTTY === true;
  const sessions = new Map<string, CopySessionView>();
  let drawn = 0;
  const redraw = () => {
    const lines = [...sessions.values()].map(bar);
    if (drawn > 0) process.stdout.write(`\x1b[${drawn}A`);
    for (const l of lines) process.stdout.write(`\x1b[2K${l}\n`);
    for (let i = lines.length; i < drawn; i++) process.stdout.write('\x1b[2K\n');
    drawn = Math.max(drawn, lines.length);
  };
  let w: { cancel: () => void; done: Promise<void> } | undefined;
  const onSignal = () => w?.cancel();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    w = client.watchCopies({ ...(id ? { id } : {}), progressIntervalMs: interval }, (e: CopyEventView) => {
      if (json) printJson(e);
      if (e.session) sessions.set(e.sessionId, e.session);
      if (tty) {
        if (!e.session && e.kind !== 'snapshot') {
          const last = sessions.get(e.sessionId);
          sessions.delete(e.sessionId);
          if (!last)
            print(`${e.sessionId} ${e.kind}: ${e.message}`); // ended before the watch began
          else
            sessions.set(e.sessionId, {
              ...last,
              state: e.kind as CopySessionView['state'],
              copiedBlocks: e.kind === 'completed' ? last.totalBlocks : last.copiedBlocks,
              etaSeconds: null,
            });
        }
        redraw();
      } else if (!json && e.kind !== 'progress') {
        print(`${e.at} ${e.sessionId} ${e.kind}${e.state ? ` (${e.state})` : ''}: ${e.message}`);
      } else if (!json) {
        print(`${e.at} ${e.sessionId} progress: ${e.session ? progress(e.session) : e.message}`);
      }
      if (id && ENDED.has(e.kind)) w?.cancel();
    });
    await w.done;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function bar(s: CopySessionView): string {
  const width = 30;
  const frac = s.totalBlocks === 0 ? 1 : s.copiedBlocks / s.totalBlocks;
  const full = Math.round(frac * width);
  return `${s.id.slice(0, 8)}  ${s.type.padEnd(11)} ${`${s.source} -> ${s.destination}`.padEnd(24)} [${'#'.repeat(full)}${'.'.repeat(width - full)}] ${percent(s).padStart(4)}  ${s.state.padEnd(10)} eta ${formatEta(s)}`;
}
