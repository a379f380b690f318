/** `arraylab tenant add|list|show|set|remove|assign`: tenants, their quotas, and what they own. */
import type { Argv } from 'yargs';
import type { TenantView } from '../../proto/views.js';
import type { TenantSpec } from '../../proto/ArrayClient.js';
import { keyValues, print, printJson, table } from '../../proto/util/table.js';
import { formatSize, parseSize } from '../../proto/util/units.js';
import { withApiOption, withClient } from './client.js';
import { UsageError } from './errors.js';

const namePositional = <T>(c: Argv<T>) => c.positional('name', { type: 'string', demandOption: true, describe: 'the tenant name' });

const quotaOptions = <T>(c: Argv<T>) =>
  c
    .option('max-capacity', { type: 'string', requiresArg: true, describe: 'most bytes its volumes may hold, e.g. 10GiB (0: no limit)' })
    .option('max-volumes', { type: 'number', requiresArg: true, describe: 'most volumes (0: no limit)' })
    .option('max-sessions', { type: 'number', requiresArg: true, describe: 'most copy sessions (0: no limit)' });

function spec(
  a: { name: string; 'max-capacity'?: string | undefined; 'max-volumes'?: number | undefined; 'max-sessions'?: number | undefined },
  command: string,
): TenantSpec {
  const count = (flag: string, v: number | undefined) => {
    if (v !== undefined && (!Number.isInteger(v) || v < 0 || v > 1_000_000)) throw new UsageError(`${flag}: give a whole number from 0 to 1000000`, command);
    return v;
  };
  let capacity: number | undefined;
  if (a['max-capacity'] !== undefined) {
    try {
      capacity = a['max-capacity'] === '0' ? 0 : parseSize(a['max-capacity']);
    } catch (err) {
      throw new UsageError(`--max-capacity: ${(err as Error).message}`, command);
    }
  }
  const volumes = count('--max-volumes', a['max-volumes']);
  const sessions = count('--max-sessions', a['max-sessions']);
  return {
    name: a.name,
    ...(capacity !== undefined ? { maxCapacityBytes: capacity } : {}),
    ...(volumes !== undefined ? { maxVolumes: volumes } : {}),
    ...(sessions !== undefined ? { maxSessions: sessions } : {}),
  };
}

export function tenantCommands(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .command(
      'add <name>',
      'create a tenant, with quotas',
      (c) => quotaOptions(namePositional(c)),
      async (a) => {
        const t = await withClient(a, (client) => client.addTenant(spec(a, 'tenant add')));
        if (a.json) return printJson(t);
        print(`added tenant ${t.name}; give it users with: arraylab user add NAME --role operator --tenant ${t.name}`);
      },
    )
    .command(
      ['list', 'ls'],
      'list the tenants, their quotas and use',
      (c) => c,
      async (a) => {
        const tenants = await withClient(a, (client) => client.listTenants());
        if (a.json) return printJson({ tenants });
        if (tenants.length === 0) return print('no tenants; add one with: arraylab tenant add NAME');
        print(
          table(tenants, [
            { header: 'NAME', value: (t) => t.name },
            { header: 'VOLUMES', value: (t) => of(t.volumes, t.maxVolumes), right: true },
            {
              header: 'CAPACITY',
              value: (t) => `${formatSize(t.capacityBytes)}${t.maxCapacityBytes ? ` / ${formatSize(t.maxCapacityBytes)}` : ''}`,
              right: true,
            },
            { header: 'SESSIONS', value: (t) => of(t.sessions, t.maxSessions), right: true },
            { header: 'HOSTS', value: (t) => String(t.hosts), right: true },
            { header: 'CARTRIDGES', value: (t) => String(t.cartridges), right: true },
            { header: 'USERS', value: (t) => String(t.users), right: true },
          ]),
        );
      },
    )
    .command(
      'show <name>',
      'show one tenant',
      (c) => namePositional(c),
      async (a) => {
        const t = await withClient(a, (client) => client.getTenant(a.name));
        if (a.json) return printJson(t);
        print(showTenant(t));
      },
    )
    .command(
      'set <name>',
      "change a tenant's quotas (the ones given)",
      (c) => quotaOptions(namePositional(c)),
      async (a) => {
        const s = spec(a, 'tenant set');
        if (Object.keys(s).length === 1) throw new UsageError('give at least one of --max-capacity, --max-volumes, --max-sessions', 'tenant set');
        const t = await withClient(a, (client) => client.setTenant(s));
        if (a.json) return printJson(t);
        print(showTenant(t));
      },
    )
    .command(
      'assign <name>',
      'give volumes, hosts or cartridges to a tenant ("-" : to no tenant)',
      (c) =>
        namePositional(c)
          .option('volume', { type: 'string', array: true, requiresArg: true, describe: 'a volume (repeat for more)' })
          .option('host', { type: 'string', array: true, requiresArg: true, describe: 'a host (repeat for more)' })
          .option('cartridge', { type: 'string', array: true, requiresArg: true, describe: 'a cartridge (repeat for more)' }),
      async (a) => {
        const objects = { volumes: a.volume ?? [], hosts: a.host ?? [], cartridges: a.cartridge ?? [] };
        if (objects.volumes.length + objects.hosts.length + objects.cartridges.length === 0) {
          throw new UsageError('give at least one --volume, --host or --cartridge', 'tenant assign');
        }
        const tenant = a.name === '-' ? '' : a.name;
        await withClient(a, (client) => client.assignToTenant(tenant, objects));
        if (a.json) return printJson({ tenant, ...objects });
        print(`assigned to ${tenant === '' ? 'no tenant' : `tenant ${tenant}`}: ${[...objects.volumes, ...objects.hosts, ...objects.cartridges].join(', ')}`);
      },
    )
    .command(
      ['remove <name>', 'rm <name>'],
      'remove a tenant; refused while it has users or objects',
      (c) => namePositional(c).option('force', { type: 'boolean', default: false, describe: 'remove its users too, and leave its objects to no tenant' }),
      async (a) => {
        await withClient(a, (client) => client.removeTenant(a.name, a.force));
        if (a.json) printJson({ removed: a.name });
        else print(`removed tenant ${a.name}`);
      },
    )
    .demandCommand(1, 'give a tenant command: add, list, show, set, assign or remove');
}

function of(used: number, max: number): string {
  return max > 0 ? `${used} / ${max}` : String(used);
}

function showTenant(t: TenantView): string {
  return keyValues([
    ['name', t.name],
    ['volumes', of(t.volumes, t.maxVolumes)],
    ['capacity', `${formatSize(t.capacityBytes)}${t.maxCapacityBytes ? ` of ${formatSize(t.maxCapacityBytes)}` : ' (no limit)'}`],
    ['copy sessions', of(t.sessions, t.maxSessions)],
    ['hosts', String(t.hosts)],
    ['cartridges', String(t.cartridges)],
    ['users', String(t.users)],
    ['created', t.createdAt],
  ]);
}
