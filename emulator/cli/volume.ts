/** `arraylab volume create|list|show|resize|set|rename|delete`. */
import type { Argv } from 'yargs';
import type { LogicalBlockSize, VolumeInfo } from '../array/types.js';
import type { WriteCacheMode } from '../../proto/views.js';
import { formatSize, parseSize, parseSizeChange, SizeError } from '../../proto/util/units.js';
import { withApiOption, withClient } from './client.js';
import { UsageError } from './errors.js';
import { keyValues, print, printJson, table, yesNo } from '../../proto/util/table.js';

function sizeOption(flag: string, command: string, allowGrowth: boolean) {
  return (text: unknown) => {
    try {
      if (typeof text !== 'string' && typeof text !== 'number') throw new SizeError('is missing; give a size such as 64MiB');
      return allowGrowth ? parseSizeChange(String(text)) : parseSize(String(text));
    } catch (err) {
      if (err instanceof SizeError) throw new UsageError(`--${flag}: ${err.message}`, command);
      throw err;
    }
  };
}

function blockSizeOption(text: unknown): LogicalBlockSize {
  let bytes: number | undefined;
  try {
    bytes = parseSize(String(text));
  } catch {
    // reported below
  }
  if (bytes !== 512 && bytes !== 4096)
    throw new UsageError(`--block-size: ${JSON.stringify(String(text))} is not a supported block size; use 512 or 4096`, 'volume create');
  return bytes;
}

/** --alloc-limit: a size, or "none" (only where removing is allowed). */
function allocLimitOption(text: unknown, command: string, allowNone: boolean): number | null {
  const raw = String(text ?? '').trim();
  if (allowNone && raw.toLowerCase() === 'none') return null;
  const hint = allowNone ? 'give a size such as 64MiB, or none to remove the limit' : 'give a size such as 64MiB';
  let bytes: number;
  try {
    bytes = parseSize(raw);
  } catch (err) {
    if (err instanceof SizeError) throw new UsageError(`--alloc-limit: ${err.message}${allowNone ? ', or none to remove the limit' : ''}`, command);
    throw err;
  }
  if (bytes === 0) throw new UsageError(`--alloc-limit: 0 is not a limit; ${hint}`, command);
  return bytes;
}

const WRITE_CACHE_OPTION = {
  type: 'string',
  choices: ['volatile', 'write-through'],
  requiresArg: true,
  describe: 'volatile: writes are acknowledged from a write-back cache a power cut loses unless flushed; write-through (default)',
} as const;

export function volumeCommands(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .command(
      'create <name>',
      'create a volume (served at once as an NBD export of the same name)',
      (c) =>
        c
          .positional('name', { type: 'string', demandOption: true, describe: "volume name: letters, digits, '.', '_', '-'" })
          .option('size', {
            type: 'string',
            demandOption: true,
            requiresArg: true,
            describe: 'size, e.g. 64MiB, 10GiB, 1T (K/M/G/T and KiB.. are binary, KB/MB.. decimal)',
          })
          .option('block-size', { type: 'string', default: '512', requiresArg: true, describe: 'logical block size: 512 or 4096' })
          .option('thin', { type: 'boolean', describe: 'thin provisioning: space allocated on write (default)' })
          .option('thick', { type: 'boolean', describe: 'thick provisioning: all space allocated at creation' })
          .option('read-only', { type: 'boolean', default: false, describe: 'export read-only to every client' })
          .option('description', { type: 'string', default: '', requiresArg: true, describe: 'free text shown by list and show' })
          .option('alloc-limit', {
            type: 'string',
            requiresArg: true,
            describe: 'thin only: the most space the volume may allocate (e.g. 1GiB); writes past it fail with ENOSPC',
          })
          .option('write-cache', WRITE_CACHE_OPTION)
          .conflicts('thin', 'thick'),
      async (a) => {
        const sizeBytes = sizeOption('size', 'volume create', false)(a.size) as number;
        const blockSize = blockSizeOption(a['block-size']);
        const allocLimitBytes = a['alloc-limit'] === undefined ? null : allocLimitOption(a['alloc-limit'], 'volume create', false);
        if (allocLimitBytes !== null && a.thick) {
          throw new UsageError(
            '--alloc-limit: a thick volume has all its space allocated at creation, so it cannot have an allocation limit; drop --thick or --alloc-limit',
            'volume create',
          );
        }
        const volume = await withClient(a, (client) =>
          client.createVolume({
            name: a.name,
            sizeBytes,
            blockSize,
            provisioning: a.thick ? 'thick' : 'thin',
            readOnly: a['read-only'],
            description: a.description,
            allocLimitBytes,
            ...(a['write-cache'] !== undefined ? { writeCache: a['write-cache'] as WriteCacheMode } : {}),
          }),
        );
        if (a.json) printJson(volume);
        else {
          const limit = volume.allocLimitBytes !== null ? `, allocation limit ${formatSize(volume.allocLimitBytes)}` : '';
          const cache = volume.writeCache === 'volatile' ? ', volatile write cache' : '';
          print(
            `created volume ${volume.name}: ${formatSize(volume.sizeBytes)} ${volume.provisioning}, ${volume.blockSize}-byte blocks${volume.readOnly ? ', read-only' : ''}${limit}${cache}`,
          );
        }
      },
    )
    .command(
      ['list', 'ls'],
      'list volumes',
      (c) => c,
      async (a) => {
        const volumes = await withClient(a, (client) => client.listVolumes());
        if (a.json) return printJson({ volumes });
        if (volumes.length === 0) return print('no volumes; create one with: arraylab volume create NAME --size 1GiB');
        print(volumeTable(volumes));
      },
    )
    .command(
      'show <name>',
      'show one volume in full',
      (c) => c.positional('name', { type: 'string', demandOption: true }),
      async (a) => {
        const v = await withClient(a, (client) => client.getVolume(a.name));
        if (a.json) return printJson(v);
        print(volumeDetails(v));
      },
    )
    .command(
      'resize <name>',
      'grow a volume (volumes never shrink)',
      (c) =>
        c.positional('name', { type: 'string', demandOption: true }).option('size', {
          type: 'string',
          demandOption: true,
          requiresArg: true,
          describe: 'new size (e.g. 2GiB), or +SIZE to grow by that much (e.g. +1GiB)',
        }),
      async (a) => {
        const change = sizeOption('size', 'volume resize', true)(a.size) as ReturnType<typeof parseSizeChange>;
        const v = await withClient(a, (client) => client.resizeVolume(a.name, change));
        if (a.json) return printJson(v);
        print(`resized volume ${v.name} to ${formatSize(v.sizeBytes)} (${v.sizeBytes} bytes)`);
      },
    )
    .command(
      'set <name>',
      "change a volume's settings",
      (c) =>
        c
          .positional('name', { type: 'string', demandOption: true })
          .option('alloc-limit', {
            type: 'string',
            requiresArg: true,
            describe: 'thin volumes: the most space it may allocate (e.g. 1GiB), or none; writes past it fail with ENOSPC',
          })
          .option('write-cache', WRITE_CACHE_OPTION),
      async (a) => {
        if (a['alloc-limit'] === undefined && a['write-cache'] === undefined) {
          throw new UsageError('volume set needs a setting to change: --alloc-limit SIZE|none or --write-cache volatile|write-through', 'volume set');
        }
        const limit = a['alloc-limit'] === undefined ? undefined : allocLimitOption(a['alloc-limit'], 'volume set', true);
        const mode = a['write-cache'] as WriteCacheMode | undefined;
        const v = await withClient(a, async (client) => {
          let v: VolumeInfo | undefined;
          if (limit !== undefined) v = await client.setVolumeAllocLimit(a.name, limit);
          if (mode !== undefined) v = await client.setVolumeWriteCache(a.name, mode);
          return v!;
        });
        if (a.json) return printJson(v);
        if (limit !== undefined) {
          print(
            v.allocLimitBytes === null
              ? `volume ${v.name}: no allocation limit (${formatSize(v.allocatedBytes)} allocated)`
              : `volume ${v.name}: allocation limit ${formatSize(v.allocLimitBytes)} (${formatSize(v.allocatedBytes)} allocated)`,
          );
        }
        if (mode !== undefined) {
          print(
            mode === 'volatile'
              ? `volume ${v.name}: volatile write cache (acknowledged writes a flush has not covered are lost in a power cut)`
              : `volume ${v.name}: write-through (cache destaged and flushed)`,
          );
        }
      },
    )
    .command(
      'rename <name> <new-name>',
      'rename a volume and its export (refused while a client has it open)',
      (c) =>
        c
          .positional('name', { type: 'string', demandOption: true })
          .positional('new-name', { type: 'string', demandOption: true, describe: "the new name: letters, digits, '.', '_', '-'" })
          .option('new-identity', { type: 'boolean', default: false, describe: 'also give it a new serial number and WWN, so hosts see a different LUN' }),
      async (a) => {
        const newName = String(a['new-name']);
        const v = await withClient(a, (client) => client.renameVolume(a.name, newName, { newIdentity: a['new-identity'] }));
        if (a.json) return printJson(v);
        print(`renamed volume ${a.name} to ${v.name}${a['new-identity'] ? ` with a new identity: serial ${v.serial}, wwn ${v.wwn}` : ''}`);
      },
    )
    .command(
      ['delete <name>', 'rm <name>'],
      'delete a volume and its data (refused while a client has it open)',
      (c) => c.positional('name', { type: 'string', demandOption: true }),
      async (a) => {
        await withClient(a, (client) => client.deleteVolume(a.name));
        if (a.json) return printJson({ deleted: a.name });
        print(`deleted volume ${a.name}`);
      },
    )
    .demandCommand(1, 'volume needs a subcommand: create, list, show, resize, set, rename or delete');
}

function volumeTable(volumes: VolumeInfo[]): string {
  return table(volumes, [
    { header: 'NAME', value: (v) => v.name },
    { header: 'SIZE', value: (v) => formatSize(v.sizeBytes), right: true },
    { header: 'ALLOCATED', value: (v) => formatSize(v.allocatedBytes), right: true },
    { header: 'LIMIT', value: (v) => (v.allocLimitBytes === null ? '-' : formatSize(v.allocLimitBytes)), right: true },
    { header: 'BLOCK', value: (v) => String(v.blockSize), right: true },
    { header: 'PROVISIONING', value: (v) => v.provisioning },
    { header: 'ACCESS', value: (v) => (v.readOnly ? 'ro' : 'rw') },
    { header: 'CACHE', value: (v) => v.writeCache ?? 'write-through' },
    { header: 'DESCRIPTION', value: (v) => v.description },
  ]);
}

function volumeDetails(v: VolumeInfo): string {
  const percent = v.sizeBytes > 0 ? ` (${((100 * v.allocatedBytes) / v.sizeBytes).toFixed(1)}%)` : '';
  return keyValues([
    ['name', v.name],
    ['size', `${formatSize(v.sizeBytes)} (${v.sizeBytes} bytes)`],
    ['allocated', `${formatSize(v.allocatedBytes)}${percent}`],
    [
      'alloc limit',
      v.allocLimitBytes === null ? 'none' : `${formatSize(v.allocLimitBytes)} (${((100 * v.allocatedBytes) / v.allocLimitBytes).toFixed(1)}% used)`,
    ],
    ['block size', `${v.blockSize} bytes`],
    ['provisioning', v.provisioning],
    ['read-only', yesNo(v.readOnly)],
    ['write cache', v.writeCache === 'volatile' ? `volatile (${formatSize(v.writeCacheDirtyBytes ?? 0)} unflushed)` : 'write-through'],
    ['description', v.description],
    ['uuid', v.uuid],
    ['wwn', v.wwn],
    ['serial', v.serial],
    ['created', v.createdAt],
  ]);
}
