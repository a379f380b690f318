/**
 * Conversions between host affinity's views and the messages of arraylab/v1/affinity.proto,
 * whose types are generated (proto/gen/; repeated fields always arrays on receipt).
 */
import type * as pb from '../gen/index.js';
import type { HostCredentials, HostListView, HostLun, HostView, IscsiSessionView } from '../views.js';

/** The wire and view shapes are the same; these copy, so neither side aliases the other's arrays. */
export function hostLunFromWire(w: pb.HostLun__Output): HostLun {
  return { lun: w.lun, volume: w.volume, volumeUuid: w.volumeUuid };
}

export function sessionFromWire(w: pb.IscsiSession__Output): IscsiSessionView {
  return {
    initiatorName: w.initiatorName,
    isid: w.isid,
    tsih: w.tsih,
    connections: w.connections,
    remoteAddresses: [...(w.remoteAddresses ?? [])],
    luns: (w.luns ?? []).map((l) => ({ lun: l.lun, volume: l.volume })),
  };
}

export function hostToWire(h: HostView): pb.Host {
  return { name: h.name, initiators: h.initiators, luns: h.luns, createdAt: h.createdAt, sessions: h.sessions, credentials: credentialsToWire(h.credentials) };
}

/** Absent on the view is '' on the wire, and back. */
export function credentialsToWire(c: HostCredentials): pb.HostCredentials {
  return {
    nbdPskIdentity: c.nbdPskIdentity ?? '',
    nbdCertFingerprint: c.nbdCertFingerprint ?? '',
    nbdCertSubject: c.nbdCertSubject ?? '',
    chapUser: c.chapUser ?? '',
    chapMutualUser: c.chapMutualUser ?? '',
  };
}

export function credentialsFromWire(w: pb.HostCredentials__Output | null | undefined): HostCredentials {
  return {
    ...(w?.nbdPskIdentity ? { nbdPskIdentity: w.nbdPskIdentity } : {}),
    ...(w?.nbdCertFingerprint ? { nbdCertFingerprint: w.nbdCertFingerprint } : {}),
    ...(w?.nbdCertSubject ? { nbdCertSubject: w.nbdCertSubject } : {}),
    ...(w?.chapUser ? { chapUser: w.chapUser } : {}),
    ...(w?.chapMutualUser ? { chapMutualUser: w.chapMutualUser } : {}),
  };
}

export function hostFromWire(w: pb.Host__Output): HostView {
  return {
    name: w.name,
    initiators: [...(w.initiators ?? [])],
    luns: (w.luns ?? []).map(hostLunFromWire),
    createdAt: w.createdAt,
    sessions: (w.sessions ?? []).map(sessionFromWire),
    credentials: credentialsFromWire(w.credentials),
  };
}

export function hostListToWire(l: HostListView): pb.ListHostsResponse {
  return { ...l, hosts: l.hosts.map(hostToWire) };
}

export function hostListFromWire(w: pb.ListHostsResponse__Output): HostListView {
  return {
    hostAffinity: w.hostAffinity,
    requireHostAffinity: w.requireHostAffinity,
    hosts: (w.hosts ?? []).map(hostFromWire),
    defaultLuns: (w.defaultLuns ?? []).map(hostLunFromWire),
    otherSessions: (w.otherSessions ?? []).map(sessionFromWire),
  };
}
