/**
 * `arraylab fault add|list|show|remove|clear|rate|apply|flag|events`: faults injected on purpose
 * (emulator/fault/README.md). The array validates every fault in one place; the CLI passes the
 * options through as typed, so a plan file, a lab file and the command line fail alike.
 */
import { readFileSync } from 'node:fs';
import type { Argv } from 'yargs';
import type * as pb from '../../proto/gen/index.js';
import { FAULT_KINDS } from '../fault/kinds.js';
import type { FaultEventView, FaultView } from '../../proto/views.js';
import { keyValues, print, printJson, table } from '../../proto/util/table.js';
import { withApiOption, withClient } from './client.js';
import { CommandError, UsageError } from './errors.js';

const ADD_EXAMPLES = [
  ['$0 fault add error --volume vol1 --ops read --lba 1000-2000 --errno EIO --probability 0.1 --seed 7', 'fail 10 % of reads of blocks 1000-2000'],
  ['$0 fault add error --volume vol1 --ops write --sense 03/0C/00 --after 100', 'iSCSI MEDIUM ERROR on every write after the 100th'],
  ['$0 fault add bad-blocks --volume vol1 --lba 4096,4097', 'reads of blocks 4096 and 4097 fail until rewritten'],
  ['$0 fault add delay --volume vol1 --ms 50 --jitter-ms 10', 'every operation waits 40 to 60 ms'],
  ['$0 fault add rate --volume vol1 --mibs 5', 'cap the volume at 5 MiB/s'],
  ['$0 fault add pause --volume vol1 --drain', 'a hung path: operations wait until the fault is removed'],
  ['$0 fault add disconnect --export vol1 --refuse-ms 5000', 'drop the clients now and refuse them for 5 s'],
  ['$0 fault add copy-error --session 3', "the session's copy fails: the pair goes error-suspended"],
  ['$0 fault add copy-error --volume vol1 --ops read --once', 'the next copy that reads vol1 fails, whichever session it is (one your backup software starts)'],
  ['$0 fault add api-error --ops StartCopy --code UNAVAILABLE --once', 'the next StartCopy call fails'],
  ['$0 fault add link-down --remote site-b --window 5s-20s', 'the link to remote array site-b is down from 5 s to 20 s'],
  ['$0 fault add link-delay --remote site-b --ms 20 --jitter-ms 5', 'every transfer to site-b takes 15 to 25 ms longer'],
  ['$0 fault add link-rate --remote site-b --mibs 5', 'cap the link to site-b at 5 MiB/s'],
  ['$0 fault add link-loss --remote site-b --probability 0.01', '1 % of transfers to site-b drop the connection'],
] as const;

type AddArgs = {
  kind: string;
  volume?: string | undefined;
  export?: string | undefined;
  session?: string | undefined;
  tape?: string | undefined;
  remote?: string | undefined;
  ops?: string | undefined;
  lba?: string | undefined;
  probability?: number | undefined;
  seed?: number | undefined;
  every?: number | undefined;
  after?: number | undefined;
  once: boolean;
  window?: string | undefined;
  flag?: string | undefined;
  errno?: string | undefined;
  sense?: string | undefined;
  ms?: number | undefined;
  jitterMs?: number | undefined;
  distribution?: string | undefined;
  mibs?: number | undefined;
  iops?: number | undefined;
  perConnection: boolean;
  bits?: number | undefined;
  permanent: boolean;
  refuseMs?: number | undefined;
  scope?: string | undefined;
  code?: string | undefined;
  transient: boolean;
  label?: string | undefined;
  drain: boolean;
};

/** A numeric option that did not parse is a usage error here, not NaN on the wire. */
function num(a: Record<string, unknown>, key: string, flag: string, opts: { integer?: boolean } = {}): number | undefined {
  const v = a[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || Number.isNaN(v)) throw new UsageError(`--${flag}: ${JSON.stringify(String(v))} is not a number`, 'fault add');
  if (opts.integer === true && (!Number.isSafeInteger(v) || v < 0 || v > 0xffffffff)) {
    throw new UsageError(`--${flag}: ${v} must be a whole number from 0 to 4294967295`, 'fault add');
  }
  return v;
}

/** The command line to the wire's FaultSpec: exactly the options given. */
export function specFromArgs(a: AddArgs): pb.FaultSpec {
  const targets = (['volume', 'export', 'session', 'tape', 'remote'] as const).filter((t) => a[t] !== undefined);
  if (targets.length > 1) throw new UsageError(`give one target, not ${targets.map((t) => `--${t}`).join(' and ')}`, 'fault add');
  const t = targets[0];
  const spec: pb.FaultSpec = { kind: a.kind };
  if (t !== undefined) spec.target = `${t}:${String(a[t])}`;
  else if (a.kind.startsWith('api-')) spec.target = 'api';
  if (a.ops !== undefined) spec.ops = a.ops.split(',').map((s) => s.trim());
  const r = a as unknown as Record<string, unknown>;
  const put = <K extends keyof pb.FaultSpec>(key: K, value: pb.FaultSpec[K] | undefined): void => {
    if (value !== undefined) spec[key] = value;
  };
  put('lba', a.lba);
  put('probability', num(r, 'probability', 'probability'));
  put('seed', num(r, 'seed', 'seed', { integer: true }));
  put('every', num(r, 'every', 'every', { integer: true }));
  put('after', num(r, 'after', 'after', { integer: true }));
  if (a.once) spec.once = true;
  put('window', a.window);
  put('flag', a.flag);
  put('errno', a.errno);
  put('sense', a.sense);
  put('ms', num(r, 'ms', 'ms'));
  put('jitterMs', num(r, 'jitterMs', 'jitter-ms'));
  put('distribution', a.distribution);
  put('mibs', num(r, 'mibs', 'mibs'));
  put('iops', num(r, 'iops', 'iops'));
  if (a.perConnection) spec.perConnection = true;
  put('bits', num(r, 'bits', 'bits', { integer: true }));
  if (a.permanent) spec.permanent = true;
  put('refuseMs', num(r, 'refuseMs', 'refuse-ms', { integer: true }));
  put('scope', a.scope);
  put('code', a.code);
  if (a.transient) spec.transient = true;
  put('label', a.label);
  if (a.drain) spec.drain = true;
  return spec;
}

function faultTable(faults: FaultView[]): string {
  return table(faults, [
    { header: 'ID', value: (f) => f.id },
    { header: 'TARGET', value: (f) => f.target },
    { header: 'KIND', value: (f) => f.kind },
    { header: 'FIRED', value: (f) => `${f.fired}/${f.seen}` },
    { header: 'WHAT', value: (f) => `${f.description}${f.transient ? ' [transient]' : ''}${f.label ? ` [${f.label}]` : ''}` },
  ]);
}

export function faultDetails(f: FaultView): string {
  return keyValues([
    ['id', f.id],
    ['target', f.target],
    ['kind', f.kind],
    ['what', f.description],
    ['operations', f.ops.join(', ') || '-'],
    ['seed', String(f.seed)],
    ['flag', f.flag || '-'],
    ['fired', `${f.fired} of ${f.seen} operations matched`],
    ['kept', f.transient ? 'no (transient: gone at restart)' : 'yes (survives a restart)'],
    ['label', f.label || '-'],
    ['created', f.createdAt],
  ]);
}

export function eventLine(e: FaultEventView): string {
  const where = e.offset !== undefined ? ` @${e.offset}+${e.length ?? 0}` : '';
  const conn = e.connection ? ` [${e.connection}]` : '';
  return `#${e.seq} ${e.at} ${e.faultId} ${e.kind} ${e.target} ${e.op}${where}${conn}: ${e.detail}`;
}

export function faultCommands(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .command(
      'add <kind>',
      'inject a fault; prints its id on stdout (and, on a terminal, what it set on stderr)',
      (c) => {
        let b = c
          .positional('kind', { type: 'string', demandOption: true, choices: FAULT_KINDS, describe: 'what the fault does' })
          .option('volume', {
            type: 'string',
            requiresArg: true,
            describe: "target: a volume's host I/O (copy-error: the copy engine's I/O on it, any session)",
            group: 'Target:',
          })
          .option('export', { type: 'string', requiresArg: true, describe: "target: an export's connections and I/O", group: 'Target:' })
          .option('session', { type: 'string', requiresArg: true, describe: "target: a copy session's own I/O (copy-error)", group: 'Target:' })
          .option('tape', { type: 'string', requiresArg: true, describe: "target: a cartridge's reads and writes (tape-error)", group: 'Target:' })
          .option('remote', {
            type: 'string',
            requiresArg: true,
            describe: 'target: the link to a remote array (link-*), by its name in arraylab remote add',
            group: 'Target:',
          })
          .option('ops', {
            type: 'string',
            requiresArg: true,
            describe:
              'operations, comma-separated: read, write, flush, trim, zero, block-status, connect; RPC names for api faults; write, read, flush, control for link faults',
            group: 'Target:',
          })
          .option('lba', {
            type: 'string',
            requiresArg: true,
            describe: 'logical blocks FIRST-LAST; bad-blocks: a list, e.g. 4096,4097,5000-5010',
            group: 'Target:',
          })
          .option('probability', {
            type: 'number',
            requiresArg: true,
            describe: 'fire with this probability (0..1) per operation (link faults: per transfer)',
            group: 'Trigger (one):',
          })
          .option('every', { type: 'number', requiresArg: true, describe: 'fire on every Nth matching operation', group: 'Trigger (one):' })
          .option('after', { type: 'number', requiresArg: true, describe: 'fire on every operation after the first N', group: 'Trigger (one):' })
          .option('once', { type: 'boolean', default: false, describe: 'fire on the next matching operation only', group: 'Trigger (one):' })
          .option('window', {
            type: 'string',
            requiresArg: true,
            describe: 'fire from START to END after the add, e.g. 5s-20s or 10s-',
            group: 'Trigger (one):',
          })
          .option('flag', {
            type: 'string',
            requiresArg: true,
            describe: "only while this flag is set ('arraylab fault flag set NAME')",
            group: 'Trigger (one):',
          })
          .option('seed', { type: 'number', requiresArg: true, describe: "seed of the fault's randomness (default: drawn and shown)", group: 'Trigger (one):' })
          .option('errno', { type: 'string', requiresArg: true, describe: 'error: EIO (default), ENOSPC, EPERM, EINVAL, ENOMEM, ESHUTDOWN', group: 'Action:' })
          .option('sense', { type: 'string', requiresArg: true, describe: 'error: iSCSI sense KEY/ASC/ASCQ in hex, e.g. 03/11/00', group: 'Action:' })
          .option('ms', {
            type: 'number',
            requiresArg: true,
            describe: 'delay, api-delay, link-delay: milliseconds (log-normal: the median)',
            group: 'Action:',
          })
          .option('jitter-ms', { type: 'number', requiresArg: true, describe: 'delay, link-delay: ± milliseconds (log-normal: the spread)', group: 'Action:' })
          .option('distribution', {
            type: 'string',
            requiresArg: true,
            choices: ['fixed', 'uniform', 'lognormal'],
            describe: 'delay, link-delay',
            group: 'Action:',
          })
          .option('mibs', { type: 'number', requiresArg: true, describe: 'rate, link-rate: MiB/s cap', group: 'Action:' })
          .option('iops', { type: 'number', requiresArg: true, describe: 'rate: operations per second cap', group: 'Action:' })
          .option('per-connection', { type: 'boolean', default: false, describe: 'rate: a cap for each connection, not the volume', group: 'Action:' })
          .option('bits', { type: 'number', requiresArg: true, describe: 'corrupt: bits flipped per operation (default 1)', group: 'Action:' })
          .option('permanent', { type: 'boolean', default: false, describe: 'bad-blocks: a rewrite does not heal', group: 'Action:' })
          .option('refuse-ms', { type: 'number', requiresArg: true, describe: 'disconnect: refuse reconnects for this long', group: 'Action:' })
          .option('scope', { type: 'string', requiresArg: true, choices: ['lun', 'target'], describe: 'reset: what is reset (iSCSI)', group: 'Action:' })
          .option('code', { type: 'string', requiresArg: true, describe: 'api-error: gRPC status name (default UNAVAILABLE)', group: 'Action:' })
          .option('drain', { type: 'boolean', default: false, describe: 'pause: return once operations in flight have finished' })
          .option('transient', { type: 'boolean', default: false, describe: 'do not keep the fault across a restart' })
          .option('label', { type: 'string', requiresArg: true, describe: 'free text shown in lists' });
        for (const [cmd, what] of ADD_EXAMPLES) b = b.example(cmd, what);
        return b;
      },
      async (a) => {
        const spec = specFromArgs(a as unknown as AddArgs);
        const f = await withClient(a, (client) => client.addFault(spec));
        if (a.json) return printJson(f);
        // The id alone on stdout, for ID=$(arraylab fault add ...); what was set, for a person at a terminal.
        print(f.id);
        if (process.stderr.isTTY === true) process.stderr.write(`added fault ${f.id} on ${f.target}: ${f.description}\n`);
      },
    )
    .command(
      ['list', 'ls'],
      'list the faults set',
      (c) => c,
      async (a) => {
        const faults = await withClient(a, (client) => client.listFaults());
        if (a.json) return printJson({ faults });
        if (faults.length === 0) return print('no faults set; add one with: arraylab fault add error --volume vol1 --ops read --once');
        print(faultTable(faults));
      },
    )
    .command(
      'show <id>',
      'show a fault',
      (c) => c.positional('id', { type: 'string', demandOption: true }),
      async (a) => {
        const f = await withClient(a, (client) => client.getFault(a.id));
        if (a.json) return printJson(f);
        print(faultDetails(f));
      },
    )
    .command(
      ['remove <ids..>', 'rm <ids..>'],
      'remove faults: operations they hold (pause, delay) go on at once',
      (c) => c.positional('ids', { type: 'string', array: true, demandOption: true }),
      async (a) => {
        const removed = await withClient(a, async (client) => {
          const out: FaultView[] = [];
          for (const id of a.ids) out.push(await client.removeFault(id));
          return out;
        });
        if (a.json) return printJson({ removed });
        for (const f of removed) print(`removed fault ${f.id} (${f.target}: ${f.description})`);
      },
    )
    .command(
      'clear',
      'remove every fault',
      (c) => c.option('flags', { type: 'boolean', default: false, describe: 'clear every flag too' }),
      async (a) => {
        const removed = await withClient(a, (client) => client.clearFaults({ flags: a.flags }));
        if (a.json) return printJson({ removed });
        print(`removed ${removed} fault${removed === 1 ? '' : 's'}${a.flags ? '; cleared every flag' : ''}`);
      },
    )
    .command(
      'rate <id>',
      "change a rate or link-rate fault's caps while it runs",
      (c) =>
        c
          .positional('id', { type: 'string', demandOption: true })
          .option('mibs', { type: 'number', requiresArg: true, describe: 'MiB/s cap' })
          .option('iops', { type: 'number', requiresArg: true, describe: 'operations per second cap' }),
      async (a) => {
        const r = a as unknown as Record<string, unknown>;
        const mibs = num(r, 'mibs', 'mibs');
        const iops = num(r, 'iops', 'iops');
        if (mibs === undefined && iops === undefined) throw new UsageError('give --mibs or --iops', 'fault rate');
        const f = await withClient(a, (client) =>
          client.setFaultRate(a.id, { ...(mibs !== undefined ? { mibs } : {}), ...(iops !== undefined ? { iops } : {}) }),
        );
        if (a.json) return printJson(f);
        print(`fault ${f.id}: ${f.description}`);
      },
    )
    .command(
      'apply <plan>',
      "apply a plan file (YAML: name, seed, faults): replaces the faults of that plan's name",
      (c) =>
        c
          .positional('plan', { type: 'string', demandOption: true, describe: 'plan file' })
          .example('$0 fault apply flaky.yaml', 'name: flaky\\nseed: 42\\nfaults:\\n  - {kind: error, target: volume:vol1, ops: [read], probability: 0.01}'),
      async (a) => {
        let text: string;
        try {
          text = readFileSync(a.plan, 'utf8');
        } catch (err) {
          throw new CommandError(`cannot read plan ${a.plan}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; check the path`);
        }
        const faults = await withClient(a, (client) => client.applyFaultPlan(text, a.plan));
        if (a.json) return printJson({ faults });
        print(faultTable(faults));
      },
    )
    .command('flag', 'set, clear or list the flags that gate faults (--flag NAME)', (c) =>
      c
        .command(
          'set <name>',
          'set a flag: faults gated by it apply',
          (d) => d.positional('name', { type: 'string', demandOption: true }),
          async (a) => {
            const names = await withClient(a, (client) => client.setFaultFlag(a.name, true));
            if (a.json) return printJson({ flags: names });
            print(`flag ${a.name} set`);
          },
        )
        .command(
          'clear <name>',
          'clear a flag: faults gated by it stop applying',
          (d) => d.positional('name', { type: 'string', demandOption: true }),
          async (a) => {
            const names = await withClient(a, (client) => client.setFaultFlag(a.name, false));
            if (a.json) return printJson({ flags: names });
            print(`flag ${a.name} cleared`);
          },
        )
        .command(
          ['list', 'ls'],
          'list the flags set',
          (d) => d,
          async (a) => {
            const names = await withClient(a, (client) => client.listFaultFlags());
            if (a.json) return printJson({ flags: names });
            print(names.length === 0 ? 'no flags set' : names.join('\n'));
          },
        )
        .demandCommand(1, 'give a flag command: set, clear or list'),
    )
    .command(
      'events',
      'show the injections (the array keeps the last 10,000); --follow waits for new ones',
      (c) =>
        c
          .option('follow', { alias: 'f', type: 'boolean', default: false, describe: 'keep printing new events until interrupted' })
          .option('since', { type: 'number', default: 0, requiresArg: true, describe: 'only events after this sequence number' }),
      async (a) => {
        const since = num(a as unknown as Record<string, unknown>, 'since', 'since', { integer: true }) ?? 0;
        await withClient(a, async (client) => {
          const collected: FaultEventView[] = [];
          const w = client.watchFaultEvents({ sinceSeq: since, follow: a.follow }, (e) => {
            if (a.follow) print(a.json ? JSON.stringify(e) : eventLine(e));
            else collected.push(e);
          });
          if (a.follow) {
            const stop = (): void => w.cancel();
            process.once('SIGINT', stop);
            process.once('SIGTERM', stop);
          }
          await w.done;
          if (!a.follow) {
            if (a.json) printJson({ events: collected });
            else print(collected.length === 0 ? 'no fault events' : collected.map(eventLine).join('\n'));
          }
        });
      },
    )
    .demandCommand(1, 'give a fault command: add, list, show, remove, clear, rate, apply, flag or events');
}
