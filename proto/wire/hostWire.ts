/**
 * Conversions between host affinity's model and the messages of arraylab/v1/affinity.proto as
 * proto-loader presents them (camelCase fields; repeated fields always arrays).
 */
import type { HostLun } from '../views.js';
import type { HostListView, HostView, IscsiSessionView } from '../views.js';

export interface WireHostLun {
  lun: number;
  volume: string;
  volumeUuid: string;
}

export interface WireIscsiSession {
  initiatorName: string;
  isid: string;
  tsih: number;
  connections: number;
  remoteAddresses: string[];
  luns: Array<{ lun: number; volume: string }>;
}

export interface WireHost {
  name: string;
  initiators: string[];
  luns: WireHostLun[];
  createdAt: string;
  sessions: WireIscsiSession[];
}

export interface WireListHostsResponse {
  hosts: WireHost[];
  hostAffinity: boolean;
  requireHostAffinity: boolean;
  defaultLuns: WireHostLun[];
  otherSessions: WireIscsiSession[];
}

export interface WireMapVolumeRequest {
  host: string;
  volume: string;
  /** Absent (undefined or null): the lowest free LUN. */
  lun?: number | null;
}

export interface WireMapVolumeResponse {
  host: WireHost | null;
  lun: number;
}

/** The wire and model shapes are the same; these copy, so neither side aliases the other's arrays. */
export function hostLunFromWire(w: WireHostLun): HostLun {
  return { lun: w.lun, volume: w.volume, volumeUuid: w.volumeUuid };
}

export function sessionFromWire(w: WireIscsiSession): IscsiSessionView {
  return {
    initiatorName: w.initiatorName,
    isid: w.isid,
    tsih: w.tsih,
    connections: w.connections,
    remoteAddresses: [...(w.remoteAddresses ?? [])],
    luns: (w.luns ?? []).map((l) => ({ lun: l.lun, volume: l.volume })),
  };
}

export function hostToWire(h: HostView): WireHost {
  return { name: h.name, initiators: h.initiators, luns: h.luns, createdAt: h.createdAt, sessions: h.sessions };
}

export function hostFromWire(w: WireHost): HostView {
  return {
    name: w.name,
    initiators: [...(w.initiators ?? [])],
    luns: (w.luns ?? []).map(hostLunFromWire),
    createdAt: w.createdAt,
    sessions: (w.sessions ?? []).map(sessionFromWire),
  };
}

export function hostListToWire(l: HostListView): WireListHostsResponse {
  return { ...l, hosts: l.hosts.map(hostToWire) };
}

export function hostListFromWire(w: WireListHostsResponse): HostListView {
  return {
    hostAffinity: w.hostAffinity,
    requireHostAffinity: w.requireHostAffinity,
    hosts: (w.hosts ?? []).map(hostFromWire),
    defaultLuns: (w.defaultLuns ?? []).map(hostLunFromWire),
    otherSessions: (w.otherSessions ?? []).map(sessionFromWire),
  };
}
