/**
 * `arraylab power-cut`: the array loses power and comes back (emulator/fault/powerCut.ts).
 * Every connection drops; volumes with a volatile write cache lose the writes no flush
 * covered, as the policy says; connections are refused for --down-ms.
 */
import type { Argv, CommandModule } from 'yargs';
import type { PowerCutView } from '../../proto/views.js';
import { formatSize } from '../../proto/util/units.js';
import { print, printJson, table } from '../../proto/util/table.js';
import { withApiOption, withClient } from './client.js';
import { UsageError } from './errors.js';

/** Registered in main.ts as `.command(powerCutCommand)`. */
export const powerCutCommand: CommandModule<{ json: boolean }, PowerCutArgs> = {
  command: 'power-cut',
  describe: 'simulate a power failure: drop every connection, lose unflushed writes of volatile write caches, come back',
  builder: (c) =>
    withApiOption(c)
      .option('policy', {
        type: 'string',
        choices: ['drop-unflushed', 'keep-random', 'torn'],
        default: 'drop-unflushed',
        describe: 'unflushed writes: all lost, a seeded random subset kept, or each torn at 512-byte sectors',
      })
      .option('seed', { type: 'string', requiresArg: true, describe: 'seed of keep-random and torn (default: drawn, and shown)' })
      .option('down-ms', { type: 'string', default: '0', requiresArg: true, describe: 'refuse connections this long after the cut' }) as Argv<PowerCutArgs>,
  handler: async (a) => {
    const seed = a.seed === undefined ? undefined : wholeNumber(a.seed, '--seed', 2 ** 32 - 1, 'e.g. --seed 7');
    const downMs = wholeNumber(a['down-ms'], '--down-ms', 3_600_000, 'e.g. --down-ms 2000');
    const report = await withClient(a, (client) => client.powerCut({ policy: a.policy, ...(seed !== undefined ? { seed } : {}), downMs }));
    if (a.json) return printJson(report);
    print(powerCutText(report, downMs));
  },
};

interface PowerCutArgs {
  json: boolean;
  api?: string | undefined;
  policy: string;
  seed?: string | undefined;
  'down-ms': string;
}

function wholeNumber(text: string, option: string, max: number, example: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n) || n > max)
    throw new UsageError(`${option}: ${JSON.stringify(text)} is not a whole number from 0 to ${max}; ${example}`, 'power-cut');
  return n;
}

function powerCutText(r: PowerCutView, downMs: number): string {
  const head = `power cut (${r.policy}, seed ${r.seed}): dropped ${r.connectionsDropped} connection${r.connectionsDropped === 1 ? '' : 's'}${downMs > 0 ? `, connections refused for ${downMs} ms` : ''}`;
  if (r.volumes.length === 0) return `${head}\nno volume has a volatile write cache: nothing was lost`;
  return `${head}\n${table(r.volumes, [
    { header: 'VOLUME', value: (v) => v.name },
    { header: 'LOST', value: (v) => String(v.writesLost), right: true },
    { header: 'KEPT', value: (v) => String(v.writesKept), right: true },
    { header: 'TORN', value: (v) => String(v.writesTorn), right: true },
    { header: 'BYTES LOST', value: (v) => formatSize(v.bytesLost), right: true },
  ])}`;
}
