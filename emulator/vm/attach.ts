/**
 * From "attach volume vol1 over iSCSI" to how qemu attaches it, by asking the array's API: the
 * NBD and iSCSI listeners (`arraylab status`), the target name, and the LUN the guest's
 * initiator sees the volume at (its host's LUN map, or the default LUNs while no host exists).
 */
import type { ArrayClient } from '../../proto/ArrayClient.js';
import type { ArrayStatus, HostListView, ListenerStatus } from '../../proto/views.js';
import { defaultInitiatorName } from './qemuArgs.js';
import type { VmDisk } from './registry.js';

export interface AttachRequest {
  volume: string;
  via: 'nbd' | 'iscsi';
  readOnly?: boolean;
}

/** A wildcard listener is reached at the address the API was reached at. */
function reachable(l: ListenerStatus, apiHost: string): string {
  return l.host === '0.0.0.0' || l.host === '::' || l.host === '' ? apiHost : l.host;
}

function lunFor(vm: string, volume: string, hosts: HostListView, initiator: string, api: string): number {
  if (!hosts.hostAffinity) {
    const d = hosts.defaultLuns.find((l) => l.volume === volume);
    if (!d) throw new Error(`volume ${volume} has no default LUN on the array at ${api}; check it with: arraylab host list`);
    return d.lun;
  }
  const host = hosts.hosts.find((h) => h.initiators.some((i) => i.toLowerCase() === initiator.toLowerCase()));
  if (!host) {
    throw new Error(
      `vm ${vm}: host affinity is on at ${api} and the guest's initiator ${initiator} is in no host, so it would see no LUN; ` +
        `add it with: arraylab host add ${vm} --initiator ${initiator} && arraylab host map ${vm} ${volume}`,
    );
  }
  const lun = host.luns.find((l) => l.volume === volume);
  if (!lun)
    throw new Error(
      `vm ${vm}: volume ${volume} is not mapped to host ${host.name} (the guest's initiator ${initiator}); map it with: arraylab host map ${host.name} ${volume}`,
    );
  return lun.lun;
}

export async function resolveDisks(client: ArrayClient, vm: string, requests: AttachRequest[]): Promise<VmDisk[]> {
  const api = client.address;
  const apiHost = api.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  const [status, volumes] = await Promise.all([client.getStatus(), client.listVolumes()]);
  const names = new Set(volumes.map((v) => v.name));
  const unknown = requests.filter((r) => !names.has(r.volume)).map((r) => r.volume);
  if (unknown.length > 0) {
    const have = volumes.length ? `it has ${volumes.map((v) => v.name).join(', ')}` : 'it has no volumes';
    throw new Error(
      `unknown volume${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} on the array at ${api} (${have}); create it with: arraylab volume create ${unknown[0]} --size 1GiB`,
    );
  }
  const seen = new Set<string>();
  for (const r of requests) {
    if (seen.has(r.volume)) throw new Error(`volume ${r.volume} is attached twice to vm ${vm}; attach each volume once`);
    seen.add(r.volume);
  }
  let hosts: HostListView | null = null;
  if (requests.some((r) => r.via === 'iscsi')) {
    if (!status.listeners.iscsi.available) {
      throw new Error(
        `the array at ${api} does not serve iSCSI${status.listeners.iscsi.note ? ` (${status.listeners.iscsi.note})` : ''}; attach --via nbd, or start it with: arraylab serve --iscsi 127.0.0.1:3260`,
      );
    }
    hosts = await client.listHosts();
  }
  const initiator = defaultInitiatorName(vm);
  let vd = 0;
  let sd = 0;
  return requests.map((r): VmDisk => {
    const ro = r.readOnly ? { readOnly: true } : {};
    if (r.via === 'nbd') {
      const l = status.listeners.nbd;
      return {
        volume: r.volume,
        via: 'nbd',
        guestDevice: `/dev/vd${String.fromCharCode(97 + vd++)}`,
        attach: { via: 'nbd', host: reachable(l, apiHost), port: l.port, export: r.volume, ...ro },
      };
    }
    const l = status.listeners.iscsi;
    return {
      volume: r.volume,
      via: 'iscsi',
      guestDevice: `/dev/sd${String.fromCharCode(97 + sd++)}`,
      attach: {
        via: 'iscsi',
        portal: `${reachable(l, apiHost)}:${l.port}`,
        targetName: status.iscsiTargetName,
        lun: lunFor(vm, r.volume, hosts!, initiator, api),
        initiatorName: initiator,
        ...ro,
      },
    };
  });
}

export type { ArrayStatus };
