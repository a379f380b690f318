/**
 * arraylab.v1.HostAffinityService: hosts, their initiators, LUN maps and credentials (NBD
 * identities, CHAP), with the iSCSI sessions logged in now. ArrayApiServer serves it through its common call wrapper (draining,
 * error mapping, logging); this file only turns requests into host affinity calls.
 */
import type * as grpc from '@grpc/grpc-js';
import type { HostCredentialsChange, HostCredentialsResult } from '../array/HostAffinity.js';
import { ArrayError, type HostInfo, type HostLun, type InitiatorLun } from '../array/types.js';
import type { IscsiSessionInfo } from '../iscsi/types.js';
import type * as pb from '../../proto/gen/index.js';
import { hostListToWire, hostToWire } from '../../proto/wire/hostWire.js';
import type { HostListView, HostView, IscsiSessionView } from '../../proto/views.js';

/** What the API needs of host affinity; StorageArray.hosts (HostAffinity) provides it. */
export interface HostControl {
  readonly hostAffinity: boolean;
  readonly requireHostAffinity: boolean;
  createHost(name: string, initiators: readonly string[]): HostInfo;
  deleteHost(name: string, opts?: { force?: boolean }): { unmapped: HostLun[] };
  addInitiator(host: string, initiator: string): HostInfo;
  removeInitiator(host: string, initiator: string): HostInfo;
  mapVolume(host: string, volume: string, lun?: number): { host: HostInfo; lun: number };
  unmapVolume(host: string, volume: string): { host: HostInfo; lun: number };
  listHosts(): HostInfo[];
  getHost(name: string): HostInfo;
  defaultLuns(): HostLun[];
  hostOf(initiatorName: string): string | undefined;
  setHostCredentials(host: string, change: HostCredentialsChange): HostCredentialsResult;
}

/** The logged-in sessions, from the iSCSI target; none when iSCSI is not served. */
export type SessionSource = () => readonly IscsiSessionInfo[];

type Unary = <Req, Res>(method: string, fn: (req: Req) => Res | Promise<Res>) => grpc.handleUnaryCall<Req, Res>;

export function hostAffinityHandlers(hosts: HostControl, sessions: SessionSource, unary: Unary): pb.HostAffinityServiceHandlers {
  const withSessions = (h: HostInfo): HostView => ({ ...h, sessions: sessionsOf(hosts, sessions(), h.name) });
  return {
    CreateHost: unary('CreateHost', (req) => hostToWire(withSessions(hosts.createHost(req.name, req.initiators ?? [])))),
    DeleteHost: unary('DeleteHost', (req) => ({ ...hosts.deleteHost(req.name, { force: req.force }), hostAffinity: hosts.hostAffinity })),
    AddHostInitiator: unary('AddHostInitiator', (req) => hostToWire(withSessions(hosts.addInitiator(req.host, req.initiator)))),
    RemoveHostInitiator: unary('RemoveHostInitiator', (req) => hostToWire(withSessions(hosts.removeInitiator(req.host, req.initiator)))),
    MapVolume: unary('MapVolume', (req) => {
      const lun = req.lun === undefined || req.lun === null ? undefined : req.lun;
      if (!req.volume) throw new ArrayError('INVALID_ARGUMENT', `map to host ${req.host}: give the volume to map`);
      const r = hosts.mapVolume(req.host, req.volume, lun);
      return { host: hostToWire(withSessions(r.host)), lun: r.lun };
    }),
    UnmapVolume: unary('UnmapVolume', (req) => {
      const r = hosts.unmapVolume(req.host, req.volume);
      return { host: hostToWire(withSessions(r.host)), lun: r.lun };
    }),
    ListHosts: unary('ListHosts', () => hostListToWire(listView(hosts, sessions()))),
    GetHost: unary('GetHost', (req) => hostToWire(withSessions(hosts.getHost(req.name)))),
    SetHostCredentials: unary('SetHostCredentials', (req) => {
      const r = hosts.setHostCredentials(req.name, credentialsChange(req));
      return { host: hostToWire(withSessions(r.host)), nbdPskIdentity: r.nbdPsk?.identity ?? '', nbdPskKey: r.nbdPsk?.key ?? Buffer.alloc(0) };
    }),
  };
}

/** A set and a clear of the same thing in one request is a mistake, not an order of operations. */
function credentialsChange(req: pb.SetHostCredentialsRequest__Output): HostCredentialsChange {
  const both = (what: string, set: boolean, clear: boolean) => {
    if (set && clear) throw new ArrayError('INVALID_ARGUMENT', `host ${req.name}: ${what} is both set and cleared; give one of them`);
  };
  const has = (v: string | null | undefined): v is string => v !== undefined && v !== null;
  both('the NBD PSK', req.generateNbdPsk, req.clearNbdPsk);
  both('the NBD certificate fingerprint', has(req.nbdCertFingerprint), req.clearNbdCertFingerprint);
  both('the NBD certificate subject', has(req.nbdCertSubject), req.clearNbdCertSubject);
  both('CHAP', req.chap !== null && req.chap !== undefined, req.clearChap);
  const chap = req.chap;
  return {
    ...(req.generateNbdPsk ? { nbdPsk: 'generate' as const } : req.clearNbdPsk ? { nbdPsk: 'clear' as const } : {}),
    ...(has(req.nbdPskIdentity) ? { nbdPskIdentity: req.nbdPskIdentity } : {}),
    ...(has(req.nbdCertFingerprint) ? { nbdCertFingerprint: req.nbdCertFingerprint } : req.clearNbdCertFingerprint ? { nbdCertFingerprint: null } : {}),
    ...(has(req.nbdCertSubject) ? { nbdCertSubject: req.nbdCertSubject } : req.clearNbdCertSubject ? { nbdCertSubject: null } : {}),
    ...(chap
      ? {
          chap: {
            user: chap.user,
            secret: chap.secret,
            ...(chap.mutualUser || chap.mutualSecret ? { mutualUser: chap.mutualUser, mutualSecret: chap.mutualSecret } : {}),
          },
        }
      : req.clearChap
        ? { chap: null }
        : {}),
  };
}

export function listView(hosts: HostControl, all: readonly IscsiSessionInfo[]): HostListView {
  return {
    hostAffinity: hosts.hostAffinity,
    requireHostAffinity: hosts.requireHostAffinity,
    hosts: hosts.listHosts().map((h) => ({ ...h, sessions: sessionsOf(hosts, all, h.name) })),
    defaultLuns: hosts.defaultLuns(),
    otherSessions: all.filter((s) => hosts.hostOf(s.initiatorName) === undefined).map(sessionView),
  };
}

function sessionsOf(hosts: HostControl, all: readonly IscsiSessionInfo[], host: string): IscsiSessionView[] {
  return all.filter((s) => hosts.hostOf(s.initiatorName) === host).map(sessionView);
}

function sessionView(s: IscsiSessionInfo): IscsiSessionView {
  return {
    initiatorName: s.initiatorName,
    isid: s.isid,
    tsih: s.tsih,
    connections: s.connections,
    remoteAddresses: [...s.remoteAddresses],
    luns: s.luns.map((l: InitiatorLun) => ({ lun: l.lun, volume: l.exportName })),
  };
}
