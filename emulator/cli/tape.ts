/** `arraylab tape add|list|show|erase|remove|write|restore|verify`: the array's virtual tape library. */
import type { Argv } from 'yargs';
import type { CartridgeView, HostProgress, TapeRecordView } from '../tape/types.js';
import { formatSize, parseSize, SizeError } from '../../proto/util/units.js';
import { withApiOption, withClient } from './client.js';
import { parsePointInTime } from '../tape/TapeLibrary.js';
import { CommandError, UsageError } from './errors.js';
import { keyValues, print, printJson, table } from '../../proto/util/table.js';

function recordNumber(value: unknown, command: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 0xffffffff)
    throw new UsageError(`record ${JSON.stringify(String(value))} is not a record number; give a number from 1 (see arraylab tape show LABEL)`, command);
  return n;
}

/** A one-line progress display on stderr, only on a terminal and never with --json. */
function progressLine(label: string, json: boolean): { update: (p: HostProgress) => void; done: () => void } {
  if (json || process.stderr.isTTY !== true) return { update: () => {}, done: () => {} };
  let shown = false;
  return {
    update: (p) => {
      const pct = p.totalBytes > 0 ? Math.floor((100 * p.doneBytes) / p.totalBytes) : 0;
      process.stderr.write(`\r${label}: ${String(pct).padStart(3)}% (${formatSize(p.doneBytes)} of ${formatSize(p.totalBytes)})\x1b[K`);
      shown = true;
    },
    done: () => {
      if (shown) process.stderr.write('\r\x1b[K');
    },
  };
}

async function withProgress<R>(label: string, json: boolean, fn: (onProgress: (p: HostProgress) => void) => Promise<R>): Promise<R> {
  const line = progressLine(label, json);
  try {
    return await fn(line.update);
  } finally {
    line.done();
  }
}

export function tapeCommands(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .command(
      'add <label>',
      'add an empty cartridge to the library',
      (c) =>
        c
          .positional('label', { type: 'string', demandOption: true, describe: "cartridge label: letters, digits, '.', '_', '-' (e.g. T0001)" })
          .option('capacity', {
            type: 'string',
            demandOption: true,
            requiresArg: true,
            describe: 'capacity, e.g. 1GiB (headers and stored data count; holes do not)',
          }),
      async (a) => {
        let capacity: number;
        try {
          capacity = parseSize(String(a.capacity));
        } catch (err) {
          if (err instanceof SizeError) throw new UsageError(`--capacity: ${err.message}`, 'tape add');
          throw err;
        }
        const c = await withClient(a, (client) => client.addCartridge(a.label, capacity));
        if (a.json) return printJson(c);
        print(`added cartridge ${c.label}: ${formatSize(c.capacityBytes)}`);
      },
    )
    .command(
      ['list', 'ls'],
      'list cartridges',
      (c) => c,
      async (a) => {
        const cartridges = await withClient(a, (client) => client.listCartridges());
        if (a.json) return printJson({ cartridges });
        if (cartridges.length === 0) return print('no cartridges; add one with: arraylab tape add T0001 --capacity 1GiB');
        print(cartridgeTable(cartridges));
      },
    )
    .command(
      'show <label>',
      'show a cartridge and its records',
      (c) => c.positional('label', { type: 'string', demandOption: true }),
      async (a) => {
        const r = await withClient(a, (client) => client.getCartridge(a.label));
        if (a.json) return printJson(r);
        print(cartridgeDetails(r.cartridge));
        print(r.records.length === 0 ? 'no records' : `\n${recordTable(r.records)}`);
      },
    )
    .command(
      'erase <label>',
      'drop every record of a cartridge (the capacity stays)',
      (c) => c.positional('label', { type: 'string', demandOption: true }),
      async (a) => {
        const c = await withClient(a, (client) => client.eraseCartridge(a.label));
        if (a.json) return printJson(c);
        print(`erased cartridge ${c.label}: ${formatSize(c.capacityBytes)} free for records`);
      },
    )
    .command(
      ['remove <label>', 'rm <label>'],
      'remove a cartridge and its records (refused while an operation runs on it)',
      (c) => c.positional('label', { type: 'string', demandOption: true }),
      async (a) => {
        await withClient(a, (client) => client.removeCartridge(a.label));
        if (a.json) return printJson({ removed: a.label });
        print(`removed cartridge ${a.label}`);
      },
    )
    .command(
      'write <volume>',
      "copy a volume's current image (as hosts read it) to a new record on a cartridge",
      (c) =>
        c
          .positional('volume', { type: 'string', demandOption: true })
          .option('cartridge', { type: 'string', requiresArg: true, describe: 'cartridge label; default: the first (by label) with room' })
          .option('tag', { type: 'string', default: '', requiresArg: true, describe: 'free text kept with the record (at most 128 bytes)' })
          .option('point-in-time', {
            type: 'string',
            requiresArg: true,
            describe:
              "the instant the volume's image is of (ISO 8601, e.g. 2026-01-31T12:00:00Z) [default: its copy session's snapshot, start or suspend instant; for a volume in no session, when the write starts]",
          }),
      async (a) => {
        const pointInTime = a['point-in-time'];
        if (pointInTime !== undefined) {
          try {
            parsePointInTime(pointInTime);
          } catch (err) {
            throw new UsageError(`--point-in-time: ${(err as Error).message}`, 'tape write');
          }
        }
        const rec = await withClient(a, (client) =>
          withProgress(`writing ${a.volume} to tape`, a.json, (onProgress) =>
            client.writeTape(
              { volume: a.volume, ...(a.cartridge ? { cartridge: a.cartridge } : {}), tag: a.tag, ...(pointInTime !== undefined ? { pointInTime } : {}) },
              onProgress,
            ),
          ),
        );
        if (a.json) return printJson(rec);
        print(
          `wrote volume ${rec.volume} to cartridge ${rec.cartridge} record ${rec.record}: ${formatSize(rec.sizeBytes)} image of ${rec.imageAt}, ${formatSize(rec.dataBytes)} of data stored, sha256 ${rec.sha256}`,
        );
      },
    )
    .command(
      'restore <label> <record>',
      'write a record back onto a volume, checking every extent and the image checksum',
      (c) =>
        c
          .positional('label', { type: 'string', demandOption: true, describe: 'cartridge label' })
          .positional('record', { type: 'string', demandOption: true, describe: 'record number (from 1)' })
          .option('to', { type: 'string', demandOption: true, requiresArg: true, describe: 'target volume: same block size, at least the record size' })
          .option('force', { type: 'boolean', default: false, describe: 'restore even if the volume is exported read-write to a connected client' }),
      async (a) => {
        const record = recordNumber(a.record, 'tape restore');
        const r = await withClient(a, (client) =>
          withProgress(`restoring ${a.label} record ${record} onto ${a.to}`, a.json, (onProgress) =>
            client.restoreTape({ cartridge: a.label, record, volume: a.to, force: a.force }, onProgress),
          ),
        );
        if (a.json) return printJson(r);
        print(`restored cartridge ${r.cartridge} record ${r.record} onto volume ${r.volume}: ${formatSize(r.bytes)}, sha256 ${r.sha256} (checked)`);
      },
    )
    .command(
      'verify <label> [record]',
      're-read records and check every CRC32C and SHA-256 (exit status 1 if one is bad)',
      (c) => c.positional('label', { type: 'string', demandOption: true }).positional('record', { type: 'string', describe: 'one record; default: all' }),
      async (a) => {
        const record = a.record === undefined ? undefined : recordNumber(a.record, 'tape verify');
        const checks = await withClient(a, (client) =>
          withProgress(`verifying ${a.label}`, a.json, (onProgress) => client.verifyTape({ cartridge: a.label, ...(record ? { record } : {}) }, onProgress)),
        );
        const bad = checks.filter((x) => !x.ok);
        if (a.json) printJson({ cartridge: a.label, ok: bad.length === 0, checks });
        else if (checks.length === 0) print(`cartridge ${a.label} has no records`);
        else print(checks.map((x) => `record ${x.record}: ${x.ok ? 'ok' : `BAD: ${x.error}`}`).join('\n'));
        if (bad.length > 0) {
          throw new CommandError(
            `cartridge ${a.label}: ${bad.length} of ${checks.length} record${checks.length === 1 ? '' : 's'} failed verification (${bad.map((x) => x.record).join(', ')}); restore those backups from another copy`,
          );
        }
      },
    )
    .demandCommand(1, 'tape needs a subcommand: add, list, show, erase, remove, write, restore or verify');
}

function cartridgeTable(cs: CartridgeView[]): string {
  return table(cs, [
    { header: 'LABEL', value: (c) => c.label },
    { header: 'CAPACITY', value: (c) => formatSize(c.capacityBytes), right: true },
    { header: 'USED', value: (c) => formatSize(c.usedBytes), right: true },
    { header: 'USE%', value: (c) => `${((100 * c.usedBytes) / c.capacityBytes).toFixed(1)}%`, right: true },
    { header: 'RECORDS', value: (c) => String(c.recordCount), right: true },
    { header: 'CREATED', value: (c) => c.createdAt },
  ]);
}

function cartridgeDetails(c: CartridgeView): string {
  return keyValues([
    ['label', c.label],
    ['capacity', `${formatSize(c.capacityBytes)} (${c.capacityBytes} bytes)`],
    ['used', `${formatSize(c.usedBytes)} (${((100 * c.usedBytes) / c.capacityBytes).toFixed(1)}%)`],
    ['records', String(c.recordCount)],
    ['created', c.createdAt],
  ]);
}

function recordTable(rs: TapeRecordView[]): string {
  return table(rs, [
    { header: 'RECORD', value: (r) => String(r.record), right: true },
    { header: 'VOLUME', value: (r) => r.volume },
    { header: 'SIZE', value: (r) => formatSize(r.sizeBytes), right: true },
    { header: 'DATA', value: (r) => formatSize(r.dataBytes), right: true },
    { header: 'BLOCK', value: (r) => String(r.blockSize), right: true },
    { header: 'IMAGE AT', value: (r) => r.imageAt },
    { header: 'WRITTEN', value: (r) => r.createdAt },
    { header: 'SHA256', value: (r) => r.sha256.slice(0, 16) },
    { header: 'TAG', value: (r) => r.tag },
  ]);
}
