/**
 * From "attach volume vol1 over iSCSI" to how qemu attaches it, by asking the array's API: the
 * NBD and iSCSI listeners (`arraylab status`), the target name, and the LUN the guest's
 * initiator sees the volume at (its host's LUN map, or the default LUNs while no host exists).
 * NBD under host affinity: a client sees only its host's volumes, and only with a TLS identity;
 * with a PSK the disks go over TLS-PSK, and a volume the identity's host does not map, or NBD
 * without an identity, fails here with the command that fixes it rather than as a guest
 * that cannot open its disk.
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

/** NBD over TLS-PSK: the identity and the directory qemu finds its keys.psk in. */
export interface NbdTlsAttach {
  identity: string;
  pskDir: string;
}

/** Under host affinity, checks every NBD volume is mapped to the host the guest's identity belongs to. */
function checkNbdScope(vm: string, volumes: string[], hosts: HostListView, psk: NbdTlsAttach | undefined, api: string): void {
  if (!hosts.hostAffinity || volumes.length === 0) return;
  if (psk === undefined) {
    throw new Error(
      `vm ${vm}: host affinity is on at ${api}, and an NBD client without a TLS identity sees no volume (here: ${volumes.join(', ')}); ` +
        `give the VM's host a key with: arraylab host set HOST --nbd-psk, save the line it prints in a file and start with --nbd-psk-file FILE (or attach via iscsi)`,
    );
  }
  const host = hosts.hosts.find((h) => h.credentials.nbdPskIdentity === psk.identity);
  if (!host) {
    throw new Error(
      `vm ${vm}: no host on the array at ${api} has the NBD PSK identity ${psk.identity}, so the guest would see no volume over NBD; ` +
        `give it to the VM's host with: arraylab host set HOST --nbd-psk --nbd-psk-identity ${psk.identity}, and use the key it prints`,
    );
  }
  for (const v of volumes) {
    if (!host.luns.some((l) => l.volume === v))
      throw new Error(
        `vm ${vm}: volume ${v} is not mapped to host ${host.name} (NBD PSK identity ${psk.identity}); map it with: arraylab host map ${host.name} ${v}`,
      );
  }
}

export async function resolveDisks(client: ArrayClient, vm: string, requests: AttachRequest[], nbdTls?: NbdTlsAttach): Promise<VmDisk[]> {
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
  if (requests.some((r) => r.via === 'iscsi')) {
    if (!status.listeners.iscsi.available) {
      throw new Error(
        `the array at ${api} does not serve iSCSI${status.listeners.iscsi.note ? ` (${status.listeners.iscsi.note})` : ''}; attach --via nbd, or start it with: arraylab serve --iscsi 127.0.0.1:3260`,
      );
    }
  }
  const hosts = await client.listHosts();
  checkNbdScope(
    vm,
    requests.filter((r) => r.via === 'nbd').map((r) => r.volume),
    hosts,
    nbdTls,
    api,
  );
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
        attach: {
          via: 'nbd',
          host: reachable(l, apiHost),
          port: l.port,
          export: r.volume,
          ...ro,
          ...(nbdTls ? { tls: { pskDir: nbdTls.pskDir, identity: nbdTls.identity } } : {}),
        },
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
        lun: lunFor(vm, r.volume, hosts, initiator, api),
        initiatorName: initiator,
        ...ro,
      },
    };
  });
}

export type { ArrayStatus };
