/**
 * Who may call what: the roles, the permissions each role holds, and the one permission every
 * control API method needs. ApiGuard checks a call against these two tables and nothing else,
 * so the README's role matrix and this file say the same thing (a test checks every method of
 * every service the array serves has a row here: a new RPC without one is refused, never open).
 */

/** What a call does, coarsely. The role matrix is over these. */
export type Permission =
  /** See volumes, exports, sessions, hosts, cartridges, faults, remotes and the status. */
  | 'read'
  /** Create, resize, rename and change volumes. */
  | 'volume.write'
  | 'volume.delete'
  /** Define hosts, their initiators and credentials, and map volumes to them. */
  | 'host.write'
  /** Start and drive copy sessions (including cancel: a session is not data). */
  | 'copy.write'
  /** Add cartridges, write volumes to tape and restore them. */
  | 'tape.write'
  /** Erase and remove cartridges. */
  | 'tape.delete'
  /** Inject and clear faults, cut the power of volatile caches. */
  | 'fault'
  /** Register, change and remove remote arrays. */
  | 'remote.admin'
  /** What another array calls for REC: its remote ends and cycles. */
  | 'remote.peer'
  /** See users and tenants. */
  | 'access.read'
  /** Create, rotate and remove users; create, change and remove tenants; assign objects. */
  | 'access.write'
  | 'audit.read'
  /** WhoAmI: any authenticated user. */
  | 'self';

export const ROLES = ['monitor', 'backup-operator', 'operator', 'admin', 'security-admin', 'instructor', 'replication'] as const;
export type Role = (typeof ROLES)[number];

export const ALL_PERMISSIONS: readonly Permission[] = [
  'read',
  'volume.write',
  'volume.delete',
  'host.write',
  'copy.write',
  'tape.write',
  'tape.delete',
  'fault',
  'remote.admin',
  'remote.peer',
  'access.read',
  'access.write',
  'audit.read',
  'self',
];

export const ROLE_PERMISSIONS: Readonly<Record<Role, ReadonlySet<Permission>>> = {
  monitor: new Set(['self', 'read']),
  'backup-operator': new Set(['self', 'read', 'copy.write', 'tape.write']),
  operator: new Set(['self', 'read', 'volume.write', 'volume.delete', 'host.write', 'copy.write', 'tape.write', 'tape.delete']),
  admin: new Set(ALL_PERMISSIONS),
  'security-admin': new Set(['self', 'access.read', 'access.write', 'audit.read']),
  // A trainer breaks the array on purpose and watches; lab seats do the operating.
  instructor: new Set(['self', 'read', 'fault']),
  // The token one array gives another for REC (arraylab remote add --token-file).
  replication: new Set(['self', 'read', 'remote.peer']),
};

/** What the role is for, one line each (user add --help, README). */
export const ROLE_SUMMARY: Readonly<Record<Role, string>> = {
  monitor: 'read-only: volumes, exports, sessions, hosts, tape, faults, status',
  'backup-operator': "copy sessions and tape on its tenant's volumes; deletes nothing",
  operator: 'volumes, hosts, copy sessions and tape within its tenant',
  admin: 'everything, on every tenant',
  'security-admin': 'users, tenants and the audit log only',
  instructor: 'read-only, plus fault injection and power cuts',
  replication: 'what another array needs for REC pairs to this one',
};

export function isRole(s: string): s is Role {
  return (ROLES as readonly string[]).includes(s);
}

/** Method paths as grpc-js names them: /arraylab.v1.Service/Method. */
const rows: Array<[service: string, perms: Record<string, Permission>]> = [
  [
    'ArrayService',
    {
      CreateVolume: 'volume.write',
      ListVolumes: 'read',
      GetVolume: 'read',
      ResizeVolume: 'volume.write',
      DeleteVolume: 'volume.delete',
      UpdateVolume: 'volume.write',
      RenameVolume: 'volume.write',
      ListExports: 'read',
      GetStatus: 'read',
    },
  ],
  [
    'CopyService',
    {
      StartCopy: 'copy.write',
      ListCopies: 'read',
      GetCopy: 'read',
      GetCopyBitmap: 'read',
      SuspendCopy: 'copy.write',
      ResumeCopy: 'copy.write',
      ReverseCopy: 'copy.write',
      SplitCopy: 'copy.write',
      RestoreFromClone: 'copy.write',
      StartCopyGroup: 'copy.write',
      SuspendCopyGroup: 'copy.write',
      SplitCopyGroup: 'copy.write',
      CancelCopy: 'copy.write',
      SetCopyRate: 'copy.write',
      SetCopyMode: 'copy.write',
      WatchCopies: 'read',
    },
  ],
  [
    'HostAffinityService',
    {
      CreateHost: 'host.write',
      DeleteHost: 'host.write',
      AddHostInitiator: 'host.write',
      RemoveHostInitiator: 'host.write',
      MapVolume: 'host.write',
      UnmapVolume: 'host.write',
      ListHosts: 'read',
      GetHost: 'read',
      // NBD identities and per-host CHAP.
      SetHostCredentials: 'host.write',
    },
  ],
  [
    'TapeService',
    {
      AddCartridge: 'tape.write',
      ListCartridges: 'read',
      GetCartridge: 'read',
      EraseCartridge: 'tape.delete',
      RemoveCartridge: 'tape.delete',
      WriteTape: 'tape.write',
      RestoreTape: 'tape.write',
      VerifyTape: 'read',
    },
  ],
  [
    'FaultService',
    {
      AddFault: 'fault',
      ListFaults: 'read',
      GetFault: 'read',
      RemoveFault: 'fault',
      ClearFaults: 'fault',
      SetFaultRate: 'fault',
      ApplyFaultPlan: 'fault',
      SetFaultFlag: 'fault',
      ListFaultFlags: 'read',
      WatchFaultEvents: 'read',
      PowerCut: 'fault',
    },
  ],
  [
    'RemoteService',
    {
      AddRemote: 'remote.admin',
      ListRemotes: 'read',
      GetRemote: 'read',
      RemoveRemote: 'remote.admin',
      SetRemote: 'remote.admin',
    },
  ],
  [
    'RemoteCopyService',
    {
      OpenRemoteEnd: 'remote.peer',
      SetRemoteEndState: 'remote.peer',
      ResumeRemoteEnd: 'remote.peer',
      CloseRemoteEnd: 'remote.peer',
      ReverseRemoteEnd: 'remote.peer',
      CommitCycle: 'remote.peer',
    },
  ],
  [
    'EventService',
    {
      WatchEvents: 'read',
      ListEvents: 'read',
      // What a backup-operator's agent does: it drives copy sessions of the same volumes.
      ReportAgentEvent: 'copy.write',
    },
  ],
  [
    'AccessService',
    {
      WhoAmI: 'self',
      AddUser: 'access.write',
      ListUsers: 'access.read',
      GetUser: 'access.read',
      RemoveUser: 'access.write',
      RotateUser: 'access.write',
      AddTenant: 'access.write',
      ListTenants: 'access.read',
      GetTenant: 'access.read',
      SetTenant: 'access.write',
      RemoveTenant: 'access.write',
      AssignToTenant: 'access.write',
      ListAudit: 'audit.read',
    },
  ],
];

/** path -> permission, e.g. '/arraylab.v1.ArrayService/CreateVolume' -> 'volume.write'. */
export const METHOD_PERMISSIONS: ReadonlyMap<string, Permission> = new Map(
  rows.flatMap(([service, perms]) => Object.entries(perms).map(([method, p]) => [`/arraylab.v1.${service}/${method}`, p] as const)),
);

/** Permissions that change nothing: their calls are not audited. */
export const READ_ONLY: ReadonlySet<Permission> = new Set(['read', 'access.read', 'audit.read', 'self']);

/** May this role call this method? undefined: the method has no row (refuse). */
export function allowed(role: Role, path: string): boolean | undefined {
  const p = METHOD_PERMISSIONS.get(path);
  return p === undefined ? undefined : ROLE_PERMISSIONS[role].has(p);
}
